// The batch loader: random windows of block_size + 1 tokens (inputs and next-token targets) drawn
// from a token array with a seeded Rng; its state is the Rng's, saved for bit-identical resume.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/rng.h"

namespace moe {

class BatchLoader {
   public:
    // tokens must outlive the loader. Throws when there are fewer than S + 1 tokens.
    BatchLoader(const std::vector<int32_t>* tokens, int B, int S, uint64_t seed,
                const std::string& what = "data");
    // x, y [B,S]: row b is tokens[s .. s+S) and tokens[s+1 .. s+S+1) for a random start s.
    void next(int32_t* x, int32_t* y);
    int B() const { return B_; }
    int S() const { return S_; }
    nlohmann::json state() const;
    void set_state(const nlohmann::json& j);

   private:
    const std::vector<int32_t>* tokens_;
    int B_, S_;
    Rng rng_;
};

// Rng state as JSON (exact: four u64 words, the spare normal's bits) and back.
nlohmann::json rng_to_json(const Rng& r);
void rng_from_json(Rng& r, const nlohmann::json& j, const std::string& where);

// Evaluation windows: consecutive, non-overlapping windows of S + 1 tokens (stride S + 1, as
// `moe eval` documents); the number of full windows in n tokens.
int64_t n_eval_windows(size_t n_tokens, int S);

}  // namespace moe
