// std::vector whose data starts on a 64-byte boundary (a cache line, one zmm register): the
// kernels' packed panels are read by 512-bit loads, and from std::vector's 16-byte alignment
// every such load split across two cache lines (the F32/F16/BF16 prefill tile read its panels
// ~10% slower: bench_wgemm 32 3584 1024 2, alternated, session 9).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

namespace moe {

template <class T>
struct CacheLineAllocator {
    using value_type = T;
    CacheLineAllocator() = default;
    template <class U>
    CacheLineAllocator(const CacheLineAllocator<U>&) {}
    T* allocate(size_t n) {
        if (n > (size_t)-1 / sizeof(T) - 64) throw std::bad_alloc();
        const size_t bytes = (n * sizeof(T) + 63) / 64 * 64;  // aligned_alloc wants a multiple
        void* p = std::aligned_alloc(64, bytes ? bytes : 64);
        if (!p) throw std::bad_alloc();
        return (T*)p;
    }
    void deallocate(T* p, size_t) { std::free(p); }
    template <class U>
    bool operator==(const CacheLineAllocator<U>&) const { return true; }
    template <class U>
    bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};

template <class T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace moe
