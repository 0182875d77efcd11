// The MoE layer (DESIGN.md §4): router -> capacity -> permute -> experts -> combine -> aux losses.
// y = MoE(x) without the residual: a dropped token-slot adds 0 and the caller's residual
// connection carries x through.
//
// Parameters live in one flat buffer described by params() (name, shape, offset), in the names
// of the safetensors interface (see docs/layer.md): router.weight [E,d], router.noise_weight [E,d]
// (noisy-topk), router.group_weight [G,d] (hierarchical), experts.J.w1 [f,d], experts.J.w3 [f,d]
// (swiglu only), experts.J.w2 [d,f], shared_experts.J.* likewise. The router matrices come first
// and are contiguous (one GEMM computes every router logit); each expert's w1 and w3 are adjacent
// so SwiGLU's two input projections are one GEMM over [2f, d].
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moe/precision.h"
#include "moe/process_group.h"
#include "moe/rng.h"
#include "moe/tensor.h"

namespace moe {

enum class Activation { relu, gelu, swiglu };
Activation activation_from_string(const std::string& s);  // throws on unknown names
const char* activation_name(Activation a);

struct MoeConfig {
    int d_model = 0;  // d
    int d_ff = 0;     // f, per expert
    int n_experts = 0;  // E
    int top_k = 1;      // k (for hierarchical: experts per token in total)
    std::string router = "topk";  // softmax noisy-topk topk switch gshard expert-choice hierarchical
                                  // top-p (top_k = max_k)
    Activation activation = Activation::swiglu;

    int n_shared_experts = 0;  // always-on experts (DeepSeekMoE), each of width d_ff_shared
    int d_ff_shared = 0;       // 0: same as d_ff

    // Capacity C = ceil(cf * T * k / E) slots per expert; dropless ignores it (token-choice
    // routers). Expert choice always uses C = min(T, ceil(cf * T * k / E)), whatever dropless says.
    bool dropless = true;
    float capacity_factor = 1.0f;
    std::string priority = "token";  // "token" (first come first served) or "weight" (batch prioritised)

    float temperature = 1.0f;  // logits / temperature
    bool renormalize = true;   // topk: w = p / sum_topk p
    std::string score = "softmax";  // topk: "softmax" or "sigmoid" (DeepSeek-V3)
    float jitter = 0.0f;        // multiplicative router-input noise U(1-j, 1+j), training only
    float gate_dropout = 0.0f;  // dropout on gate probabilities after softmax, training only
    int n_groups = 0;           // hierarchical: G groups of E/G experts
    int topk_groups = 1;        // hierarchical: groups chosen per token; k/topk_groups experts in each
    float threshold = 0.5f;     // top-p: cumulative probability to reach, in (0, 1]

    // Balancing loss weights (0 = off; every loss is still computed and reported).
    float w_importance = 0.0f, w_load = 0.0f, w_switch = 0.0f, w_zloss = 0.0f;
    float bias_update_rate = 0.0f;  // aux-loss-free balancing (DeepSeek-V3): 0 = off

    uint64_t seed = 1234;  // random draws (noise, jitter, u, dropout) and init

    void validate() const;  // throws moe::Error naming the bad field
};

// Routing statistics, filled on every forward.
struct MoeStats {
    std::vector<int64_t> tokens_per_expert;  // kept token-slots per expert
    int64_t dropped = 0;                     // token-slots dropped by capacity
    int64_t routed = 0;                      // token-slots routed (kept + dropped)
    double load_cv = 0;           // std/mean of tokens_per_expert (population std)
    double router_entropy = 0;    // mean over tokens of -sum_i p_i log p_i of the router scores
    double mean_top1_weight = 0;  // mean over tokens of the largest combine weight
    // Experts each token ran on (kept token-slots, after capacity): histogram[n] = tokens that
    // used n experts, n = 0..max (max = Routing.k: top_k, E for dense softmax; E for expert
    // choice), and its mean. Dynamic routers (top-p) make it vary per token.
    std::vector<int64_t> experts_per_token;
    double mean_experts_per_token = 0;
};

// Balancing losses of the last forward, unweighted (so they can be logged even when their
// weight is 0); weighted_total = sum of weight * value, what backward adds to the loss.
// A loss that does not apply to the router (load without noise) stays 0.
struct AuxLosses {
    double importance = 0, load = 0, switch_loss = 0, z_loss = 0;
    double weighted_total = 0;
};

// Random draws a router may use. The layer draws them from its Rng when not given; tests and the
// safetensors interface pass them in so a peer can reproduce a noisy step exactly.
struct RouterNoise {
    const float* normal = nullptr;   // [T,E] N(0,1): noisy top-k
    const float* uniform = nullptr;  // [T,E] U(0,1): gate dropout (keep if u >= p)
    const float* jitter = nullptr;   // [T,d] U(0,1): router input x * (1 - j + 2 j u)
    const float* gshard_u = nullptr; // [T]   U(0,1): GShard second-expert test 2 g2 > u
};

// Time and bytes the layer spent in collectives since the last reset (expert parallelism):
// all-to-all of token rows (forward and backward) and the gathers and reductions of the router.
struct MoeCommStats {
    double alltoall_s = 0, router_s = 0;
    int64_t alltoall_bytes = 0, router_bytes = 0;  // sent by this rank
};

struct ParamSpec {
    std::string name;
    Shape shape;
    size_t offset = 0;  // in floats, within the layer's flat buffer
};

// Which routed experts a layer's buffers hold (expert parallelism, docs/distributed.md): part
// `index` of `parts` equal parts, experts [index E/parts, (index+1) E/parts). {1, 0}: all of
// them. A sharded layer's parameter table lists only its experts (under their global names,
// experts.J.*), so each rank allocates and keeps only what it owns.
struct ExpertShard {
    int parts = 1, index = 0;
    bool sharded() const { return parts > 1; }
    bool operator==(const ExpertShard& o) const { return parts == o.parts && index == o.index; }
};

class MoeLayer {
   public:
    explicit MoeLayer(const MoeConfig& cfg);  // validates cfg
    // own_buffers = false: no parameter or gradient buffer of its own (a model binds views into
    // its flat buffers right after), so a big model is not allocated twice.
    // shard: the routed experts held (default all); a sharded layer runs only under
    // set_parallel with a matching expert group.
    MoeLayer(const MoeConfig& cfg, bool own_buffers, ExpertShard shard = {});
    // The parameter table (names, shapes, offsets) of a layer with this config, without building
    // it: what sizes are checked against before anything is allocated. n_params: their total.
    // Throws when shard does not divide the experts.
    static std::vector<ParamSpec> layout(const MoeConfig& cfg, size_t* n_params,
                                         ExpertShard shard = {});
    ExpertShard shard() const { return shard_; }
    ~MoeLayer();
    MoeLayer(const MoeLayer&) = delete;
    MoeLayer& operator=(const MoeLayer&) = delete;

    const MoeConfig& config() const { return cfg_; }
    const std::vector<ParamSpec>& params() const { return specs_; }
    size_t n_params() const { return n_params_; }
    const ParamSpec& param(const std::string& name) const;  // throws when unknown

    // By default the layer owns its parameter and gradient buffers; a model that keeps all
    // parameters in one flat buffer binds views into it instead (n_params() floats each).
    // grads == nullptr: an inference-only layer (backward refuses).
    void bind(float* params, float* grads);
    float* param_data() { return params_; }
    float* grad_data() { return grads_; }
    void zero_grad();
    // Fine-tuning: frozen[i] != 0 marks params()[i] as frozen; backward then skips its weight
    // gradient GEMM (the router's when every router matrix is frozen, an expert's w1+w3 or w2)
    // and still computes dx. A frozen tensor's gradient is left unspecified (not zeroed).
    void set_frozen(const std::vector<uint8_t>& frozen);
    void init_params(uint64_t seed, float router_std = 0.02f);  // experts: U(+-1/sqrt(fan_in))

    // x [T,d] -> y [T,d]. training enables noise, jitter and gate dropout. Keeps what backward
    // needs until the next forward. Checks x for NaN/Inf (error names the token index).
    void forward(ConstTensorView x, TensorView y, bool training, const RouterNoise* noise = nullptr);
    // dy [T,d] -> dx [T,d] (overwritten); parameter gradients are accumulated (+=), including the
    // weighted aux losses' gradients.
    void backward(ConstTensorView dy, TensorView dx);

    // Aux-loss-free balancing: nudge the selection bias towards equal load using the last
    // forward's tokens_per_expert. Call once per optimizer step.
    void update_balance_bias();
    std::vector<float>& balance_bias() { return balance_bias_; }
    // The layer's random stream (noise, jitter, u, dropout draws): saved in checkpoints so a
    // resumed run with a noisy router continues bit-identically.
    Rng& rng();

    const MoeStats& stats() const { return stats_; }
    const AuxLosses& aux() const { return aux_; }
    bool causal() const;  // false for expert choice (it looks at the whole batch)

    // GEMM precision (docs/precision.md): the expert and shared-expert products in gemm_prec
    // (bf16: operands rounded to bf16, fp32 accumulation, forward and backward); the router's
    // logits in router_prec, fp32 unless the stability experiment asks for a bf16 router. The
    // softmax, top-k, balancing losses and all parameters and gradients stay fp32. Default fp32.
    void set_precision(Precision gemm_prec, Precision router_prec = Precision::fp32);
    Precision precision() const;
    Precision router_precision() const;

    // The last forward's assignments (token choice: T*k slots, expert -1 when a slot is unused;
    // expert choice: E*C), with kept = 0 where capacity dropped the slot. For inspection tools.
    struct Assignment {
        int32_t token, expert;
        float weight;
        bool kept;
    };
    std::vector<Assignment> last_assignments() const;

    // Forward FLOPs actually spent on experts (routed and shared) in the last forward, for
    // GFLOP/s; backward spends twice as many.
    double last_expert_flops_fwd() const { return expert_flops_fwd_; }

    // Expert parallelism (docs/distributed.md). With groups of more than one rank, forward sees
    // this rank's tokens and the layer behaves as one layer on the global batch (every rank's
    // tokens, in world-rank order): the router runs on the gathered logits of the global batch
    // (capacity, dropping, balancing losses and statistics exactly as in one process; expert
    // choice too), token rows travel to the rank of the expert group owning their expert
    // (all-to-all) and back. Each rank computes and updates only its experts (owned_experts());
    // the other experts' parameters stay in the buffer, unused. RouterNoise arrays, when given,
    // cover the global batch. Gradients are this rank's share: the sum over world ranks of the
    // router and shared-expert gradients, and over data ranks of an owned expert's gradient, is
    // the single-process gradient (allreduce_grads() does that for a lone layer).
    // mean_grads: the caller averages gradients over ranks and each rank's dy belongs to a loss
    // averaged over its own tokens (the trainer); the balancing-loss gradient is then scaled by
    // the world size, so the average comes out right. Without groups (or a world of one) the
    // layer runs the single-process code path.
    //
    // replicated_tokens: inference (moe generate under mpirun): every rank of the expert group
    // passes the same tokens; the layer routes them as one process does, runs the rows of its
    // own experts and all-gathers the expert outputs over the expert group, so every rank gets
    // the single-process bits. Forward only.
    //
    // overlap (1 = off): the all-to-alls are split into that many chunks by local expert
    // (Tutel's overlap degree; chunk c holds experts [c El/n, (c+1) El/n) of every owner), all
    // posted at once without blocking, so a chunk's expert GEMMs run while later chunks are in
    // flight and earlier outputs travel back. Every expert sees the same rows in the same order
    // as without chunks: the same bits. Clamped to the experts per rank.
    void set_parallel(const ParallelGroups& groups, bool mean_grads = false,
                      bool replicated_tokens = false);
    void set_overlap(int chunks);
    bool parallel() const;
    struct ExpertRange {
        int first = 0, count = 0;       // routed experts [first, first + count) on this rank
        size_t offset = 0;              // of experts.<first>.w1 in the layer's buffer
        size_t floats_per_expert = 0;   // w1 (+ w3) + w2
        // The routed experts this buffer holds: all of them, or (sharded) the owned ones.
        size_t all_offset = 0, all_floats = 0;
    };
    ExpertRange owned_experts() const;
    // Sums this rank's gradient shares (see set_parallel): router and shared experts over the
    // world, owned experts over the data group. For a lone layer; the trainer reduces the whole
    // model's gradients in buckets instead.
    void allreduce_grads();
    MoeCommStats& comm_stats();

    struct Impl;  // routers, workspaces, saved activations (src/moe/moe_layer.cpp)

   private:
    void run_experts_(float* y);  // steps 5-6 and shared experts (src/moe/moe_layer.cpp)
    void run_shared_(float* y);
    void forward_parallel_(float* y);   // expert parallelism: route globally, exchange, experts
    void run_experts_replicated_(float* y);  // inference: own experts, outputs all-gathered
    void backward_parallel_(const float* dy, float* dx);
    void shared_backward_(const float* dy, float* dx);
    void compute_stats_();
    MoeConfig cfg_;
    ExpertShard shard_;
    std::vector<ParamSpec> specs_;
    bool router_frozen_ = false;
    std::vector<uint8_t> frozen13_, frozen2_, shared13_, shared2_;  // per expert (set_frozen)
    size_t n_params_ = 0;
    Buffer own_params_, own_grads_;
    float* params_ = nullptr;
    float* grads_ = nullptr;
    std::vector<float> balance_bias_;
    MoeStats stats_;
    AuxLosses aux_;
    double expert_flops_fwd_ = 0;
    std::unique_ptr<Impl> impl_;
};

}  // namespace moe
