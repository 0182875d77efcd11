#include "moe/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace moe {

std::string Shape::str() const {
    std::string s = "[";
    for (size_t i = 0; i < dims.size(); i++) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
}

void check_shape(const char* what, const Shape& got, const Shape& expected) {
    if (got != expected) fail("{}: expected shape {}, got {}", what, expected.str(), got.str());
}

Buffer::~Buffer() { std::free(ptr_); }

Buffer::Buffer(Buffer&& o) noexcept : ptr_(o.ptr_), size_(o.size_), capacity_(o.capacity_) {
    o.ptr_ = nullptr;
    o.size_ = o.capacity_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
    if (this != &o) {
        std::free(ptr_);
        ptr_ = o.ptr_;
        size_ = o.size_;
        capacity_ = o.capacity_;
        o.ptr_ = nullptr;
        o.size_ = o.capacity_ = 0;
    }
    return *this;
}

void Buffer::resize(size_t n) {
    if (n > capacity_) {
        std::free(ptr_);
        size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
        ptr_ = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
        if (!ptr_) throw std::bad_alloc();
        capacity_ = n;
    }
    size_ = n;
}

void Buffer::zero() {
    if (size_) std::memset(ptr_, 0, size_ * sizeof(float));
}

}  // namespace moe
