#include "moe/rng.h"

#include <cmath>

namespace moe {

static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void Rng::seed_with(uint64_t seed) {
    uint64_t x = seed;
    for (auto& v : s) v = splitmix64(x);
    has_spare = false;
    spare = 0.f;
}

uint64_t Rng::next_u64() {
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float Rng::uniform() { return (float)(next_u64() >> 40) * (1.0f / 16777216.0f); }

double Rng::uniform_double() { return (double)(next_u64() >> 11) * (1.0 / 9007199254740992.0); }

float Rng::normal() {
    if (has_spare) {
        has_spare = false;
        return spare;
    }
    // Box-Muller on doubles; u1 in (0,1] so log never sees 0.
    double u1 = 1.0 - uniform_double(), u2 = uniform_double();
    double r = std::sqrt(-2.0 * std::log(u1)), th = 6.283185307179586 * u2;
    spare = (float)(r * std::sin(th));
    has_spare = true;
    return (float)(r * std::cos(th));
}

uint32_t Rng::below(uint32_t n) { return (uint32_t)(((next_u64() >> 32) * (uint64_t)n) >> 32); }

void Rng::fill_uniform(float* out, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) out[i] = lo + (hi - lo) * uniform();
}

void Rng::fill_normal(float* out, int64_t n, float mean, float std) {
    for (int64_t i = 0; i < n; i++) out[i] = mean + std * normal();
}

}  // namespace moe
