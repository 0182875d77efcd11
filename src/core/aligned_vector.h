// std::vector whose data starts on a chosen boundary.
// AlignedVector: 64 bytes (a cache line, one zmm register): the kernels' packed panels are read
// by 512-bit loads, and from std::vector's 16-byte alignment every such load split across two
// cache lines (the F32/F16/BF16 prefill tile read its panels ~10% slower: bench_wgemm 32 3584
// 1024 2, alternated, session 9).
// HugePageVector: 2 MiB, advised into transparent huge pages (madvise(MADV_HUGEPAGE)), as a loaded
// model's weights are held (io/file_map.h): for benchmarks that stream weights from memory.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

namespace moe {

template <class T, size_t kAlign, bool kHugePages = false>
struct AlignedAllocator {
    using value_type = T;
    template <class U>
    struct rebind {
        using other = AlignedAllocator<U, kAlign, kHugePages>;
    };
    AlignedAllocator() = default;
    template <class U>
    AlignedAllocator(const AlignedAllocator<U, kAlign, kHugePages>&) {}
    T* allocate(size_t n) {
        if (n > ((size_t)-1 - kAlign) / sizeof(T)) throw std::bad_alloc();
        const size_t bytes = (n * sizeof(T) + kAlign - 1) / kAlign * kAlign;  // a multiple, as
        void* p = std::aligned_alloc(kAlign, bytes ? bytes : kAlign);            // aligned_alloc wants
        if (!p) throw std::bad_alloc();
        if (kHugePages) madvise(p, bytes, MADV_HUGEPAGE);  // advice: failure is harmless
        return (T*)p;
    }
    void deallocate(T* p, size_t) { std::free(p); }
    template <class U>
    bool operator==(const AlignedAllocator<U, kAlign, kHugePages>&) const { return true; }
    template <class U>
    bool operator!=(const AlignedAllocator<U, kAlign, kHugePages>&) const { return false; }
};

template <class T>
using AlignedVector = std::vector<T, AlignedAllocator<T, 64>>;
template <class T>
using HugePageVector = std::vector<T, AlignedAllocator<T, (size_t)2 << 20, true>>;

}  // namespace moe
