// fp32 -> bf16 rounding (round to nearest even on the upper 16 bits; a NaN stays a quiet NaN,
// where the carry would otherwise turn it into inf). Inline: the GEMM layer rounds whole
// operands with it, and the inference side converts weights (f32_to_bf16) with the same rule.
#pragma once
#include <cstdint>
#include <cstring>

namespace moe {

inline uint16_t bf16_bits_rne(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float bf16_bits_to_f32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

}  // namespace moe
