// Deterministic random numbers: xoshiro256** seeded by splitmix64. Every random draw in moe.cpp
// comes from an Rng stepped serially (never per-thread), so same seed gives the same bits whatever
// the thread count.
#pragma once
#include <cstdint>

namespace moe {

class Rng {
   public:
    explicit Rng(uint64_t seed = 0x5eed) { seed_with(seed); }
    void seed_with(uint64_t seed);
    uint64_t next_u64();
    float uniform();                 // [0, 1), 24 random bits
    double uniform_double();         // [0, 1), 53 random bits
    float normal();                  // N(0, 1), Box-Muller
    uint32_t below(uint32_t n);      // uniform integer in [0, n)
    void fill_uniform(float* out, int64_t n, float lo = 0.f, float hi = 1.f);
    void fill_normal(float* out, int64_t n, float mean = 0.f, float std = 1.f);
    // Full state, so training can resume bit-identically.
    uint64_t s[4];
    bool has_spare = false;
    float spare = 0.f;
};

}  // namespace moe
