// The Transformer LM, written out llm.c style: parameters and gradients are one flat buffer each,
// carved by one table of {name, shape} (build_params); activations live in one arena sized per
// (B, S) shape; forward and backward are a list of kernel calls, backward replaying forward in
// reverse. See docs/model.md for the layout.
#include "moe/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "kernels/activations.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "moe/rng.h"

namespace moe {

bool ModelConfig::is_moe_layer(int layer) const {
    if (!moe_layers.empty()) return layer >= 0 && layer < (int)moe_layers.size() && moe_layers[layer];
    return moe_every > 0 && (layer + 1) % moe_every == 0;
}

bool ModelConfig::any_moe() const {
    for (int l = 0; l < n_layers; l++)
        if (is_moe_layer(l)) return true;
    return false;
}

bool ModelConfig::any_dense() const {
    for (int l = 0; l < n_layers; l++)
        if (!is_moe_layer(l)) return true;
    return false;
}

void ModelConfig::validate() const {
    if (vocab_size < 1) fail("model config: vocab_size={} must be >= 1", vocab_size);
    if (d_model < 1) fail("model config: hidden_size={} must be >= 1", d_model);
    if (n_layers < 1) fail("model config: num_hidden_layers={} must be >= 1", n_layers);
    if (family != "mixtral" && family != "qwen2_moe" && family != "qwen3_moe" && family != "olmoe")
        fail("model config: family='{}' is not one of mixtral | qwen2_moe | qwen3_moe | olmoe",
             family);
    if (head_dim < 0 || head_dim > (1 << 14))
        fail("model config: head_dim={} must be in [0, 16384] (0: hidden_size / "
             "num_attention_heads)",
             head_dim);
    if (head_dim == 0) {
        if (n_heads < 1 || d_model % n_heads != 0)
            fail("model config: num_attention_heads={} does not divide hidden_size={}", n_heads,
                 d_model);
        if ((d_model / n_heads) % 2 != 0)
            fail("model config: head dim hidden_size/num_attention_heads = {} must be even (RoPE)",
                 d_model / n_heads);
    } else {
        if (n_heads < 1) fail("model config: num_attention_heads={} must be >= 1", n_heads);
        if (head_dim % 2 != 0) fail("model config: head_dim={} must be even (RoPE)", head_dim);
    }
    if (n_kv_heads < 1 || n_heads % n_kv_heads != 0)
        fail("model config: num_key_value_heads={} does not divide num_attention_heads={}",
             n_kv_heads, n_heads);
    if (block_size < 1) fail("model config: max_position_embeddings={} must be >= 1", block_size);
    if (!(rms_eps > 0.f)) fail("model config: rms_norm_eps={} must be > 0", rms_eps);
    if (!(rope_theta > 0.f)) fail("model config: rope_theta={} must be > 0", rope_theta);
    if (!(init_std >= 0.f)) fail("model config: init_std={} must be >= 0", init_std);
    if (moe_every < 0) fail("model config: moe_every={} must be >= 0", moe_every);
    if (qk_norm != "none" && qk_norm != "head" && qk_norm != "whole")
        fail("model config: qk_norm='{}' is not one of none | head | whole", qk_norm);
    if (!(clip_qkv >= 0.f) || !std::isfinite(clip_qkv))
        fail("model config: clip_qkv={} must be a finite number >= 0 (0: off)", clip_qkv);
    if (!moe_layers.empty()) {
        if ((int)moe_layers.size() != n_layers)
            fail("model config: moe_layers has {} entries for num_hidden_layers={}; give one 0/1 "
                 "per layer",
                 moe_layers.size(), n_layers);
        for (size_t l = 0; l < moe_layers.size(); l++)
            if (moe_layers[l] > 1)
                fail("model config: moe_layers[{}]={} must be 0 (dense) or 1 (MoE)", l,
                     (int)moe_layers[l]);
    }
    if (shared_ff < 0 || shared_ff > (1 << 20))
        fail("model config: shared_expert_intermediate_size={} must be in [0, 1048576]",
             shared_ff);
    const bool any_m = any_moe(), any_d = any_dense();
    if (any_d && d_ff < 1)
        fail("model config: intermediate_size={} must be >= 1 for dense FFN layers", d_ff);
    if (any_m) {
        MoeConfig m = moe;
        m.d_model = d_model;
        m.validate();
    }
    // A family's checkpoint is a real Hugging Face folder the engine (src/infer/) runs: the
    // features must be those the family has, and the MoE maths what HF computes.
    auto need = [&](bool ok, const char* what) {
        if (!ok) fail("model config: family={} needs {}", family, what);
    };
    if (family == "mixtral") {
        need(!qkv_bias && !o_bias && qk_norm == "none" && clip_qkv == 0 && shared_ff == 0 &&
                 moe_layers.empty(),
             "qkv_bias, o_bias, qk_norm, clip_qkv, shared_ff and moe_layers off (Mixtral has "
             "none, its checkpoints record moe_every; choose family qwen2_moe, qwen3_moe or "
             "olmoe)");
        return;
    }
    if (family == "qwen2_moe") {
        need(qkv_bias && !o_bias, "qkv_bias true and o_bias false (Qwen2 attention)");
        need(qk_norm == "none" && clip_qkv == 0, "qk_norm none and clip_qkv 0");
        need(shared_ff >= 1, "shared_ff >= 1 (every Qwen2-MoE block has a gated shared expert)");
    } else if (family == "qwen3_moe") {
        need(qkv_bias == o_bias, "qkv_bias == o_bias (attention_bias sets both)");
        need(qk_norm == "head" && clip_qkv == 0, "qk_norm head and clip_qkv 0");
        need(shared_ff == 0, "shared_ff 0 (no shared expert)");
    } else {  // olmoe
        need(qkv_bias == o_bias, "qkv_bias == o_bias (attention_bias sets both)");
        need(qk_norm == "whole", "qk_norm whole");
        need(shared_ff == 0, "shared_ff 0 (no shared expert)");
        need(!any_d, "every layer MoE (moe_every 1, no moe_layers 0)");
    }
    need(moe.n_experts >= 1 && moe.top_k >= 1 && moe.top_k <= moe.n_experts,
         "n_experts >= 1 and top_k in [1, n_experts] (config.json records them)");
    if (any_m) {
        need(moe.router == "topk" && moe.score == "softmax",
             "router topk with score softmax (the family's router)");
        need(moe.activation == Activation::swiglu, "activation swiglu");
        need(moe.n_shared_experts == 0, "n_shared_experts 0 (use shared_ff, the gated one)");
        need(moe.temperature == 1.f, "router_temperature 1");
        need(moe.bias_update_rate == 0.f, "bias_update_rate 0 (no selection bias in HF)");
        need(moe.dropless, "dropless true (HF drops no tokens)");
    }
}

namespace {

// SwiGLU on h [rows, 2f] = [gate | up] (gate_proj and up_proj are adjacent in the flat buffer,
// so both come from one GEMM): a = silu(gate) * up. The activation kernels are single-threaded
// (experts call them from inside a parallel region); here rows are split over the threads.
void swiglu_fwd(const float* h, float* a, long rows, int f) {
    const long chunk = 64;
#pragma omp parallel for schedule(static) if (rows * f >= 32768)
    for (long r0 = 0; r0 < rows; r0 += chunk)
        swiglu_forward(h + r0 * 2 * f, a + r0 * f, std::min(chunk, rows - r0), f);
}
void swiglu_bwd(const float* h, const float* da, float* dh, long rows, int f) {
    const long chunk = 64;
#pragma omp parallel for schedule(static) if (rows * f >= 32768)
    for (long r0 = 0; r0 < rows; r0 += chunk)
        swiglu_backward(h + r0 * 2 * f, da + r0 * f, dh + r0 * 2 * f, std::min(chunk, rows - r0), f);
}

// y [M,N] = x [M,K] W^T, W [N,K] in HF orientation [out,in]
void linear_fwd(Precision prec, float* y, const float* x, const float* w, int M, int N, int K) {
    gemm(prec, false, true, M, N, K, 1.f, x, K, w, K, 0.f, y, N);
}
// dx [M,K] (= or += by beta) dy [M,N] W; dW [N,K] += dy^T x (skipped when dw is null: frozen)
void linear_bwd(Precision prec, float* dx, float* dw, const float* dy, const float* x,
                const float* w, int M, int N, int K, float beta_dx = 0.f) {
    gemm(prec, false, false, M, K, N, 1.f, dy, N, w, K, beta_dx, dx, K);
    if (dw) gemm(prec, true, false, N, K, M, 1.f, dy, N, x, K, 1.f, dw, K);
}

// The FFN block's tensor-name prefix: Mixtral's block_sparse_moe for MoE layers, mlp otherwise
// (and for every layer of the other families: qwen2_moe, qwen3_moe, olmoe name it mlp).
std::string ffn_prefix(const ModelConfig& c, int layer, bool moe_layer) {
    return "model.layers." + std::to_string(layer) +
           (moe_layer && c.family == "mixtral" ? ".block_sparse_moe." : ".mlp.");
}

std::string moe_param_name(const ModelConfig& c, int layer, const std::string& n) {
    // router.weight -> gate.weight, router.noise_weight -> gate.noise_weight,
    // experts.J.w1 -> experts.J.w1.weight (HF Mixtral naming); the other families name the
    // expert matrices gate_proj (w1), up_proj (w3), down_proj (w2).
    std::string s = n;
    if (s.rfind("router.", 0) == 0) s = "gate." + s.substr(7);
    if (c.family != "mixtral" && s.rfind("experts.", 0) == 0) {
        const size_t dot = s.rfind('.');
        const std::string w = s.substr(dot + 1);
        const char* hf = w == "w1" ? "gate_proj" : w == "w3" ? "up_proj" : w == "w2" ? "down_proj"
                                                                                     : nullptr;
        if (hf) s = s.substr(0, dot + 1) + hf;
    }
    const std::string suffix = "weight";
    if (s.size() < suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0)
        s += ".weight";
    return ffn_prefix(c, layer, true) + s;
}

// y [rows, width] += b (broadcast over rows)
void add_bias_rows(float* y, const float* b, long rows, int width) {
    for (long t = 0; t < rows; t++)
        for (int j = 0; j < width; j++) y[t * width + j] += b[j];
}
// db [width] += column sums of dy [rows, width], rows in order (deterministic)
void colsum_acc(float* db, const float* dy, long rows, int width) {
    for (long t = 0; t < rows; t++)
        for (int j = 0; j < width; j++) db[j] += dy[t * width + j];
}
// dst [rows, width] = columns [col, col + width) of src [rows, ld], and back
void gather_cols(float* dst, const float* src, long rows, int ld, int col, int width) {
    for (long t = 0; t < rows; t++)
        std::memcpy(dst + t * width, src + t * ld + col, sizeof(float) * width);
}
void scatter_cols(float* dst, const float* src, long rows, int ld, int col, int width) {
    for (long t = 0; t < rows; t++)
        std::memcpy(dst + t * ld + col, src + t * width, sizeof(float) * width);
}

}  // namespace

struct LayerFrozen {  // set_frozen: which weight-gradient computations backward skips
    bool ln1 = false, wqkv = false, wo = false, ln2 = false, w13 = false, w2 = false;
    bool bqkv = false, qn = false, kn = false, bo = false, s13 = false, sd = false, sg = false;
};

// Offsets of one layer's tensors inside the flat buffers (npos: the config has no such tensor).
struct LayerOff {
    static constexpr size_t npos = (size_t)-1;
    size_t ln1 = npos, wqkv = npos, bqkv = npos, qn = npos, kn = npos, wo = npos, bo = npos,
           ln2 = npos, w13 = npos, w2 = npos, moe = npos, s13 = npos, sd = npos, sg = npos;
};

struct LayerPtrs {  // one layer's tensors inside the flat parameter (or gradient) buffer
    float *ln1 = nullptr, *wqkv = nullptr, *wo = nullptr, *ln2 = nullptr;
    float *w13 = nullptr, *w2 = nullptr;  // dense FFN: [gate; up] [2f,d], down [d,f]
    size_t moe_offset = 0;
    float *bqkv = nullptr;             // [q; k; v] biases, contiguous (qkv_bias)
    float *qn = nullptr, *kn = nullptr;  // q_norm, k_norm weights (qk_norm)
    float *bo = nullptr;               // o_proj bias
    float *s13 = nullptr, *sd = nullptr, *sg = nullptr;  // gated shared expert: [gate; up], down,
                                                         // shared_expert_gate [1, d]
};

struct Model::Impl {
    int V, d, L, H, Hkv, hd, f, qkvd, fs = 0;
    int qd = 0, kvd = 0;
    float eps = 1e-5f, clip = 0;
    int qk_norm = 0;  // 0 none, 1 per head, 2 whole
    std::vector<ParamSpec> specs;
    size_t n_params = 0;
    Buffer params, grads;
    std::vector<LayerOff> loff;  // per layer
    size_t off_wte = 0, off_normf = 0, off_head = 0;
    std::vector<std::unique_ptr<MoeLayer>> moe;  // nullptr for dense layers
    Precision prec = Precision::fp32;  // GEMM operands of the projections and the LM head
    Buffer rope_cos, rope_sin;                   // [block, hd/2]
    std::vector<LayerFrozen> frozen;             // per layer (set_frozen)
    bool frozen_wte = false, frozen_head = false, frozen_normf = false;

    // Activations of the last forward, carved from one arena per (B,S) (see docs/model.md).
    int B = 0, S = 0, T = 0;
    Buffer arena, grad_arena;
    size_t arena_T = 0, arena_S = 0;
    std::vector<float*> res, ln1, rstd1, qkv, att, atty, res_mid, ln2, rstd2, h13, act;
    // Family features, per layer (nullptr when off): q/k norm inputs and rstd, q/k/v before the
    // clip, the shared expert's [gate|up], activation, output and gate logit.
    std::vector<float*> q_in, k_in, rstd_q, rstd_k, qkv_pre, sh13, sact, sout, sglog;
    float *lnf = nullptr, *rstdf = nullptr, *logits = nullptr, *lse = nullptr, *ffn_out = nullptr;
    float *qk_tmp = nullptr;  // forward scratch: a normalised q or k [T, qd]
    float *dres = nullptr, *dln = nullptr, *dqkv = nullptr, *datty = nullptr, *dh13 = nullptr,
          *dact = nullptr, *dlogits = nullptr;
    float *dqk_c = nullptr, *dqk_x = nullptr, *dsh13 = nullptr, *dsact = nullptr,
          *dsout = nullptr, *dsz = nullptr;
    std::vector<int32_t> tokens, targets;
    bool have_forward = false, have_targets = false;
    double flops_fwd = 0;  // the last forward's GEMM + attention FLOPs (last_forward_flops)

    // KV cache for generation (batch 1).
    int cache_pos = 0;
    Buffer cache_arena;
    std::vector<float*> kcache, vcache;
    float *c_x, *c_ln, *c_rstd, *c_qkv, *c_att, *c_atty, *c_tmp, *c_h13, *c_act, *c_logits;
    float *c_q_in, *c_k_in, *c_rq, *c_rk, *c_qk_tmp, *c_sh13, *c_sact, *c_sout, *c_sglog;

    LayerPtrs layer(float* base, int l) const {
        const LayerOff& o = loff[l];
        auto at = [&](size_t off) { return off == LayerOff::npos ? nullptr : base + off; };
        LayerPtrs p;
        p.ln1 = at(o.ln1), p.wqkv = at(o.wqkv), p.bqkv = at(o.bqkv), p.qn = at(o.qn);
        p.kn = at(o.kn), p.wo = at(o.wo), p.bo = at(o.bo), p.ln2 = at(o.ln2);
        p.w13 = at(o.w13), p.w2 = at(o.w2), p.s13 = at(o.s13), p.sd = at(o.sd), p.sg = at(o.sg);
        p.moe_offset = o.moe == LayerOff::npos ? 0 : o.moe;
        return p;
    }
    const float* head_w(const float* base) const { return base + off_head; }

    bool trainable = true;
    void alloc_arena(int B_, int S_);
    void alloc_cache(int block);

    // The attention input's family features on n rows of qkv [n, qkvd] (after the projection
    // and its bias, before RoPE): q/k RMSNorm, then the clip. Saves what backward needs when
    // the save pointers are given.
    void qk_features_fwd(float* qkv_, int n, const LayerPtrs& w, float* qin, float* kin,
                         float* rq, float* rk, float* pre, float* tmp) const;
    void qk_features_bwd(float* dqkv_, int n, const LayerPtrs& w, LayerPtrs* g, const float* qin,
                         const float* kin, const float* rq, const float* rk, const float* pre);
    // y [n, d] += sigmoid(x . sg) * SwiGLU_shared(x), saving [gate|up], act, out and the logit.
    void shared_fwd(const float* x, int n, const LayerPtrs& w, float* h13_, float* act_,
                    float* out, float* glog, float* y) const;
};

void Model::Impl::qk_features_fwd(float* qkv_, int n, const LayerPtrs& w, float* qin, float* kin,
                                  float* rq, float* rk, float* pre, float* tmp) const {
    if (qk_norm) {
        // Contiguous copies of the q and k columns: per head they are rows of hd, whole rows
        // of H hd (Hkv hd).
        const int qrows = qk_norm == 1 ? n * H : n, qcols = qk_norm == 1 ? hd : qd;
        const int krows = qk_norm == 1 ? n * Hkv : n, kcols = qk_norm == 1 ? hd : kvd;
        gather_cols(qin, qkv_, n, qkvd, 0, qd);
        rmsnorm_forward(tmp, rq, qin, w.qn, qrows, qcols, eps);
        scatter_cols(qkv_, tmp, n, qkvd, 0, qd);
        gather_cols(kin, qkv_, n, qkvd, qd, kvd);
        rmsnorm_forward(tmp, rk, kin, w.kn, krows, kcols, eps);
        scatter_cols(qkv_, tmp, n, qkvd, qd, kvd);
    }
    if (clip > 0) {
        const size_t cnt = (size_t)n * qkvd;
        if (pre) std::memcpy(pre, qkv_, sizeof(float) * cnt);
        for (size_t i = 0; i < cnt; i++) qkv_[i] = std::min(clip, std::max(-clip, qkv_[i]));
    }
}

void Model::Impl::qk_features_bwd(float* dqkv_, int n, const LayerPtrs& w, LayerPtrs* g,
                                  const float* qin, const float* kin, const float* rq,
                                  const float* rk, const float* pre) {
    if (clip > 0) {  // clamp: the gradient passes where -c <= x <= c (torch's clamp backward)
        const size_t cnt = (size_t)n * qkvd;
        for (size_t i = 0; i < cnt; i++)
            if (pre[i] < -clip || pre[i] > clip) dqkv_[i] = 0.f;
    }
    if (qk_norm) {
        const int qrows = qk_norm == 1 ? n * H : n, qcols = qk_norm == 1 ? hd : qd;
        const int krows = qk_norm == 1 ? n * Hkv : n, kcols = qk_norm == 1 ? hd : kvd;
        gather_cols(dqk_c, dqkv_, n, qkvd, 0, qd);
        std::memset(dqk_x, 0, sizeof(float) * (size_t)n * qd);
        rmsnorm_backward(dqk_x, g ? g->qn : nullptr, dqk_c, qin, w.qn, rq, qrows, qcols);
        scatter_cols(dqkv_, dqk_x, n, qkvd, 0, qd);
        gather_cols(dqk_c, dqkv_, n, qkvd, qd, kvd);
        std::memset(dqk_x, 0, sizeof(float) * (size_t)n * kvd);
        rmsnorm_backward(dqk_x, g ? g->kn : nullptr, dqk_c, kin, w.kn, rk, krows, kcols);
        scatter_cols(dqkv_, dqk_x, n, qkvd, qd, kvd);
    }
}

void Model::Impl::shared_fwd(const float* x, int n, const LayerPtrs& w, float* h13_, float* act_,
                             float* out, float* glog, float* y) const {
    linear_fwd(prec, h13_, x, w.s13, n, 2 * fs, d);
    swiglu_fwd(h13_, act_, n, fs);
    linear_fwd(prec, out, act_, w.sd, n, d, fs);
    for (int t = 0; t < n; t++) {
        const float* xt = x + (size_t)t * d;
        float z = 0;
        for (int j = 0; j < d; j++) z += xt[j] * w.sg[j];
        glog[t] = z;
        const float gate = 1.f / (1.f + std::exp(-z));
        float* yt = y + (size_t)t * d;
        const float* ot = out + (size_t)t * d;
        for (int j = 0; j < d; j++) yt[j] += gate * ot[j];
    }
}

// One carving sequence for the activation arenas: pass 1 counts (base == nullptr), pass 2 hands
// out pointers.
struct Carver {
    float* p = nullptr;
    size_t n = 0;
    float* take(size_t k) {
        float* r = p ? p + n : nullptr;
        n += k;
        return r;
    }
};

void Model::Impl::alloc_arena(int B_, int S_) {
    B = B_, S = S_, T = B_ * S_;
    if ((size_t)T == arena_T && (size_t)S == arena_S) return;
    const size_t Tz = T;
    auto carve = [&](Carver& c) {
        res.assign(L + 1, nullptr);
        for (auto* v : {&ln1, &rstd1, &qkv, &att, &atty, &res_mid, &ln2, &rstd2, &h13, &act, &q_in,
                        &k_in, &rstd_q, &rstd_k, &qkv_pre, &sh13, &sact, &sout, &sglog})
            v->assign(L, nullptr);
        for (int l = 0; l < L; l++) {
            res[l] = c.take(Tz * d);
            ln1[l] = c.take(Tz * d);
            rstd1[l] = c.take(Tz);
            qkv[l] = c.take(Tz * qkvd);
            att[l] = c.take((size_t)B * H * S * S);
            atty[l] = c.take(Tz * H * hd);
            res_mid[l] = c.take(Tz * d);
            ln2[l] = c.take(Tz * d);
            rstd2[l] = c.take(Tz);
            h13[l] = c.take(moe[l] ? 0 : Tz * 2 * f);
            act[l] = c.take(moe[l] ? 0 : Tz * f);
            if (qk_norm) {
                q_in[l] = c.take(Tz * qd);
                k_in[l] = c.take(Tz * kvd);
                rstd_q[l] = c.take(Tz * H);
                rstd_k[l] = c.take(Tz * Hkv);
            }
            if (clip > 0) qkv_pre[l] = c.take(Tz * qkvd);
            if (moe[l] && fs > 0) {
                sh13[l] = c.take(Tz * 2 * fs);
                sact[l] = c.take(Tz * fs);
                sout[l] = c.take(Tz * d);
                sglog[l] = c.take(Tz);
            }
        }
        res[L] = c.take(Tz * d);
        lnf = c.take(Tz * d);
        rstdf = c.take(Tz);
        logits = c.take(Tz * V);
        lse = c.take(Tz);
        ffn_out = c.take(Tz * d);
        qk_tmp = c.take(qk_norm ? Tz * qd : 0);
    };
    Carver count;
    carve(count);
    arena.resize(count.n);
    Carver real{arena.data(), 0};
    carve(real);
    // gradients of activations: one set, reused by every layer
    auto gcarve = [&](Carver& c) {
        dres = c.take(Tz * d);
        dln = c.take(Tz * d);
        dqkv = c.take(Tz * qkvd);
        datty = c.take(Tz * H * hd);
        dh13 = c.take(Tz * 2 * f);
        dact = c.take(Tz * f);
        dlogits = c.take(Tz * V);
        dqk_c = c.take(qk_norm ? Tz * qd : 0);
        dqk_x = c.take(qk_norm ? Tz * qd : 0);
        dsh13 = c.take(Tz * 2 * fs);
        dsact = c.take(Tz * fs);
        dsout = c.take(fs ? Tz * d : 0);
        dsz = c.take(fs ? Tz : 0);
    };
    if (trainable) {  // inference: no gradients of activations
        Carver gcount;
        gcarve(gcount);
        grad_arena.resize(gcount.n);
        Carver greal{grad_arena.data(), 0};
        gcarve(greal);
    }
    arena_T = T, arena_S = S;
}

void Model::Impl::alloc_cache(int block) {
    if (!kcache.empty()) return;
    const size_t n = block;
    auto carve = [&](Carver& c) {
        kcache.assign(L, nullptr);
        vcache.assign(L, nullptr);
        for (int l = 0; l < L; l++) {
            kcache[l] = c.take(n * kvd);
            vcache[l] = c.take(n * kvd);
        }
        c_x = c.take(n * d);
        c_ln = c.take(n * d);
        c_tmp = c.take(n * d);
        c_rstd = c.take(n);
        c_qkv = c.take(n * qkvd);
        c_att = c.take((size_t)H * n * n);
        c_atty = c.take(n * H * hd);
        c_h13 = c.take(n * 2 * f);
        c_act = c.take(n * f);
        c_logits = c.take(V);
        c_q_in = c.take(qk_norm ? n * qd : 0);
        c_k_in = c.take(qk_norm ? n * kvd : 0);
        c_rq = c.take(qk_norm ? n * H : 0);
        c_rk = c.take(qk_norm ? n * Hkv : 0);
        c_qk_tmp = c.take(qk_norm ? n * qd : 0);
        c_sh13 = c.take(n * 2 * fs);
        c_sact = c.take(n * fs);
        c_sout = c.take(fs ? n * d : 0);
        c_sglog = c.take(fs ? n : 0);
    };
    Carver count;
    carve(count);
    cache_arena.resize(count.n);
    Carver real{cache_arena.data(), 0};
    carve(real);
}

// The one table every offset, name and shape derives from (MoE layers' tensors from
// MoeLayer::layout, under their HF names). Within a layer, what one GEMM reads is contiguous:
// q, k, v weights; their biases; an expert's gate and up; the shared expert's gate and up.
std::vector<ParamSpec> Model::layout(const ModelConfig& cfg_in, size_t* n_params,
                                     ExpertShard shard) {
    ModelConfig cfg = cfg_in;
    cfg.validate();
    cfg.moe.d_model = cfg.d_model;
    const int H = cfg.n_heads, Hkv = cfg.n_kv_heads, hd = cfg.hd();
    const int64_t f = cfg.any_dense() ? cfg.d_ff : 0, fs = cfg.shared_ff;
    std::vector<ParamSpec> specs;
    size_t off = 0;
    auto add = [&](const std::string& name, Shape shape) {
        specs.push_back({name, shape, off});
        off += (size_t)shape.numel();
    };
    const int64_t d = cfg.d_model, V = cfg.vocab_size, qd = (int64_t)H * hd,
                  kvd = (int64_t)Hkv * hd;
    add("model.embed_tokens.weight", {V, d});
    for (int l = 0; l < cfg.n_layers; l++) {
        std::string pre = "model.layers." + std::to_string(l) + ".";
        add(pre + "input_layernorm.weight", {d});
        add(pre + "self_attn.q_proj.weight", {qd, d});
        add(pre + "self_attn.k_proj.weight", {kvd, d});
        add(pre + "self_attn.v_proj.weight", {kvd, d});
        if (cfg.qkv_bias) {
            add(pre + "self_attn.q_proj.bias", {qd});
            add(pre + "self_attn.k_proj.bias", {kvd});
            add(pre + "self_attn.v_proj.bias", {kvd});
        }
        if (cfg.qk_norm == "head") {
            add(pre + "self_attn.q_norm.weight", {hd});
            add(pre + "self_attn.k_norm.weight", {hd});
        } else if (cfg.qk_norm == "whole") {
            add(pre + "self_attn.q_norm.weight", {qd});
            add(pre + "self_attn.k_norm.weight", {kvd});
        }
        add(pre + "self_attn.o_proj.weight", {d, qd});
        if (cfg.o_bias) add(pre + "self_attn.o_proj.bias", {d});
        add(pre + "post_attention_layernorm.weight", {d});
        if (cfg.is_moe_layer(l)) {
            size_t n = 0, base = off;
            for (const ParamSpec& p : MoeLayer::layout(cfg.moe, &n, shard))
                specs.push_back({moe_param_name(cfg, l, p.name), p.shape, base + p.offset});
            off = base + n;
            if (fs > 0) {
                const std::string s = ffn_prefix(cfg, l, true);
                add(s + "shared_expert.gate_proj.weight", {fs, d});
                add(s + "shared_expert.up_proj.weight", {fs, d});
                add(s + "shared_expert.down_proj.weight", {d, fs});
                add(s + "shared_expert_gate.weight", {1, d});
            }
        } else {
            add(pre + "mlp.gate_proj.weight", {f, d});
            add(pre + "mlp.up_proj.weight", {f, d});
            add(pre + "mlp.down_proj.weight", {d, f});
        }
    }
    add("model.norm.weight", {d});
    if (!cfg.tie_embeddings) add("lm_head.weight", {V, d});
    if (n_params) *n_params = off;
    return specs;
}

Model::Model(const ModelConfig& cfg, bool trainable, ExpertShard shard)
    : cfg_(cfg), trainable_(trainable), shard_(shard), impl_(new Impl) {
    cfg_.validate();
    impl_->trainable = trainable;
    cfg_.moe.d_model = cfg_.d_model;
    Impl& m = *impl_;
    m.V = cfg_.vocab_size, m.d = cfg_.d_model, m.L = cfg_.n_layers, m.H = cfg_.n_heads;
    m.Hkv = cfg_.n_kv_heads, m.hd = cfg_.hd(), m.f = cfg_.d_ff;
    m.qd = m.H * m.hd, m.kvd = m.Hkv * m.hd;
    m.qkvd = (m.H + 2 * m.Hkv) * m.hd;
    m.eps = cfg_.rms_eps;
    m.clip = cfg_.clip_qkv;
    m.qk_norm = cfg_.qk_norm == "head" ? 1 : cfg_.qk_norm == "whole" ? 2 : 0;
    // Dense-only sizes: a model without dense layers needs no FFN activations of width f.
    if (!cfg_.any_dense()) m.f = 0;
    m.fs = cfg_.any_moe() ? cfg_.shared_ff : 0;

    m.specs = layout(cfg_, &m.n_params, shard_);
    std::map<std::string, size_t> by_name;
    for (auto& s : m.specs) by_name[s.name] = s.offset;
    auto offset_of = [&](const std::string& name) {
        auto it = by_name.find(name);
        MOE_CHECK(it != by_name.end(), "no tensor {} in the layout", name);
        return it->second;
    };
    auto maybe = [&](const std::string& name) {
        auto it = by_name.find(name);
        return it == by_name.end() ? LayerOff::npos : it->second;
    };
    m.off_wte = offset_of("model.embed_tokens.weight");
    m.moe.resize(m.L);
    m.loff.resize(m.L);
    for (int l = 0; l < m.L; l++) {
        const std::string pre = "model.layers." + std::to_string(l) + ".", a = pre + "self_attn.";
        LayerOff& o = m.loff[l];
        o.ln1 = offset_of(pre + "input_layernorm.weight");
        o.wqkv = offset_of(a + "q_proj.weight");
        o.bqkv = maybe(a + "q_proj.bias");
        o.qn = maybe(a + "q_norm.weight");
        o.kn = maybe(a + "k_norm.weight");
        o.wo = offset_of(a + "o_proj.weight");
        o.bo = maybe(a + "o_proj.bias");
        o.ln2 = offset_of(pre + "post_attention_layernorm.weight");
        if (cfg_.is_moe_layer(l)) {
            o.moe = o.ln2 + (size_t)m.d;  // the MoE layer's tensors follow the norm
            const std::string s = ffn_prefix(cfg_, l, true);
            o.s13 = maybe(s + "shared_expert.gate_proj.weight");
            o.sd = maybe(s + "shared_expert.down_proj.weight");
            o.sg = maybe(s + "shared_expert_gate.weight");
            // Each layer its own noise stream: the same seed everywhere would give every layer
            // the same router noise (noisy-topk, jitter, GShard's u, gate dropout).
            MoeConfig lc = cfg_.moe;
            lc.seed = cfg_.moe.seed + 0x9e3779b97f4a7c15ULL * (uint64_t)(l + 1);
            m.moe[l] = std::make_unique<MoeLayer>(lc, /*own_buffers=*/false, shard_);
        } else {
            o.w13 = offset_of(pre + "mlp.gate_proj.weight");
            o.w2 = offset_of(pre + "mlp.down_proj.weight");
        }
    }
    m.off_normf = offset_of("model.norm.weight");
    m.off_head = cfg_.tie_embeddings ? m.off_wte : offset_of("lm_head.weight");
    const size_t off = m.n_params;
    m.params.resize(off);
    m.params.zero();
    if (trainable_) {
        m.grads.resize(off);
        m.grads.zero();
    }
    for (int l = 0; l < m.L; l++)
        if (m.moe[l]) {
            size_t o = m.layer(m.params.data(), l).moe_offset;
            m.moe[l]->bind(m.params.data() + o, trainable_ ? m.grads.data() + o : nullptr);
        }
    m.rope_cos.resize((size_t)cfg_.block_size * m.hd / 2);
    m.rope_sin.resize((size_t)cfg_.block_size * m.hd / 2);
    rope_tables(m.rope_cos.data(), m.rope_sin.data(), cfg_.block_size, m.hd, cfg_.rope_theta);
    if (trainable_) init_params(cfg_.seed);
}

Model::~Model() = default;

const std::vector<ParamSpec>& Model::params() const { return impl_->specs; }
size_t Model::n_params() const { return impl_->n_params; }
float* Model::param_data() { return impl_->params.data(); }
float* Model::grad_data() { return impl_->grads.data(); }
// Threads share the memset: at 3.4M parameters a single-threaded one is ~5% of a training step.
void Model::zero_grad() {
    if (!trainable_) return;
    float* g = impl_->grads.data();
    const long n = (long)impl_->n_params, chunk = 1 << 16;
#pragma omp parallel for schedule(static) if (n >= 4 * chunk)
    for (long i0 = 0; i0 < n; i0 += chunk)
        std::memset(g + i0, 0, sizeof(float) * (size_t)std::min(chunk, n - i0));
}
void Model::set_frozen(const std::vector<uint8_t>& frozen) {
    Impl& m = *impl_;
    if (!frozen.empty() && frozen.size() != m.specs.size())
        fail("model set_frozen: {} flags for {} parameter tensors", frozen.size(), m.specs.size());
    std::map<std::string, bool> fz;
    for (size_t i = 0; i < m.specs.size(); i++) fz[m.specs[i].name] = !frozen.empty() && frozen[i];
    auto is = [&](const std::string& n) { return fz.count(n) ? fz[n] : false; };
    m.frozen.assign(m.L, LayerFrozen());
    for (int l = 0; l < m.L; l++) {
        std::string pre = "model.layers." + std::to_string(l) + ".", a = pre + "self_attn.";
        LayerFrozen& f = m.frozen[l];
        f.ln1 = is(pre + "input_layernorm.weight");
        f.wqkv = is(a + "q_proj.weight") && is(a + "k_proj.weight") &&
                 is(a + "v_proj.weight");  // one GEMM computes all three
        f.bqkv = is(a + "q_proj.bias") && is(a + "k_proj.bias") && is(a + "v_proj.bias");
        f.qn = is(a + "q_norm.weight");
        f.kn = is(a + "k_norm.weight");
        f.wo = is(a + "o_proj.weight");
        f.bo = is(a + "o_proj.bias");
        f.ln2 = is(pre + "post_attention_layernorm.weight");
        f.w13 = is(pre + "mlp.gate_proj.weight") && is(pre + "mlp.up_proj.weight");
        f.w2 = is(pre + "mlp.down_proj.weight");
        const std::string s = ffn_prefix(cfg_, l, true);
        f.s13 = is(s + "shared_expert.gate_proj.weight") && is(s + "shared_expert.up_proj.weight");
        f.sd = is(s + "shared_expert.down_proj.weight");
        f.sg = is(s + "shared_expert_gate.weight");
        if (m.moe[l]) {
            std::vector<uint8_t> lf;
            for (const ParamSpec& p : m.moe[l]->params())
                lf.push_back(is(moe_param_name(cfg_, l, p.name)));
            m.moe[l]->set_frozen(lf);
        }
    }
    m.frozen_wte = is("model.embed_tokens.weight");
    m.frozen_head = cfg_.tie_embeddings ? m.frozen_wte : is("lm_head.weight");
    m.frozen_normf = is("model.norm.weight");
}

bool Model::is_no_decay(const ParamSpec& p) const { return p.shape.rank() <= 1; }

static bool ends_with(const std::string& s, const std::string& e) {
    return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

// RMSNorm weights 1 (q_norm and k_norm too), biases 0; every matrix N(0, init_std); projections
// that write into the residual stream (o_proj, down_proj, experts' w2) scaled by 1/sqrt(2L), as
// GPT-2 does, so the residual stream's variance does not grow with depth. Drawn serially in table
// order from one Rng (norms and biases draw nothing). The order is the full table's: a model
// holding part of the experts (ExpertShard) draws the others' values into a scratch buffer, so
// its tensors equal the unsharded model's.
void Model::init_params(uint64_t seed) {
    Rng rng(seed);
    float* P = impl_->params.data();
    const float res_std = cfg_.init_std / std::sqrt(2.f * cfg_.n_layers);
    const std::vector<ParamSpec>& held = impl_->specs;
    size_t next = 0;
    Buffer scratch;
    for (const ParamSpec& p : shard_.sharded() ? layout(cfg_, nullptr) : held) {
        float* w;
        if (next < held.size() && held[next].name == p.name) {
            w = P + held[next++].offset;
        } else {
            if ((int64_t)scratch.size() < p.shape.numel()) scratch.resize((size_t)p.shape.numel());
            w = scratch.data();
        }
        int64_t n = p.shape.numel();
        if (ends_with(p.name, "norm.weight")) {
            for (int64_t i = 0; i < n; i++) w[i] = 1.f;
        } else if (ends_with(p.name, ".bias")) {
            for (int64_t i = 0; i < n; i++) w[i] = 0.f;
        } else {
            bool residual_out = ends_with(p.name, "o_proj.weight") ||
                                ends_with(p.name, "down_proj.weight") ||
                                ends_with(p.name, ".w2.weight");
            rng.fill_normal(w, n, 0.f, residual_out ? res_std : cfg_.init_std);
        }
    }
}

float Model::forward(const int32_t* tokens, const int32_t* targets, int B, int S, bool training) {
    Impl& m = *impl_;
    if (B < 1 || S < 1 || S > cfg_.block_size)
        fail("model forward: batch [B={}, S={}] must have B >= 1 and 1 <= S <= block_size={}", B, S,
             cfg_.block_size);
    m.alloc_arena(B, S);
    const int T = m.T, d = m.d, H = m.H, Hkv = m.Hkv, hd = m.hd, f = m.f, qkvd = m.qkvd;
    m.tokens.assign(tokens, tokens + T);
    m.have_forward = false;
    m.have_targets = targets != nullptr;
    if (targets) m.targets.assign(targets, targets + T);

    float* P = m.params.data();
    embedding_forward(m.res[0], tokens, P + m.off_wte, T, d, m.V);
    AttnDims ad{B, S, S, H, Hkv, hd, 0};
    for (int l = 0; l < m.L; l++) {
        LayerPtrs w = m.layer(P, l);
        // attention block
        rmsnorm_forward(m.ln1[l], m.rstd1[l], m.res[l], w.ln1, T, d, cfg_.rms_eps);
        linear_fwd(m.prec, m.qkv[l], m.ln1[l], w.wqkv, T, qkvd, d);
        if (w.bqkv) add_bias_rows(m.qkv[l], w.bqkv, T, qkvd);
        m.qk_features_fwd(m.qkv[l], T, w, m.q_in[l], m.k_in[l], m.rstd_q[l], m.rstd_k[l],
                          m.qkv_pre[l], m.qk_tmp);
        // q heads at columns [0, H hd), k heads right after: one pass rotates both.
        rope_forward(m.qkv[l], B, S, qkvd, H + Hkv, hd, 0, m.rope_cos.data(), m.rope_sin.data());
        const float* q = m.qkv[l];
        attention_forward(m.atty[l], H * hd, m.att[l], q, qkvd, q + H * hd, qkvd,
                          q + (H + Hkv) * hd, qkvd, ad);
        std::memcpy(m.res_mid[l], m.res[l], sizeof(float) * T * d);
        gemm(m.prec, false, true, T, d, H * hd, 1.f, m.atty[l], H * hd, w.wo, H * hd, 1.f,
             m.res_mid[l], d);
        if (w.bo) add_bias_rows(m.res_mid[l], w.bo, T, d);
        // FFN block
        rmsnorm_forward(m.ln2[l], m.rstd2[l], m.res_mid[l], w.ln2, T, d, cfg_.rms_eps);
        std::memcpy(m.res[l + 1], m.res_mid[l], sizeof(float) * T * d);
        if (m.moe[l]) {
            m.moe[l]->forward(ConstTensorView(m.ln2[l], {T, d}), TensorView(m.ffn_out, {T, d}),
                              training);
            if (w.s13)  // qwen2_moe: the gated shared expert joins the routed output
                m.shared_fwd(m.ln2[l], T, w, m.sh13[l], m.sact[l], m.sout[l], m.sglog[l],
                             m.ffn_out);
            float* r = m.res[l + 1];
            for (long i = 0; i < (long)T * d; i++) r[i] += m.ffn_out[i];
        } else {
            linear_fwd(m.prec, m.h13[l], m.ln2[l], w.w13, T, 2 * f, d);
            swiglu_fwd(m.h13[l], m.act[l], T, f);
            gemm(m.prec, false, true, T, d, f, 1.f, m.act[l], f, w.w2, f, 1.f, m.res[l + 1], d);
        }
    }
    rmsnorm_forward(m.lnf, m.rstdf, m.res[m.L], P + m.off_normf, T, d, cfg_.rms_eps);
    linear_fwd(m.prec, m.logits, m.lnf, m.head_w(P), T, m.V, d);
    m.flops_fwd = forward_flops_(B, S);
    m.have_forward = true;
    if (!targets) return 0.f;
    return (float)cross_entropy_forward(m.lse, m.logits, targets, T, m.V);
}

// Multiply-adds x 2 of the last forward's products: q/k/v/o and the LM head, causal attention
// (query i reads i + 1 keys: S (S + 1) / 2 score and value products per head), dense FFNs,
// routers, the qwen2 gated shared expert, and the experts as MoeLayer counted them (the rows
// actually routed: dropped tokens, top-p and expert choice come out right). Norms, softmax and
// element-wise work are not counted (as in the usual "model FLOPs").
double Model::forward_flops_(int B, int S) const {
    const Impl& m = *impl_;
    const double T = (double)B * S, d = m.d, hd = m.hd, H = m.H, f = m.f;
    double fl = 0;
    for (int l = 0; l < m.L; l++) {
        fl += 2 * T * d * m.qkvd + 2 * T * H * hd * d;           // q, k, v; o
        fl += 2 * 2 * (double)B * H * hd * (double)S * (S + 1) / 2;  // q k^T and att v
        if (m.moe[l]) {
            fl += m.moe[l]->last_expert_flops_fwd() + 2 * T * d * cfg_.moe.n_experts;
            if (cfg_.shared_ff > 0) fl += 2 * T * d * (3.0 * cfg_.shared_ff + 1);
        } else {
            fl += 2 * T * d * 3 * f;  // SwiGLU: w1, w3, w2
        }
    }
    return fl + 2 * T * d * m.V;
}

double Model::last_forward_flops() const { return impl_->flops_fwd; }

void Model::backward() {
    Impl& m = *impl_;
    if (!m.have_forward || !m.have_targets)
        fail("model backward: needs a forward with targets first");
    MOE_CHECK(trainable_, "model backward on an inference-only model (built without gradients)");
    const int B = m.B, S = m.S, T = m.T, d = m.d, H = m.H, Hkv = m.Hkv, hd = m.hd, f = m.f,
              qkvd = m.qkvd, V = m.V, fs = m.fs;
    float* P = m.params.data();
    float* G = m.grads.data();
    // LM head and final norm
    cross_entropy_backward(m.dlogits, m.logits, m.lse, m.targets.data(), T, V, 1.f);
    // Frozen weights (set_frozen) pass a null gradient: the dW work is skipped, dx is not.
    if (m.frozen.empty()) m.frozen.assign(m.L, LayerFrozen());
    auto gw = [](bool frozen, float* g) { return frozen ? nullptr : g; };
    linear_bwd(m.prec, m.dln, gw(m.frozen_head, G + m.off_head), m.dlogits, m.lnf, m.head_w(P), T, V, d);
    std::memset(m.dres, 0, sizeof(float) * T * d);
    rmsnorm_backward(m.dres, gw(m.frozen_normf, G + m.off_normf), m.dln, m.res[m.L],
                     P + m.off_normf, m.rstdf, T, d);
    AttnDims ad{B, S, S, H, Hkv, hd, 0};
    for (int l = m.L - 1; l >= 0; l--) {
        LayerPtrs w = m.layer(P, l), g = m.layer(G, l);
        const LayerFrozen& fz = m.frozen[l];
        // FFN block: d(ffn out) = dres (the residual passes dres through unchanged)
        if (m.moe[l]) {
            m.moe[l]->backward(ConstTensorView(m.dres, {T, d}), TensorView(m.dln, {T, d}));
            if (w.s13) {
                // y += s(z) o with z = x . wg: dz = (dy . o) s (1 - s), d(o) = s dy.
                const float* o = m.sout[l];
                for (int t = 0; t < T; t++) {
                    const float* dy = m.dres + (size_t)t * d;
                    const float* ot = o + (size_t)t * d;
                    const float s = 1.f / (1.f + std::exp(-m.sglog[l][t]));
                    float dg = 0;
                    for (int j = 0; j < d; j++) dg += dy[j] * ot[j];
                    m.dsz[t] = dg * s * (1.f - s);
                    float* dso = m.dsout + (size_t)t * d;
                    for (int j = 0; j < d; j++) dso[j] = s * dy[j];
                }
                linear_bwd(m.prec, m.dsact, gw(fz.sd, g.sd), m.dsout, m.sact[l], w.sd, T, d, fs);
                swiglu_bwd(m.sh13[l], m.dsact, m.dsh13, T, fs);
                linear_bwd(m.prec, m.dln, gw(fz.s13, g.s13), m.dsh13, m.ln2[l], w.s13, T, 2 * fs, d,
                           1.f);
                for (int t = 0; t < T; t++) {
                    const float* x = m.ln2[l] + (size_t)t * d;
                    float* dx = m.dln + (size_t)t * d;
                    for (int j = 0; j < d; j++) dx[j] += m.dsz[t] * w.sg[j];
                    if (!fz.sg)
                        for (int j = 0; j < d; j++) g.sg[j] += m.dsz[t] * x[j];
                }
            }
        } else {
            linear_bwd(m.prec, m.dact, gw(fz.w2, g.w2), m.dres, m.act[l], w.w2, T, d, f);
            swiglu_bwd(m.h13[l], m.dact, m.dh13, T, f);
            linear_bwd(m.prec, m.dln, gw(fz.w13, g.w13), m.dh13, m.ln2[l], w.w13, T, 2 * f, d);
        }
        rmsnorm_backward(m.dres, gw(fz.ln2, g.ln2), m.dln, m.res_mid[l], w.ln2, m.rstd2[l], T, d);
        // attention block
        if (w.bo && !fz.bo) colsum_acc(g.bo, m.dres, T, d);
        linear_bwd(m.prec, m.datty, gw(fz.wo, g.wo), m.dres, m.atty[l], w.wo, T, d, H * hd);
        const float* q = m.qkv[l];
        attention_backward(m.dqkv, m.dqkv + H * hd, m.dqkv + (H + Hkv) * hd, m.datty, H * hd,
                           m.att[l], q, qkvd, q + H * hd, qkvd, q + (H + Hkv) * hd, qkvd, ad);
        rope_backward(m.dqkv, B, S, qkvd, H + Hkv, hd, 0, m.rope_cos.data(), m.rope_sin.data());
        LayerPtrs gn = g;  // frozen q/k norm weights: no dw
        if (fz.qn) gn.qn = nullptr;
        if (fz.kn) gn.kn = nullptr;
        m.qk_features_bwd(m.dqkv, T, w, &gn, m.q_in[l], m.k_in[l], m.rstd_q[l], m.rstd_k[l],
                          m.qkv_pre[l]);
        if (w.bqkv && !fz.bqkv) colsum_acc(g.bqkv, m.dqkv, T, qkvd);
        linear_bwd(m.prec, m.dln, gw(fz.wqkv, g.wqkv), m.dqkv, m.ln1[l], w.wqkv, T, qkvd, d);
        rmsnorm_backward(m.dres, gw(fz.ln1, g.ln1), m.dln, m.res[l], w.ln1, m.rstd1[l], T, d);
    }
    if (!m.frozen_wte) embedding_backward(G + m.off_wte, m.dres, m.tokens.data(), T, d);
}

const float* Model::logits() const {
    if (!impl_->have_forward) fail("model logits: no forward yet");
    return impl_->logits;
}

double Model::aux_loss() const {
    double s = 0;
    for (auto& l : impl_->moe)
        if (l) s += l->aux().weighted_total;
    return s;
}

std::vector<LayerRouting> Model::routing_stats() const {
    std::vector<LayerRouting> r;
    for (int l = 0; l < impl_->L; l++)
        if (impl_->moe[l]) r.push_back({l, impl_->moe[l]->stats(), impl_->moe[l]->aux()});
    return r;
}

void Model::set_precision(Precision gemm_prec, Precision router_prec) {
    impl_->prec = gemm_prec;
    for (auto& layer : impl_->moe)
        if (layer) layer->set_precision(gemm_prec, router_prec);
}
Precision Model::precision() const { return impl_->prec; }

MoeLayer* Model::moe_layer(int layer) {
    if (layer < 0 || layer >= impl_->L)
        fail("model: layer {} out of range [0, {})", layer, impl_->L);
    return impl_->moe[layer].get();
}

const float* Model::ffn_input(int layer) const {
    if (layer < 0 || layer >= impl_->L)
        fail("model: layer {} out of range [0, {})", layer, impl_->L);
    if (!impl_->have_forward) fail("model ffn_input: no forward yet");
    return impl_->ln2[layer];
}

void Model::update_balance_bias() {
    for (auto& l : impl_->moe)
        if (l) l->update_balance_bias();
}

void Model::cache_reset() { impl_->cache_pos = 0; }
int Model::cache_pos() const { return impl_->cache_pos; }

// Incremental forward for generation (batch 1): the n new tokens attend to the cached keys and
// values of every earlier position plus their own causal prefix; only the last token's logits
// are computed.
const float* Model::cache_feed(const int32_t* tokens, int n) {
    Impl& m = *impl_;
    for (int l = 0; l < m.L; l++)
        if (m.moe[l] && !m.moe[l]->causal())
            fail("model cache_feed: layer {} uses router '{}', which is not causal (it ranks the "
                 "whole batch), so it cannot generate token by token with a KV cache",
                 l, cfg_.moe.router);
    if (n < 1) fail("model cache_feed: n={} tokens, need at least 1", n);
    if (m.cache_pos + n > cfg_.block_size)
        fail("model cache_feed: {} cached + {} new tokens exceed block_size={}; call cache_reset",
             m.cache_pos, n, cfg_.block_size);
    m.alloc_cache(cfg_.block_size);
    const int d = m.d, H = m.H, Hkv = m.Hkv, hd = m.hd, f = m.f, qkvd = m.qkvd, pos = m.cache_pos;
    const int kvd = Hkv * hd;
    float* P = m.params.data();
    embedding_forward(m.c_x, tokens, P + m.off_wte, n, d, m.V);
    AttnDims ad{1, n, pos + n, H, Hkv, hd, pos};
    for (int l = 0; l < m.L; l++) {
        LayerPtrs w = m.layer(P, l);
        rmsnorm_forward(m.c_ln, m.c_rstd, m.c_x, w.ln1, n, d, cfg_.rms_eps);
        linear_fwd(m.prec, m.c_qkv, m.c_ln, w.wqkv, n, qkvd, d);
        if (w.bqkv) add_bias_rows(m.c_qkv, w.bqkv, n, qkvd);
        m.qk_features_fwd(m.c_qkv, n, w, m.c_q_in, m.c_k_in, m.c_rq, m.c_rk, nullptr,
                          m.c_qk_tmp);
        rope_forward(m.c_qkv, 1, n, qkvd, H + Hkv, hd, pos, m.rope_cos.data(), m.rope_sin.data());
        for (int i = 0; i < n; i++) {
            std::memcpy(m.kcache[l] + (size_t)(pos + i) * kvd, m.c_qkv + (size_t)i * qkvd + H * hd,
                        sizeof(float) * kvd);
            std::memcpy(m.vcache[l] + (size_t)(pos + i) * kvd,
                        m.c_qkv + (size_t)i * qkvd + (H + Hkv) * hd, sizeof(float) * kvd);
        }
        attention_forward(m.c_atty, H * hd, m.c_att, m.c_qkv, qkvd, m.kcache[l], kvd, m.vcache[l],
                          kvd, ad);
        gemm(m.prec, false, true, n, d, H * hd, 1.f, m.c_atty, H * hd, w.wo, H * hd, 1.f, m.c_x, d);
        if (w.bo) add_bias_rows(m.c_x, w.bo, n, d);
        rmsnorm_forward(m.c_ln, m.c_rstd, m.c_x, w.ln2, n, d, cfg_.rms_eps);
        if (m.moe[l]) {
            m.moe[l]->forward(ConstTensorView(m.c_ln, {n, d}), TensorView(m.c_tmp, {n, d}), false);
            if (w.s13)
                m.shared_fwd(m.c_ln, n, w, m.c_sh13, m.c_sact, m.c_sout, m.c_sglog, m.c_tmp);
            for (long i = 0; i < (long)n * d; i++) m.c_x[i] += m.c_tmp[i];
        } else {
            linear_fwd(m.prec, m.c_h13, m.c_ln, w.w13, n, 2 * f, d);
            swiglu_fwd(m.c_h13, m.c_act, n, f);
            gemm(m.prec, false, true, n, d, f, 1.f, m.c_act, f, w.w2, f, 1.f, m.c_x, d);
        }
    }
    const float* last = m.c_x + (size_t)(n - 1) * d;
    rmsnorm_forward(m.c_ln, m.c_rstd, last, P + m.off_normf, 1, d, cfg_.rms_eps);
    linear_fwd(m.prec, m.c_logits, m.c_ln, m.head_w(P), 1, m.V, d);
    m.cache_pos += n;
    return m.c_logits;
}

}  // namespace moe
