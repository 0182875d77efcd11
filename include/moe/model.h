// The decoder-only Transformer LM, Mixtral style (DESIGN.md §3, issue 4):
// embed -> L x (RMSNorm -> causal MHA/GQA with RoPE (HF rotate-half) -> residual -> RMSNorm ->
// FFN (dense SwiGLU or MoeLayer) -> residual) -> RMSNorm -> LM head (tied or not).
// Parameters and gradients are one flat buffer each; params() names every tensor in Hugging Face
// Mixtral naming (DESIGN.md §7), so checkpoints, AdamW and all-reduce work on contiguous memory.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moe/moe_layer.h"
#include "moe/tensor.h"

namespace moe {

struct ModelConfig {
    int vocab_size = 0;
    int d_model = 128;      // hidden_size
    int n_layers = 4;       // num_hidden_layers
    int n_heads = 4;        // num_attention_heads
    int n_kv_heads = 4;     // num_key_value_heads (grouped-query attention when < n_heads)
    int d_ff = 512;         // intermediate_size of a dense SwiGLU FFN
    int block_size = 64;    // max_position_embeddings
    float rms_eps = 1e-5f;  // rms_norm_eps
    float rope_theta = 10000.f;
    bool tie_embeddings = true;  // tie_word_embeddings
    // MoE FFN: layer i is MoE when moe_every > 0 and (i % moe_every) == moe_every - 1 ... except
    // moe_every == 1 means every layer; 0 means all dense. moe.d_model is set from d_model.
    int moe_every = 1;
    MoeConfig moe;  // n_experts, top_k, d_ff (expert width), router, losses, capacity ...
    float init_std = 0.02f;
    uint64_t seed = 1337;

    bool is_moe_layer(int layer) const;
    void validate() const;  // throws moe::Error: heads not dividing d, k > E, ...
};

struct LayerRouting {  // per MoE layer, the last forward's statistics and aux losses
    int layer = 0;
    MoeStats stats;
    AuxLosses aux;
};

class Model {
   public:
    // trainable = false: an inference model (eval, generate, inspect): no gradient buffers, no
    // random initialisation (the caller loads the weights).
    explicit Model(const ModelConfig& cfg, bool trainable = true);
    // The parameter table of a model with this config, built without allocating anything:
    // names, shapes, offsets; n_params: the total. Sizes are checked against it before a Model
    // is built (checkpoint loading, training set-up).
    static std::vector<ParamSpec> layout(const ModelConfig& cfg, size_t* n_params);
    bool trainable() const { return trainable_; }
    ~Model();
    const ModelConfig& config() const { return cfg_; }

    const std::vector<ParamSpec>& params() const;  // HF names, flat offsets
    size_t n_params() const;
    float* param_data();
    float* grad_data();
    void zero_grad();
    void init_params(uint64_t seed);
    bool is_no_decay(const ParamSpec& p) const;  // norms and biases: no weight decay

    // tokens, targets [B,S] (S <= block_size). Returns mean cross-entropy over the B*S targets
    // (aux losses are not included; aux_loss() has their weighted sum). targets == nullptr: no
    // loss, logits only. training enables router noise/dropout.
    float forward(const int32_t* tokens, const int32_t* targets, int B, int S, bool training);
    // Gradients (accumulated into grad_data()) of mean CE + aux_loss(); needs a forward with targets.
    void backward();
    const float* logits() const;  // [B,S,V] of the last forward
    double aux_loss() const;      // sum over MoE layers of aux().weighted_total
    std::vector<LayerRouting> routing_stats() const;
    MoeLayer* moe_layer(int layer);  // nullptr for dense layers
    // The last forward's FFN input of a layer (after post_attention_layernorm), [B*S, d]: what
    // the router and experts saw. For inspection (expert output similarity on a probe batch).
    const float* ffn_input(int layer) const;
    void update_balance_bias();      // aux-loss-free balancing, once per optimizer step

    // Generation with a KV cache: reset, then feed tokens (n > 1 = prefill); returns the logits
    // [V] of the last token fed. Position = tokens fed so far (< block_size).
    void cache_reset();
    const float* cache_feed(const int32_t* tokens, int n);
    int cache_pos() const;

    struct Impl;

   private:
    ModelConfig cfg_;
    bool trainable_ = true;
    std::unique_ptr<Impl> impl_;
};

}  // namespace moe
