// Sampling and KV-cache generation (`moe generate`).
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "moe/hf_model.h"
#include "moe/model.h"
#include "moe/rng.h"
#include "moe/tokenizer.h"

namespace moe {

struct SampleOptions {
    int max_tokens = 200;
    float temperature = 0.8f;  // 0 = greedy (argmax; ties: lowest id)
    int top_k = 0;             // 0 = off
    float top_p = 1.0f;        // nucleus; 1 = off
    uint64_t seed = 1337;
};

// One token from logits [V]: temperature, then top-k, then top-p (smallest set of most likely
// tokens whose probability reaches p), then a draw. Deterministic for a given Rng state.
int32_t sample_token(const float* logits, int V, const SampleOptions& o, Rng& rng);

// Prefill the prompt, then one token at a time with the KV cache. When the context reaches
// block_size tokens, the cache is reset and the last block_size tokens (the newest included) are
// fed again: every step sees min(n, block_size) tokens of context, exactly what a full forward
// over the cropped context computes (nanoGPT's crop). on_token gets each new id; trace (or null)
// gets one JSON line per prompt and generated token (docs/metrics.md).
std::vector<int32_t> generate(Model& model, const Tokenizer& tok,
                              const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<void(int32_t)>& on_token, FILE* trace = nullptr);

// Hugging Face models (src/infer/): prefill the prompt, then one token at a time. Stops after
// max_tokens, after an id in `eos` (it is returned too), or when the context is full (no
// sliding: HF models are not trained for nanoGPT's crop); *stop says which ("length", "eos",
// "context"). piece(id) gives a token's text for the trace.
std::vector<int32_t> generate_hf(HfModel& model, const std::vector<int32_t>& prompt,
                                 const SampleOptions& o, const std::vector<int32_t>& eos,
                                 const std::function<void(int32_t)>& on_token, std::string* stop,
                                 FILE* trace = nullptr,
                                 const std::function<std::string(int32_t)>& piece = nullptr);

// The text of generated ids as one string (`moe generate --json`): ids past the tokenizer (padded
// embedding rows) skipped, as HF's decode does, and a UTF-8 character the last token leaves
// unfinished dropped, as the streamed output holds it back (a byte-level token can end inside a
// character; the token that would complete it was never generated).
std::string generated_text(const Tokenizer& tok, const std::vector<int32_t>& ids);

}  // namespace moe
