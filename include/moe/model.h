// The decoder-only Transformer LM, Mixtral style (DESIGN.md §3, issue 4):
// embed -> L x (RMSNorm -> causal MHA/GQA with RoPE (HF rotate-half) -> residual -> RMSNorm ->
// FFN (dense SwiGLU or MoeLayer) -> residual) -> RMSNorm -> LM head (tied or not).
// Parameters and gradients are one flat buffer each; params() names every tensor in Hugging Face
// naming (DESIGN.md §7), so checkpoints, AdamW and all-reduce work on contiguous memory.
//
// The Hugging Face MoE families (issue 8) are switches of the same model, so their checkpoints
// can be fine-tuned: family qwen2_moe (q/k/v biases, dense layers by mask, a gated shared
// expert), qwen3_moe (head_dim of its own, per-head RMSNorm of q and k), olmoe (RMSNorm over all
// of q and of k, clip_qkv). The family also fixes the tensor names (docs/model.md).
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

    // Hugging Face family features (all off for mixtral, the default: today's model and bits).
    std::string family = "mixtral";  // mixtral | qwen2_moe | qwen3_moe | olmoe: tensor names
    int head_dim = 0;                // 0: d_model / n_heads (qwen3_moe gives its own)
    bool qkv_bias = false;           // q_proj, k_proj, v_proj have biases
    bool o_bias = false;             // o_proj has a bias
    std::string qk_norm = "none";    // none | head: RMSNorm per head of q and k, weight [hd] |
                                     // whole: RMSNorm over all of q [H hd] and all of k [Hkv hd]
    float clip_qkv = 0;              // > 0: clamp q, k, v to [-c, c] after the norms, before RoPE
    // Explicit per-layer MoE mask (1 = MoE, 0 = dense; n_layers entries): qwen's mlp_only_layers
    // and decoder_sparse_step. Empty: moe_every decides.
    std::vector<uint8_t> moe_layers;
    // qwen2_moe's gated shared expert on every MoE layer: sigmoid(h . shared_expert_gate) *
    // SwiGLU_shared(h) added to the routed experts' output; its width (0: none). Not MoeLayer's
    // ungated shared experts (n_shared_experts).
    int shared_ff = 0;

    int hd() const { return head_dim > 0 ? head_dim : (n_heads > 0 ? d_model / n_heads : 0); }
    bool is_moe_layer(int layer) const;
    bool any_moe() const;
    bool any_dense() const;
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
    // shard (expert parallelism, docs/distributed.md): the routed experts this process holds in
    // every MoE layer; params() then lists only those (under their global names) and the
    // buffers hold only them. Default: all.
    explicit Model(const ModelConfig& cfg, bool trainable = true, ExpertShard shard = {});
    // The parameter table of a model with this config, built without allocating anything:
    // names, shapes, offsets; n_params: the total. Sizes are checked against it before a Model
    // is built (checkpoint loading, training set-up).
    static std::vector<ParamSpec> layout(const ModelConfig& cfg, size_t* n_params,
                                         ExpertShard shard = {});
    ExpertShard expert_shard() const { return shard_; }
    bool trainable() const { return trainable_; }
    ~Model();
    const ModelConfig& config() const { return cfg_; }

    const std::vector<ParamSpec>& params() const;  // HF names, flat offsets
    size_t n_params() const;
    float* param_data();
    float* grad_data();
    void zero_grad();
    // Fine-tuning: frozen[i] != 0 freezes params()[i]. backward() then skips the weight-gradient
    // work of frozen tensors (the dW GEMMs of attention, FFN, experts, router, LM head; the
    // embedding scatter; norm weight sums) and still computes every dx upstream needs. A frozen
    // tensor's gradient is unspecified (partly written when it shares a GEMM with a trainable
    // one, e.g. q_proj frozen but k_proj not): the trainer leaves frozen ranges out of clipping
    // and AdamW. Empty = nothing frozen.
    void set_frozen(const std::vector<uint8_t>& frozen);
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
    // FLOPs (2 x multiply-adds) of the last forward's GEMMs and attention products; a training
    // step spends about 3x this (the backward twice the forward; frozen weights skip their
    // weight-gradient products, which this does not subtract). For GFLOP/s beside a ceiling.
    double last_forward_flops() const;
    std::vector<LayerRouting> routing_stats() const;
    MoeLayer* moe_layer(int layer);  // nullptr for dense layers
    // The last forward's FFN input of a layer (after post_attention_layernorm), [B*S, d]: what
    // the router and experts saw. For inspection (expert output similarity on a probe batch).
    const float* ffn_input(int layer) const;
    void update_balance_bias();      // aux-loss-free balancing, once per optimizer step
    // GEMM precision (docs/precision.md): attention projections, dense and shared FFNs, experts
    // and the LM head multiply in gemm_prec (bf16: operands rounded to bf16, fp32 accumulation);
    // the MoE routers in router_prec. Norms, attention softmax, cross-entropy, parameters,
    // gradients stay fp32. Default fp32 / fp32.
    void set_precision(Precision gemm_prec, Precision router_prec = Precision::fp32);
    Precision precision() const;

    // Generation with a KV cache: reset, then feed tokens (n > 1 = prefill); returns the logits
    // [V] of the last token fed. Position = tokens fed so far (< block_size). Every family
    // feature is supported (the same helpers as forward).
    void cache_reset();
    const float* cache_feed(const int32_t* tokens, int n);
    int cache_pos() const;

    struct Impl;

   private:
    double forward_flops_(int B, int S) const;
    ModelConfig cfg_;
    bool trainable_ = true;
    ExpertShard shard_;
    std::unique_ptr<Impl> impl_;
};

}  // namespace moe
