// A Hugging Face model's config.json (mixtral, qwen2_moe, qwen3_moe, olmoe), as HfModel reads it:
// an accepted config describes a model the engine can lay out (shapes that divide, k <= E, a
// layer mask of the right length, ids inside the vocabulary).
#include "fuzz.h"
#include "moe/checked.h"
#include "moe/hf_model.h"

namespace moe::fuzz {

void hf_family(const std::string& input) {
    const std::string where = "fuzz/config.json";
    HfConfig c = hf_config_from_json(parse_json_text(input, where, "a model config"), where);
    MOE_FUZZ_ASSERT(c.hidden_size > 0 && c.n_layers > 0 && c.vocab_size > 0);
    MOE_FUZZ_ASSERT(c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0);
    MOE_FUZZ_ASSERT(c.head_dim > 0 && c.head_dim % 2 == 0);
    MOE_FUZZ_ASSERT(c.top_k >= 1 && c.top_k <= c.n_experts && c.expert_ff > 0);
    MOE_FUZZ_ASSERT((int)c.moe_layer.size() == c.n_layers);
    for (int l = 0; l < c.n_layers; l++) MOE_FUZZ_ASSERT(c.moe_layer[l] || c.dense_ff > 0);
    MOE_FUZZ_ASSERT(c.bos_token_id < c.vocab_size);
    for (int32_t e : c.eos_token_ids) MOE_FUZZ_ASSERT(e >= 0 && e < c.vocab_size);
    MOE_FUZZ_ASSERT(c.n_params() > 0);
    for (int l = 0; l < c.n_layers && l < 4; l++) MOE_FUZZ_ASSERT(!c.ffn_prefix(l).empty());
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(hf_family)
