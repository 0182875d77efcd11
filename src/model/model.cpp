// The Transformer LM, written out llm.c style: parameters and gradients are one flat buffer each,
// carved by one table of {name, shape} (build_params); activations live in one arena sized per
// (B, S) shape; forward and backward are a list of kernel calls, backward replaying forward in
// reverse. See docs/model.md for the layout.
#include "moe/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

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
    return moe_every > 0 && (layer + 1) % moe_every == 0;
}

void ModelConfig::validate() const {
    if (vocab_size < 1) fail("model config: vocab_size={} must be >= 1", vocab_size);
    if (d_model < 1) fail("model config: hidden_size={} must be >= 1", d_model);
    if (n_layers < 1) fail("model config: num_hidden_layers={} must be >= 1", n_layers);
    if (n_heads < 1 || d_model % n_heads != 0)
        fail("model config: num_attention_heads={} does not divide hidden_size={}", n_heads,
             d_model);
    if ((d_model / n_heads) % 2 != 0)
        fail("model config: head dim hidden_size/num_attention_heads = {} must be even (RoPE)",
             d_model / n_heads);
    if (n_kv_heads < 1 || n_heads % n_kv_heads != 0)
        fail("model config: num_key_value_heads={} does not divide num_attention_heads={}",
             n_kv_heads, n_heads);
    if (block_size < 1) fail("model config: max_position_embeddings={} must be >= 1", block_size);
    if (!(rms_eps > 0.f)) fail("model config: rms_norm_eps={} must be > 0", rms_eps);
    if (!(rope_theta > 0.f)) fail("model config: rope_theta={} must be > 0", rope_theta);
    if (!(init_std >= 0.f)) fail("model config: init_std={} must be >= 0", init_std);
    if (moe_every < 0) fail("model config: moe_every={} must be >= 0", moe_every);
    bool any_dense = false, any_moe = false;
    for (int l = 0; l < n_layers; l++) (is_moe_layer(l) ? any_moe : any_dense) = true;
    if (any_dense && d_ff < 1)
        fail("model config: intermediate_size={} must be >= 1 for dense FFN layers", d_ff);
    if (any_moe) {
        MoeConfig m = moe;
        m.d_model = d_model;
        m.validate();
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
void linear_fwd(float* y, const float* x, const float* w, int M, int N, int K) {
    sgemm(false, true, M, N, K, 1.f, x, K, w, K, 0.f, y, N);
}
// dx [M,K] (= or += by beta) dy [M,N] W; dW [N,K] += dy^T x
void linear_bwd(float* dx, float* dw, const float* dy, const float* x, const float* w, int M, int N,
                int K, float beta_dx = 0.f) {
    sgemm(false, false, M, K, N, 1.f, dy, N, w, K, beta_dx, dx, K);
    sgemm(true, false, N, K, M, 1.f, dy, N, x, K, 1.f, dw, K);
}

std::string moe_param_name(int layer, const std::string& n) {
    // router.weight -> gate.weight, router.noise_weight -> gate.noise_weight,
    // experts.J.w1 -> experts.J.w1.weight (HF Mixtral naming)
    std::string s = n;
    if (s.rfind("router.", 0) == 0) s = "gate." + s.substr(7);
    const std::string suffix = "weight";
    if (s.size() < suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0)
        s += ".weight";
    return "model.layers." + std::to_string(layer) + ".block_sparse_moe." + s;
}

}  // namespace

struct LayerPtrs {  // one layer's tensors inside the flat parameter (or gradient) buffer
    float *ln1 = nullptr, *wqkv = nullptr, *wo = nullptr, *ln2 = nullptr;
    float *w13 = nullptr, *w2 = nullptr;  // dense FFN: [gate; up] [2f,d], down [d,f]
    size_t moe_offset = 0;
};

struct Model::Impl {
    int V, d, L, H, Hkv, hd, f, qkvd;
    std::vector<ParamSpec> specs;
    size_t n_params = 0;
    Buffer params, grads;
    std::vector<size_t> layer_off;  // offset of each layer's first tensor
    size_t off_wte = 0, off_normf = 0, off_head = 0;
    std::vector<std::unique_ptr<MoeLayer>> moe;  // nullptr for dense layers
    Buffer rope_cos, rope_sin;                   // [block, hd/2]

    // Activations of the last forward, carved from one arena per (B,S) (see docs/model.md).
    int B = 0, S = 0, T = 0;
    Buffer arena, grad_arena;
    size_t arena_T = 0, arena_S = 0;
    std::vector<float*> res, ln1, rstd1, qkv, att, atty, res_mid, ln2, rstd2, h13, act;
    float *lnf = nullptr, *rstdf = nullptr, *logits = nullptr, *lse = nullptr, *ffn_out = nullptr;
    float *dres = nullptr, *dln = nullptr, *dqkv = nullptr, *datty = nullptr, *dh13 = nullptr,
          *dact = nullptr, *dlogits = nullptr;
    std::vector<int32_t> tokens, targets;
    bool have_forward = false, have_targets = false;

    // KV cache for generation (batch 1).
    int cache_pos = 0;
    Buffer cache_arena;
    std::vector<float*> kcache, vcache;
    float *c_x, *c_ln, *c_rstd, *c_qkv, *c_att, *c_atty, *c_tmp, *c_h13, *c_act, *c_logits;

    LayerPtrs layer(float* base, int l) const {
        LayerPtrs p;
        size_t o = layer_off[l];
        p.ln1 = base + o;
        o += d;
        p.wqkv = base + o;
        o += (size_t)qkvd * d;
        p.wo = base + o;
        o += (size_t)d * H * hd;
        p.ln2 = base + o;
        o += d;
        if (moe[l]) {
            p.moe_offset = o;
        } else {
            p.w13 = base + o;
            o += (size_t)2 * f * d;
            p.w2 = base + o;
        }
        return p;
    }
    const float* head_w(const float* base) const { return base + off_head; }

    bool trainable = true;
    void alloc_arena(int B_, int S_);
    void alloc_cache(int block);
};

void Model::Impl::alloc_arena(int B_, int S_) {
    B = B_, S = S_, T = B_ * S_;
    if ((size_t)T == arena_T && (size_t)S == arena_S) return;
    const size_t Tz = T;
    const size_t per_layer = Tz * d /*res*/ + Tz * d /*ln1*/ + Tz /*rstd1*/ + Tz * qkvd +
                             (size_t)B * H * S * S + Tz * H * hd + Tz * d /*res_mid*/ +
                             Tz * d /*ln2*/ + Tz /*rstd2*/ + Tz * 2 * f + Tz * f;
    size_t total = per_layer * L + Tz * d /*res[L]*/ + Tz * d + Tz + Tz * V + Tz + Tz * d;
    arena.resize(total);
    float* p = arena.data();
    auto take = [&](size_t n) {
        float* r = p;
        p += n;
        return r;
    };
    res.assign(L + 1, nullptr);
    for (auto* v : {&ln1, &rstd1, &qkv, &att, &atty, &res_mid, &ln2, &rstd2, &h13, &act})
        v->assign(L, nullptr);
    for (int l = 0; l < L; l++) {
        res[l] = take(Tz * d);
        ln1[l] = take(Tz * d);
        rstd1[l] = take(Tz);
        qkv[l] = take(Tz * qkvd);
        att[l] = take((size_t)B * H * S * S);
        atty[l] = take(Tz * H * hd);
        res_mid[l] = take(Tz * d);
        ln2[l] = take(Tz * d);
        rstd2[l] = take(Tz);
        h13[l] = take(moe[l] ? 0 : Tz * 2 * f);
        act[l] = take(moe[l] ? 0 : Tz * f);
    }
    res[L] = take(Tz * d);
    lnf = take(Tz * d);
    rstdf = take(Tz);
    logits = take(Tz * V);
    lse = take(Tz);
    ffn_out = take(Tz * d);
    // gradients of activations: one set, reused by every layer
    size_t gtotal = Tz * d * 2 + Tz * qkvd + Tz * H * hd + Tz * 2 * f + Tz * f + Tz * V;
    if (trainable) {  // inference: no gradients of activations
        grad_arena.resize(gtotal);
        p = grad_arena.data();
        dres = take(Tz * d);
        dln = take(Tz * d);
        dqkv = take(Tz * qkvd);
        datty = take(Tz * H * hd);
        dh13 = take(Tz * 2 * f);
        dact = take(Tz * f);
        dlogits = take(Tz * V);
    }
    arena_T = T, arena_S = S;
}

void Model::Impl::alloc_cache(int block) {
    if (!kcache.empty()) return;
    const size_t n = block, kvd = (size_t)Hkv * hd;
    size_t total = 2 * (size_t)L * n * kvd + n * d * 3 + n + n * qkvd + (size_t)H * n * n +
                   n * H * hd + n * 2 * f + n * f + V;
    cache_arena.resize(total);
    float* p = cache_arena.data();
    auto take = [&](size_t k) {
        float* r = p;
        p += k;
        return r;
    };
    for (int l = 0; l < L; l++) {
        kcache.push_back(take(n * kvd));
        vcache.push_back(take(n * kvd));
    }
    c_x = take(n * d);
    c_ln = take(n * d);
    c_tmp = take(n * d);
    c_rstd = take(n);
    c_qkv = take(n * qkvd);
    c_att = take((size_t)H * n * n);
    c_atty = take(n * H * hd);
    c_h13 = take(n * 2 * f);
    c_act = take(n * f);
    c_logits = take(V);
}

// The one table every offset, name and shape derives from (MoE layers' tensors from
// MoeLayer::layout, under their HF names).
std::vector<ParamSpec> Model::layout(const ModelConfig& cfg_in, size_t* n_params) {
    ModelConfig cfg = cfg_in;
    cfg.validate();
    cfg.moe.d_model = cfg.d_model;
    const int H = cfg.n_heads, Hkv = cfg.n_kv_heads, hd = cfg.d_model / cfg.n_heads;
    bool any_dense = false;
    for (int l = 0; l < cfg.n_layers; l++) any_dense |= !cfg.is_moe_layer(l);
    const int64_t f = any_dense ? cfg.d_ff : 0;
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
        add(pre + "self_attn.o_proj.weight", {d, qd});
        add(pre + "post_attention_layernorm.weight", {d});
        if (cfg.is_moe_layer(l)) {
            size_t n = 0, base = off;
            for (const ParamSpec& p : MoeLayer::layout(cfg.moe, &n))
                specs.push_back({moe_param_name(l, p.name), p.shape, base + p.offset});
            off = base + n;
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

Model::Model(const ModelConfig& cfg, bool trainable)
    : cfg_(cfg), trainable_(trainable), impl_(new Impl) {
    cfg_.validate();
    impl_->trainable = trainable;
    cfg_.moe.d_model = cfg_.d_model;
    Impl& m = *impl_;
    m.V = cfg_.vocab_size, m.d = cfg_.d_model, m.L = cfg_.n_layers, m.H = cfg_.n_heads;
    m.Hkv = cfg_.n_kv_heads, m.hd = m.d / m.H, m.f = cfg_.d_ff;
    m.qkvd = (m.H + 2 * m.Hkv) * m.hd;
    // Dense-only sizes: a model without dense layers needs no FFN activations of width f.
    bool any_dense = false;
    for (int l = 0; l < m.L; l++) any_dense |= !cfg_.is_moe_layer(l);
    if (!any_dense) m.f = 0;

    m.specs = layout(cfg_, &m.n_params);
    auto offset_of = [&](const std::string& name) {
        for (auto& s : m.specs)
            if (s.name == name) return s.offset;
        MOE_CHECK(false, "no tensor {} in the layout", name);
    };
    m.off_wte = offset_of("model.embed_tokens.weight");
    m.moe.resize(m.L);
    for (int l = 0; l < m.L; l++) {
        m.layer_off.push_back(
            offset_of("model.layers." + std::to_string(l) + ".input_layernorm.weight"));
        if (cfg_.is_moe_layer(l)) {
            // Each layer its own noise stream: the same seed everywhere would give every layer
            // the same router noise (noisy-topk, jitter, GShard's u, gate dropout).
            MoeConfig lc = cfg_.moe;
            lc.seed = cfg_.moe.seed + 0x9e3779b97f4a7c15ULL * (uint64_t)(l + 1);
            m.moe[l] = std::make_unique<MoeLayer>(lc, /*own_buffers=*/false);
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
bool Model::is_no_decay(const ParamSpec& p) const { return p.shape.rank() <= 1; }

static bool ends_with(const std::string& s, const std::string& e) {
    return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

// RMSNorm weights 1; every matrix N(0, init_std); projections that write into the residual
// stream (o_proj, down_proj, experts' w2) scaled by 1/sqrt(2L), as GPT-2 does, so the residual
// stream's variance does not grow with depth. Drawn serially in table order from one Rng.
void Model::init_params(uint64_t seed) {
    Rng rng(seed);
    float* P = impl_->params.data();
    const float res_std = cfg_.init_std / std::sqrt(2.f * cfg_.n_layers);
    for (const ParamSpec& p : impl_->specs) {
        float* w = P + p.offset;
        int64_t n = p.shape.numel();
        if (ends_with(p.name, "norm.weight")) {
            for (int64_t i = 0; i < n; i++) w[i] = 1.f;
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
        linear_fwd(m.qkv[l], m.ln1[l], w.wqkv, T, qkvd, d);
        // q heads at columns [0, H hd), k heads right after: one pass rotates both.
        rope_forward(m.qkv[l], B, S, qkvd, H + Hkv, hd, 0, m.rope_cos.data(), m.rope_sin.data());
        const float* q = m.qkv[l];
        attention_forward(m.atty[l], H * hd, m.att[l], q, qkvd, q + H * hd, qkvd,
                          q + (H + Hkv) * hd, qkvd, ad);
        std::memcpy(m.res_mid[l], m.res[l], sizeof(float) * T * d);
        sgemm(false, true, T, d, H * hd, 1.f, m.atty[l], H * hd, w.wo, H * hd, 1.f, m.res_mid[l], d);
        // FFN block
        rmsnorm_forward(m.ln2[l], m.rstd2[l], m.res_mid[l], w.ln2, T, d, cfg_.rms_eps);
        std::memcpy(m.res[l + 1], m.res_mid[l], sizeof(float) * T * d);
        if (m.moe[l]) {
            m.moe[l]->forward(ConstTensorView(m.ln2[l], {T, d}), TensorView(m.ffn_out, {T, d}),
                              training);
            float* r = m.res[l + 1];
            for (long i = 0; i < (long)T * d; i++) r[i] += m.ffn_out[i];
        } else {
            linear_fwd(m.h13[l], m.ln2[l], w.w13, T, 2 * f, d);
            swiglu_fwd(m.h13[l], m.act[l], T, f);
            sgemm(false, true, T, d, f, 1.f, m.act[l], f, w.w2, f, 1.f, m.res[l + 1], d);
        }
    }
    rmsnorm_forward(m.lnf, m.rstdf, m.res[m.L], P + m.off_normf, T, d, cfg_.rms_eps);
    linear_fwd(m.logits, m.lnf, m.head_w(P), T, m.V, d);
    m.have_forward = true;
    if (!targets) return 0.f;
    return (float)cross_entropy_forward(m.lse, m.logits, targets, T, m.V);
}

void Model::backward() {
    Impl& m = *impl_;
    if (!m.have_forward || !m.have_targets)
        fail("model backward: needs a forward with targets first");
    MOE_CHECK(trainable_, "model backward on an inference-only model (built without gradients)");
    const int B = m.B, S = m.S, T = m.T, d = m.d, H = m.H, Hkv = m.Hkv, hd = m.hd, f = m.f,
              qkvd = m.qkvd, V = m.V;
    float* P = m.params.data();
    float* G = m.grads.data();
    // LM head and final norm
    cross_entropy_backward(m.dlogits, m.logits, m.lse, m.targets.data(), T, V, 1.f);
    linear_bwd(m.dln, G + m.off_head, m.dlogits, m.lnf, m.head_w(P), T, V, d);
    std::memset(m.dres, 0, sizeof(float) * T * d);
    rmsnorm_backward(m.dres, G + m.off_normf, m.dln, m.res[m.L], P + m.off_normf, m.rstdf, T, d);
    AttnDims ad{B, S, S, H, Hkv, hd, 0};
    for (int l = m.L - 1; l >= 0; l--) {
        LayerPtrs w = m.layer(P, l), g = m.layer(G, l);
        // FFN block: d(ffn out) = dres (the residual passes dres through unchanged)
        if (m.moe[l]) {
            m.moe[l]->backward(ConstTensorView(m.dres, {T, d}), TensorView(m.dln, {T, d}));
        } else {
            linear_bwd(m.dact, g.w2, m.dres, m.act[l], w.w2, T, d, f);
            swiglu_bwd(m.h13[l], m.dact, m.dh13, T, f);
            linear_bwd(m.dln, g.w13, m.dh13, m.ln2[l], w.w13, T, 2 * f, d);
        }
        rmsnorm_backward(m.dres, g.ln2, m.dln, m.res_mid[l], w.ln2, m.rstd2[l], T, d);
        // attention block
        linear_bwd(m.datty, g.wo, m.dres, m.atty[l], w.wo, T, d, H * hd);
        const float* q = m.qkv[l];
        attention_backward(m.dqkv, m.dqkv + H * hd, m.dqkv + (H + Hkv) * hd, m.datty, H * hd,
                           m.att[l], q, qkvd, q + H * hd, qkvd, q + (H + Hkv) * hd, qkvd, ad);
        rope_backward(m.dqkv, B, S, qkvd, H + Hkv, hd, 0, m.rope_cos.data(), m.rope_sin.data());
        linear_bwd(m.dln, g.wqkv, m.dqkv, m.ln1[l], w.wqkv, T, qkvd, d);
        rmsnorm_backward(m.dres, g.ln1, m.dln, m.res[l], w.ln1, m.rstd1[l], T, d);
    }
    embedding_backward(G + m.off_wte, m.dres, m.tokens.data(), T, d);
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
        linear_fwd(m.c_qkv, m.c_ln, w.wqkv, n, qkvd, d);
        rope_forward(m.c_qkv, 1, n, qkvd, H + Hkv, hd, pos, m.rope_cos.data(), m.rope_sin.data());
        for (int i = 0; i < n; i++) {
            std::memcpy(m.kcache[l] + (size_t)(pos + i) * kvd, m.c_qkv + (size_t)i * qkvd + H * hd,
                        sizeof(float) * kvd);
            std::memcpy(m.vcache[l] + (size_t)(pos + i) * kvd,
                        m.c_qkv + (size_t)i * qkvd + (H + Hkv) * hd, sizeof(float) * kvd);
        }
        attention_forward(m.c_atty, H * hd, m.c_att, m.c_qkv, qkvd, m.kcache[l], kvd, m.vcache[l],
                          kvd, ad);
        sgemm(false, true, n, d, H * hd, 1.f, m.c_atty, H * hd, w.wo, H * hd, 1.f, m.c_x, d);
        rmsnorm_forward(m.c_ln, m.c_rstd, m.c_x, w.ln2, n, d, cfg_.rms_eps);
        if (m.moe[l]) {
            m.moe[l]->forward(ConstTensorView(m.c_ln, {n, d}), TensorView(m.c_tmp, {n, d}), false);
            for (long i = 0; i < (long)n * d; i++) m.c_x[i] += m.c_tmp[i];
        } else {
            linear_fwd(m.c_h13, m.c_ln, w.w13, n, 2 * f, d);
            swiglu_fwd(m.c_h13, m.c_act, n, f);
            sgemm(false, true, n, d, f, 1.f, m.c_act, f, w.w2, f, 1.f, m.c_x, d);
        }
    }
    const float* last = m.c_x + (size_t)(n - 1) * d;
    rmsnorm_forward(m.c_ln, m.c_rstd, last, P + m.off_normf, 1, d, cfg_.rms_eps);
    linear_fwd(m.c_logits, m.c_ln, m.head_w(P), 1, m.V, d);
    m.cache_pos += n;
    return m.c_logits;
}

}  // namespace moe
