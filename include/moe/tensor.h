// TensorView: a pointer plus a shape, owning nothing (data lives in flat buffers).
// Buffer: one aligned allocation that is kept and reused: first-touch page faults are costly on
// the machines we run on (shared/ANCHORS.md), so workspaces grow once and never shrink.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "moe/error.h"

namespace moe {

struct Shape {
    std::vector<int64_t> dims;
    Shape() = default;
    Shape(std::initializer_list<int64_t> d) : dims(d) {}
    explicit Shape(std::vector<int64_t> d) : dims(std::move(d)) {}
    int64_t numel() const {
        int64_t n = 1;
        for (int64_t v : dims) n *= v;
        return n;
    }
    int rank() const { return (int)dims.size(); }
    int64_t operator[](int i) const { return dims[i]; }
    bool operator==(const Shape& o) const { return dims == o.dims; }
    bool operator!=(const Shape& o) const { return dims != o.dims; }
    std::string str() const;  // "[4096, 512]"
};

template <typename T>
struct View {
    T* data = nullptr;
    Shape shape;
    View() = default;
    View(T* p, Shape s) : data(p), shape(std::move(s)) {}
    int64_t numel() const { return shape.numel(); }
};
using TensorView = View<float>;
using ConstTensorView = View<const float>;

// Throws moe::Error("<what>: expected shape [..], got [..]") on mismatch.
void check_shape(const char* what, const Shape& got, const Shape& expected);

// 64-byte aligned float buffer that only grows. resize() keeps the allocation when it fits.
class Buffer {
   public:
    Buffer() = default;
    explicit Buffer(size_t n) { resize(n); }
    ~Buffer();
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    Buffer(Buffer&& o) noexcept;
    Buffer& operator=(Buffer&& o) noexcept;
    void resize(size_t n);  // contents are not preserved when it grows
    void zero();
    float* data() { return ptr_; }
    const float* data() const { return ptr_; }
    size_t size() const { return size_; }
    float& operator[](size_t i) { return ptr_[i]; }
    const float& operator[](size_t i) const { return ptr_[i]; }

   private:
    float* ptr_ = nullptr;
    size_t size_ = 0, capacity_ = 0;
};

}  // namespace moe
