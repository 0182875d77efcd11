// The MoE layer (DESIGN.md §4): forward reads as the section does — route, capacity, permute,
// experts, combine, shared experts, statistics — and backward replays it in reverse.
#include "moe/moe_layer.h"

#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

#include "kernels/gemm.h"
#include "moe/capacity.h"
#include "moe/experts.h"
#include "moe/permute.h"
#include "moe/router.h"
#include "moe/runtime.h"

namespace moe {

// ---------------------------------------------------------------------------------------------
// Config

Activation activation_from_string(const std::string& s) {
    if (s == "swiglu") return Activation::swiglu;
    if (s == "gelu") return Activation::gelu;
    if (s == "relu") return Activation::relu;
    fail("unknown activation '{}' (known: swiglu, gelu, relu)", s);
}

const char* activation_name(Activation a) {
    switch (a) {
        case Activation::swiglu: return "swiglu";
        case Activation::gelu: return "gelu";
        case Activation::relu: return "relu";
    }
    return "?";
}

void MoeConfig::validate() const {
    auto names = router_names();
    if (std::find(names.begin(), names.end(), router) == names.end()) {
        std::string known;
        for (auto& n : names) known += (known.empty() ? "" : ", ") + n;
        fail("MoeConfig: unknown router '{}' (known: {})", router, known);
    }
    if (d_model <= 0) fail("MoeConfig: d_model={} must be > 0", d_model);
    if (d_ff <= 0) fail("MoeConfig: d_ff={} must be > 0", d_ff);
    if (n_experts <= 0) fail("MoeConfig: n_experts={} must be > 0", n_experts);
    if (top_k <= 0) fail("MoeConfig: top_k={} must be >= 1", top_k);
    if (top_k > n_experts)
        fail("MoeConfig: top_k={} > n_experts={} (a token cannot pick more experts than exist)",
             top_k, n_experts);
    const bool expert_choice = router == "expert-choice";
    if (std::isnan(capacity_factor) || (!dropless && !expert_choice && capacity_factor <= 0))
        fail("MoeConfig: capacity_factor={} must be > 0 (or set dropless)", capacity_factor);
    if (priority != "token" && priority != "weight")
        fail("MoeConfig: priority='{}' (known: token, weight)", priority);
    if (!(temperature > 0)) fail("MoeConfig: temperature={} must be > 0", temperature);
    if (score != "softmax" && score != "sigmoid")
        fail("MoeConfig: score='{}' (known: softmax, sigmoid)", score);
    if (!(jitter >= 0 && jitter < 1)) fail("MoeConfig: jitter={} must be in [0, 1)", jitter);
    if (!(gate_dropout >= 0 && gate_dropout < 1))
        fail("MoeConfig: gate_dropout={} must be in [0, 1)", gate_dropout);
    if (!(threshold > 0 && threshold <= 1))
        fail("MoeConfig: threshold={} must be in (0, 1] (top-p cumulative probability)",
             threshold);
    if (n_shared_experts < 0) fail("MoeConfig: n_shared_experts={} must be >= 0", n_shared_experts);
    if (d_ff_shared < 0) fail("MoeConfig: d_ff_shared={} must be >= 0", d_ff_shared);
    if (router == "hierarchical") {
        if (n_groups <= 0 || n_experts % n_groups != 0)
            fail("MoeConfig: hierarchical router needs n_groups > 0 dividing n_experts={} (got {})",
                 n_experts, n_groups);
        if (topk_groups <= 0 || topk_groups > n_groups)
            fail("MoeConfig: topk_groups={} must be in [1, n_groups={}]", topk_groups, n_groups);
        if (top_k % topk_groups != 0 || top_k / topk_groups > n_experts / n_groups)
            fail("MoeConfig: top_k={} must be topk_groups={} times at most {} experts per group",
                 top_k, topk_groups, n_experts / n_groups);
    }
}

// ---------------------------------------------------------------------------------------------
// Workspaces and saved activations: Buffers that grow once per shape and are reused.

struct MoeLayer::Impl {
    std::unique_ptr<Router> router;
    int ld = 0;  // router logit columns (all router matrices)
    Rng rng;

    int T = 0;
    bool training = false;
    bool have_forward = false;
    bool jittered = false;
    ExpertThreads how = ExpertThreads::blas;
    ExpertThreads want = ExpertThreads::automatic;
    // GEMM operand precision of the experts and of the router (set_precision).
    Precision prec = Precision::fp32, router_prec = Precision::fp32;

    Buffer x;          // [T,d] copy of the input (shared experts and router read it in backward)
    Buffer xr;         // [T,d] router input after jitter
    Buffer jit_u, normal, uniform, gshard_u;  // drawn noise
    const float* jit_ptr = nullptr;           // the jitter u actually used
    RouterInput rin;
    Buffer logits, dlogits, dxr;
    Routing routing;
    std::vector<uint8_t> kept;
    std::vector<int32_t> order;
    Dispatch disp;
    Buffer xp, h, a, out;  // permuted rows
    Buffer dout, dxp, da, dh, dweight;
    std::vector<Buffer> sh_h, sh_a;  // shared experts, [T, hf_s] and [T, f_s] each

    // Expert parallelism (set_parallel; src/moe/moe_layer_parallel.cpp).
    ParallelGroups par;
    bool par_on = false, mean_grads = false;
    const RouterNoise* noise = nullptr;  // this forward's, global batch
    int64_t tok_lo = 0, Tg = 0;          // this rank's first global token, global batch size
    std::vector<int64_t> tok_start;      // [W+1] first global token of each world rank
    Buffer logits_loc;                   // [T, ld] this rank's logits
    Dispatch mine;                       // this rank's kept rows, in send order (expert-major)
    std::vector<int64_t> send_rows, recv_rows;  // per expert-group rank
    std::vector<int32_t> recv_pos;       // expert-major local row -> position in the receive buffer
    std::vector<int32_t> local_off;      // [E/P + 1] owned experts' rows, expert-major
    Buffer sbuf, rbuf, rbuf2;            // rows in send / receive order (rbuf2: going home)
    bool replicated = false;             // inference: every rank has the same tokens
    int overlap = 1;                     // all-to-all chunks (set_overlap)
    std::vector<int> chunk_j;            // [chunks + 1] local expert boundaries
    std::vector<int64_t> csend_n, csend_at, crecv_n, crecv_at;  // [chunk][peer] rows
    Buffer ret;                          // [n_send, d] expert outputs back, in send order
    Buffer xe, he, ae, oe;               // owned experts' rows, expert-major
    Buffer doe, dxe, dae, dhe, dxr_loc, dl_loc;
    MoeCommStats comm;
};

static void check_shard(const MoeConfig& cfg, ExpertShard shard) {
    if (shard.parts < 1 || shard.index < 0 || shard.index >= shard.parts)
        fail("MoeLayer: expert shard {} of {} is not a part", shard.index, shard.parts);
    if (shard.parts > cfg.n_experts)
        fail(
            "--expert-parallel {}: more expert-parallel ranks than experts (n_experts={}); use at "
            "most {} ranks per expert group",
            shard.parts, cfg.n_experts, cfg.n_experts);
    if (cfg.n_experts % shard.parts != 0)
        fail("--expert-parallel {}: n_experts={} is not divisible by it; choose a divisor of {}",
             shard.parts, cfg.n_experts, cfg.n_experts);
}

std::vector<ParamSpec> MoeLayer::layout(const MoeConfig& cfg_in, size_t* n_params,
                                        ExpertShard shard) {
    MoeConfig cfg = cfg_in;
    cfg.validate();
    check_shard(cfg, shard);
    const int e_lo = shard.index * (cfg.n_experts / shard.parts),
              e_hi = e_lo + cfg.n_experts / shard.parts;
    if (cfg.d_ff_shared == 0) cfg.d_ff_shared = cfg.d_ff;
    const int64_t d = cfg.d_model, f = cfg.d_ff, fs = cfg.d_ff_shared;
    const bool glu = cfg.activation == Activation::swiglu;
    std::vector<ParamSpec> specs;
    size_t off = 0;
    auto add = [&](const std::string& name, Shape s) {
        specs.push_back({name, s, off});
        off += (size_t)s.numel();
    };
    for (auto& m : make_router(cfg)->logit_matrices(cfg)) add(m.first, {m.second, d});
    for (int e = e_lo; e < e_hi; e++) {
        std::string p = "experts." + std::to_string(e) + ".";
        add(p + "w1", {f, d});
        if (glu) add(p + "w3", {f, d});
        add(p + "w2", {d, f});
    }
    for (int s = 0; s < cfg.n_shared_experts; s++) {
        std::string p = "shared_experts." + std::to_string(s) + ".";
        add(p + "w1", {fs, d});
        if (glu) add(p + "w3", {fs, d});
        add(p + "w2", {d, fs});
    }
    if (n_params) *n_params = off;
    return specs;
}

MoeLayer::MoeLayer(const MoeConfig& cfg) : MoeLayer(cfg, /*own_buffers=*/true) {}

MoeLayer::MoeLayer(const MoeConfig& cfg, bool own_buffers, ExpertShard shard)
    : cfg_(cfg), shard_(shard), impl_(new Impl) {
    cfg_.validate();
    if (cfg_.d_ff_shared == 0) cfg_.d_ff_shared = cfg_.d_ff;
    impl_->router = make_router(cfg_);
    impl_->rng.seed_with(cfg_.seed);
    impl_->want = expert_threads_from_env();
    specs_ = layout(cfg_, &n_params_, shard_);
    for (auto& m : impl_->router->logit_matrices(cfg_)) impl_->ld += m.second;
    balance_bias_.assign(cfg_.n_experts, 0.f);
    if (!own_buffers) return;
    own_params_.resize(n_params_);
    own_grads_.resize(n_params_);
    params_ = own_params_.data();
    grads_ = own_grads_.data();
    init_params(cfg_.seed);
    zero_grad();
}

MoeLayer::~MoeLayer() = default;

const ParamSpec& MoeLayer::param(const std::string& name) const {
    for (auto& s : specs_)
        if (s.name == name) return s;
    fail("MoeLayer: no parameter named '{}' (router '{}', {} experts, {} shared)", name,
         cfg_.router, cfg_.n_experts, cfg_.n_shared_experts);
}

void MoeLayer::bind(float* params, float* grads) {
    MOE_CHECK(params, "bind needs a parameter buffer");
    params_ = params;
    grads_ = grads;
}

void MoeLayer::set_frozen(const std::vector<uint8_t>& frozen) {
    if (frozen.size() != specs_.size())
        fail("MoeLayer::set_frozen: {} flags for {} parameter tensors", frozen.size(), specs_.size());
    auto is = [&](const std::string& name) {
        for (size_t i = 0; i < specs_.size(); i++)
            if (specs_[i].name == name) return frozen[i] != 0;
        return true;  // absent (w3 without a GLU): does not stop freezing its group
    };
    router_frozen_ = true;
    for (size_t i = 0; i < specs_.size(); i++)
        if (specs_[i].name.rfind("experts.", 0) != 0 &&
            specs_[i].name.rfind("shared_experts.", 0) != 0)
            router_frozen_ = router_frozen_ && frozen[i];
    auto fill = [&](const std::string& kind, int n, std::vector<uint8_t>& f13,
                    std::vector<uint8_t>& f2) {
        f13.assign(n, 0);
        f2.assign(n, 0);
        for (int e = 0; e < n; e++) {
            std::string p = kind + std::to_string(e) + ".";
            f13[e] = is(p + "w1") && is(p + "w3");
            f2[e] = is(p + "w2");
        }
    };
    fill("experts.", cfg_.n_experts, frozen13_, frozen2_);
    fill("shared_experts.", cfg_.n_shared_experts, shared13_, shared2_);
}

void MoeLayer::zero_grad() {
    if (grads_) std::memset(grads_, 0, sizeof(float) * n_params_);
}

static void ensure(Buffer& b, int64_t n) {
    if ((int64_t)b.size() < n) b.resize((size_t)n);
}

// Draws in the order of the full table, so a sharded layer holds exactly the values the
// unsharded one has for its experts (the others' draws go to a scratch buffer).
void MoeLayer::init_params(uint64_t seed, float router_std) {
    Rng r(seed);
    size_t held = 0;
    Buffer scratch;
    for (auto& s : layout(cfg_, nullptr)) {
        float* p;
        if (held < specs_.size() && specs_[held].name == s.name) {
            p = params_ + specs_[held++].offset;
        } else {
            ensure(scratch, s.shape.numel());
            p = scratch.data();
        }
        if (s.name.rfind("router.", 0) == 0) {
            r.fill_normal(p, s.shape.numel(), 0.f, router_std);
        } else {
            float bound = 1.f / std::sqrt((float)s.shape[1]);  // fan_in: columns (y = x W^T)
            r.fill_uniform(p, s.shape.numel(), -bound, bound);
        }
    }
    std::fill(balance_bias_.begin(), balance_bias_.end(), 0.f);
}

bool MoeLayer::causal() const { return impl_->router->causal(); }

// ---------------------------------------------------------------------------------------------
// Forward, one short step per function.

// First token (and column) holding NaN or Inf. Integer test on the exponent bits, so the scan
// vectorises; only a row that trips it is looked at closely.
static void check_finite(const float* x, int T, int d) {
    for (int t = 0; t < T; t++) {
        const uint32_t* u = reinterpret_cast<const uint32_t*>(x + (int64_t)t * d);
        uint32_t bad = 0;
        for (int j = 0; j < d; j++) bad |= (u[j] & 0x7f800000u) == 0x7f800000u;
        if (bad) {
            for (int j = 0; j < d; j++) {
                float v = x[(int64_t)t * d + j];
                if (!std::isfinite(v))
                    fail("MoeLayer::forward: x[{}, {}] = {} (non-finite input at token {})", t, j,
                         v, t);
            }
        }
    }
}

using Impl = MoeLayer::Impl;

// Step 1-2: jitter, logits, noise, router. Noise is drawn from the layer's Rng in this fixed
// order, each only when the router needs it in training and the caller did not pass it:
// jitter u [T,d], normal [T,E], uniform [T,E], gshard_u [T] (docs/layer.md).
// logits [T, ld] = x' W_router^T. A bf16 router (only for the stability experiment,
// docs/precision.md) multiplies bf16 operands and rounds the logits to bf16, as a bf16 linear
// layer hands them to the softmax; the default keeps the router in fp32 (ST-MoE).
static void router_logits(const Impl& m, int T, int d, const float* xr, const float* params,
                          float* logits) {
    gemm(m.router_prec, false, true, T, m.ld, d, 1.f, xr, d, params, d, 0.f, logits, m.ld);
    if (m.router_prec == Precision::bf16) round_bf16(logits, logits, (size_t)T * m.ld);
}

static void route(Impl& m, const MoeConfig& cfg, const float* params, float* bias,
                  const RouterNoise* noise, AuxLosses& aux) {
    const int T = m.T, d = cfg.d_model, E = cfg.n_experts;
    Router& router = *m.router;
    const float* xr = m.x.data();
    m.jittered = m.training && cfg.jitter > 0.f;
    if (m.jittered) {
        // Kept in the layer's own buffer even when given: backward needs it after the caller's
        // buffer may be gone.
        ensure(m.jit_u, (int64_t)T * d);
        if (noise && noise->jitter)
            std::memcpy(m.jit_u.data(), noise->jitter, sizeof(float) * T * d);
        else
            m.rng.fill_uniform(m.jit_u.data(), (int64_t)T * d);
        const float* u = m.jit_u.data();
        m.jit_ptr = u;
        ensure(m.xr, (int64_t)T * d);
        const float j = cfg.jitter, *x = m.x.data();
        float* out = m.xr.data();
        for (int64_t i = 0; i < (int64_t)T * d; i++) out[i] = x[i] * (1.f - j + 2.f * j * u[i]);
        xr = out;
    }
    // One GEMM for every router matrix: they are contiguous in the parameter buffer.
    ensure(m.logits, (int64_t)T * m.ld);
    router_logits(m, T, d, xr, params, m.logits.data());

    RouterInput& in = m.rin;
    in = RouterInput{};
    in.T = T;
    in.d = d;
    in.E = E;
    in.cfg = &cfg;
    in.logits = m.logits.data();
    in.ld = m.ld;
    in.training = m.training;
    in.bias = cfg.bias_update_rate > 0.f ? bias : nullptr;
    auto draw = [&](bool need, const float* given, Buffer& buf, int64_t n, bool normal) {
        if (!m.training || !need) return (const float*)nullptr;
        ensure(buf, n);
        if (given)  // copied: the router may read it again in backward
            std::memcpy(buf.data(), given, sizeof(float) * n);
        else if (normal)
            m.rng.fill_normal(buf.data(), n);
        else
            m.rng.fill_uniform(buf.data(), n);
        return (const float*)buf.data();
    };
    in.normal = draw(router.needs_normal(cfg), noise ? noise->normal : nullptr, m.normal,
                     (int64_t)T * E, true);
    in.uniform = draw(router.needs_uniform(cfg), noise ? noise->uniform : nullptr, m.uniform,
                      (int64_t)T * E, false);
    in.gshard_u = draw(router.needs_gshard_u(cfg), noise ? noise->gshard_u : nullptr, m.gshard_u,
                       T, false);
    aux = AuxLosses{};
    router.forward(in, m.routing, aux);
    MOE_CHECK(m.routing.T == T && m.routing.E == E, "router returned T={} E={}", m.routing.T,
              m.routing.E);
}

// Steps 3-4: capacity (token choice only; expert choice comes limited), counting sort, gather.
static void dispatch(Impl& m, const MoeConfig& cfg) {
    const Routing& r = m.routing;
    const int d = cfg.d_model;
    if (r.k > 0) {
        int64_t C = expert_capacity(cfg.capacity_factor, m.T, r.k, r.E, cfg.dropless);
        apply_capacity(r, C, cfg.priority == "weight", m.kept, m.order);
    } else {
        m.kept.assign(r.n(), 1);
    }
    build_dispatch(r, m.kept.data(), m.disp);
    // Workspaces sized for every slot the routing could fill, so a later step with another
    // load balance reuses them instead of faulting in fresh pages.
    const int64_t rows = std::max<int64_t>(r.n(), 1);
    const int hf = ffn_hidden(cfg.activation, cfg.d_ff);
    ensure(m.xp, rows * d);
    ensure(m.h, rows * hf);
    ensure(m.a, rows * cfg.d_ff);
    ensure(m.out, rows * d);
    gather_rows(m.disp, m.x.data(), d, m.xp.data());
}

static GroupedFfn grouped(const MoeLayer& L, const Impl& m, const float* params, float* grads) {
    const MoeConfig& cfg = L.config();
    GroupedFfn g;
    g.act = cfg.activation;
    g.E = cfg.n_experts;
    g.d = cfg.d_model;
    g.f = cfg.d_ff;
    g.offsets = m.disp.offsets.data();
    size_t base = L.param("experts.0.w1").offset;
    g.weights = params + base;
    g.grads = grads ? grads + base : nullptr;  // inference layers have no gradients
    g.stride = ffn_weight_floats(cfg.activation, cfg.d_model, cfg.d_ff);
    g.prec = m.prec;
    return g;
}

// Steps 5-6: experts on their rows, weighted combine into y, shared experts added on top.
void MoeLayer::run_experts_(float* y) {
    Impl& m = *impl_;
    const int d = cfg_.d_model;
    GroupedFfn g = grouped(*this, m, params_, grads_);
    m.how = choose_expert_threads(m.want, g.E, g.offsets, d, g.f, get_threads());
    experts_forward(g, m.xp.data(), m.h.data(), m.a.data(), m.out.data(), m.how);
    combine_forward(m.disp, m.routing.weight.data(), m.out.data(), d, y);
    expert_flops_fwd_ = 2.0 * m.disp.n_rows * (double)ffn_weight_floats(cfg_.activation, d, g.f);
    run_shared_(y);
}

// Shared experts on every token of this rank, added to y.
void MoeLayer::run_shared_(float* y) {
    Impl& m = *impl_;
    const int T = m.T, d = cfg_.d_model;
    const int S = cfg_.n_shared_experts, fs = cfg_.d_ff_shared;
    const int hfs = ffn_hidden(cfg_.activation, fs);
    m.sh_h.resize(S);
    m.sh_a.resize(S);
    for (int s = 0; s < S; s++) {
        ensure(m.sh_h[s], (int64_t)T * hfs);
        ensure(m.sh_a[s], (int64_t)T * fs);
        const float* w = params_ + param("shared_experts." + std::to_string(s) + ".w1").offset;
        ffn_forward(cfg_.activation, T, d, fs, m.x.data(), w, w + (int64_t)hfs * d,
                    m.sh_h[s].data(), m.sh_a[s].data(), y, 1.f, true, m.prec);
        expert_flops_fwd_ += 2.0 * T * (double)ffn_weight_floats(cfg_.activation, d, fs);
    }
}

// Statistics of DESIGN.md §4, from the routing, the kept mask and the router's scores.
void MoeLayer::compute_stats_() {
    const Impl& m = *impl_;
    const Routing& r = m.routing;
    const int E = cfg_.n_experts, T = r.T;  // the global batch under expert parallelism
    MoeStats& st = stats_;
    st.tokens_per_expert.assign(E, 0);
    for (int e = 0; e < E; e++) st.tokens_per_expert[e] = m.disp.offsets[e + 1] - m.disp.offsets[e];
    st.routed = 0;
    for (int a = 0; a < r.n(); a++) st.routed += r.expert[a] >= 0;
    st.dropped = st.routed - m.disp.n_rows;
    double mean = (double)m.disp.n_rows / E, var = 0;
    for (int e = 0; e < E; e++) var += (st.tokens_per_expert[e] - mean) * (st.tokens_per_expert[e] - mean);
    var /= E;
    st.load_cv = mean > 0 ? std::sqrt(var) / mean : 0.0;
    const std::vector<float>& p = m.router->probs();
    double ent = 0;
    if ((int64_t)p.size() >= (int64_t)T * E) {
        for (int64_t i = 0; i < (int64_t)T * E; i++)
            if (p[i] > 0.f) ent -= (double)p[i] * std::log((double)p[i]);
        ent /= T;
    }
    st.router_entropy = ent;
    std::vector<float> top(T, 0.f);
    std::vector<uint8_t> any(T, 0);
    for (int a = 0; a < r.n(); a++) {
        if (r.expert[a] < 0) continue;
        int t = r.token[a];
        if (!any[t] || r.weight[a] > top[t]) top[t] = r.weight[a];
        any[t] = 1;
    }
    double s = 0;
    for (int t = 0; t < T; t++) s += top[t];
    st.mean_top1_weight = s / T;

    // Experts per token: kept slots per token, then their histogram and mean.
    std::vector<int> used(T, 0);
    for (int a = 0; a < r.n(); a++)
        if (r.expert[a] >= 0 && m.kept[a]) used[r.token[a]]++;
    const int max_used = r.k > 0 ? r.k : E;
    st.experts_per_token.assign(max_used + 1, 0);
    int64_t n_used = 0;
    for (int t = 0; t < T; t++) {
        MOE_CHECK(used[t] <= max_used, "token {} used {} experts > {}", t, used[t], max_used);
        st.experts_per_token[used[t]]++;
        n_used += used[t];
    }
    st.mean_experts_per_token = (double)n_used / T;
}

void MoeLayer::forward(ConstTensorView x, TensorView y, bool training, const RouterNoise* noise) {
    Impl& m = *impl_;
    const int d = cfg_.d_model;
    if (x.shape.rank() != 2 || x.shape[1] != d || x.shape[0] <= 0)
        fail("MoeLayer::forward: x: expected shape [T, {}] with T >= 1, got {}", d, x.shape.str());
    const int T = (int)x.shape[0];
    check_shape("MoeLayer::forward: y", y.shape, Shape{T, d});
    MOE_CHECK(x.data && y.data, "null buffer");
    check_finite(x.data, T, d);
    m.T = T;
    m.training = training;
    m.have_forward = false;
    // Keep x: backward needs it (shared experts, router) and callers may reuse their buffer.
    ensure(m.x, (int64_t)T * d);
    std::memcpy(m.x.data(), x.data, sizeof(float) * T * d);

    if (m.par_on && m.replicated) {
        route(m, cfg_, params_, balance_bias_.data(), noise, aux_);
        dispatch(m, cfg_);
        run_experts_replicated_(y.data);
    } else if (m.par_on) {
        m.noise = noise;
        forward_parallel_(y.data);
    } else {
        if (shard_.sharded())
            fail(
                "MoeLayer::forward: the layer holds experts part {} of {} only; call "
                "set_parallel with its expert group first",
                shard_.index, shard_.parts);
        route(m, cfg_, params_, balance_bias_.data(), noise, aux_);
        dispatch(m, cfg_);
        run_experts_(y.data);
    }
    compute_stats_();
    m.have_forward = true;
}

// ---------------------------------------------------------------------------------------------
// Backward: combine -> experts -> scatter into dx -> router -> router input -> shared experts.

void MoeLayer::backward(ConstTensorView dy, TensorView dx) {
    Impl& m = *impl_;
    if (!m.have_forward) fail("MoeLayer::backward: no forward to differentiate (call forward first)");
    MOE_CHECK(grads_ != nullptr, "MoeLayer::backward on an inference-only layer (no gradients)");
    const int T = m.T, d = cfg_.d_model;
    check_shape("MoeLayer::backward: dy", dy.shape, Shape{T, d});
    check_shape("MoeLayer::backward: dx", dx.shape, Shape{T, d});
    MOE_CHECK(dy.data && dx.data, "null buffer");
    if (m.par_on && m.replicated)
        fail(
            "MoeLayer::backward: a layer with replicated tokens (set_parallel for inference) "
            "has no backward; train with the tokens split over the ranks");
    if (m.par_on) return backward_parallel_(dy.data, dx.data);
    const Routing& r = m.routing;
    const int64_t rows = std::max<int64_t>(r.n(), 1);
    const int hf = ffn_hidden(cfg_.activation, cfg_.d_ff);

    // Combine: dweight[a] = <dy_t, out(a)>, dout(a) = w_a dy_t.
    ensure(m.dout, rows * d);
    ensure(m.dweight, rows);
    combine_backward(m.disp, r.weight.data(), m.out.data(), dy.data, d, m.dout.data(),
                     m.dweight.data());

    // Experts (grouped GEMMs, dW accumulated), then each token's rows summed into dx.
    ensure(m.dxp, rows * d);
    ensure(m.da, rows * cfg_.d_ff);
    ensure(m.dh, rows * hf);
    GroupedFfn g = grouped(*this, m, params_, grads_);
    if (!frozen13_.empty()) {
        g.frozen13 = frozen13_.data();
        g.frozen2 = frozen2_.data();
    }
    experts_backward(g, m.xp.data(), m.h.data(), m.a.data(), m.dout.data(), m.dxp.data(),
                     m.da.data(), m.dh.data(), m.how);
    scatter_rows(m.disp, m.dxp.data(), d, dx.data, false);

    // Router: dlogits [T, ld] -> dW_router += dlogits^T x', dx += (dlogits W_router) * dx'/dx.
    ensure(m.dlogits, (int64_t)T * m.ld);
    m.router->backward(m.rin, r, m.dweight.data(), m.dlogits.data());
    const float* xr = m.jittered ? m.xr.data() : m.x.data();
    if (!router_frozen_)
        gemm(m.router_prec, true, false, m.ld, d, T, 1.f, m.dlogits.data(), m.ld, xr, d, 1.f,
             grads_, d);
    if (!m.jittered) {
        gemm(m.router_prec, false, false, T, d, m.ld, 1.f, m.dlogits.data(), m.ld, params_, d,
             1.f, dx.data, d);
    } else {
        ensure(m.dxr, (int64_t)T * d);
        gemm(m.router_prec, false, false, T, d, m.ld, 1.f, m.dlogits.data(), m.ld, params_, d, 0.f,
              m.dxr.data(), d);
        const float j = cfg_.jitter, *u = m.jit_ptr, *g2 = m.dxr.data();
        for (int64_t i = 0; i < (int64_t)T * d; i++) dx.data[i] += g2[i] * (1.f - j + 2.f * j * u[i]);
    }

    shared_backward_(dy.data, dx.data);
}

// Shared experts see every token with weight 1: dout = dy; dx accumulated.
void MoeLayer::shared_backward_(const float* dy, float* dx) {
    Impl& m = *impl_;
    const int T = m.T, d = cfg_.d_model;
    const int fs = cfg_.d_ff_shared, hfs = ffn_hidden(cfg_.activation, fs);
    if (cfg_.n_shared_experts > 0) {
        ensure(m.da, (int64_t)T * fs);
        ensure(m.dh, (int64_t)T * hfs);
    }
    for (int s = 0; s < cfg_.n_shared_experts; s++) {
        size_t off = param("shared_experts." + std::to_string(s) + ".w1").offset;
        const float* w = params_ + off;
        float* gw = grads_ + off;
        const bool f13 = !shared13_.empty() && shared13_[s], f2 = !shared2_.empty() && shared2_[s];
        ffn_backward(cfg_.activation, T, d, fs, m.x.data(), w, w + (int64_t)hfs * d,
                     m.sh_h[s].data(), m.sh_a[s].data(), dy, dx, 1.f,
                     f13 ? nullptr : gw, f2 ? nullptr : gw + (int64_t)hfs * d, m.da.data(),
                     m.dh.data(), true, m.prec);
    }
}

// ---------------------------------------------------------------------------------------------

void MoeLayer::update_balance_bias() {
    // DeepSeek-V3: b_e += rate * sign(mean load - load_e); selection only, never the weight.
    const int E = cfg_.n_experts;
    if (stats_.tokens_per_expert.size() != (size_t)E) return;
    double mean = 0;
    for (auto v : stats_.tokens_per_expert) mean += (double)v;
    mean /= E;
    for (int e = 0; e < E; e++) {
        double diff = mean - (double)stats_.tokens_per_expert[e];
        balance_bias_[e] += cfg_.bias_update_rate * (float)((diff > 0) - (diff < 0));
    }
}

std::vector<MoeLayer::Assignment> MoeLayer::last_assignments() const {
    const Impl& m = *impl_;
    const Routing& r = m.routing;
    std::vector<Assignment> out(r.n());
    for (int a = 0; a < r.n(); a++)
        out[a] = {r.token[a], r.expert[a], r.weight[a], r.expert[a] >= 0 && m.kept[a] != 0};
    return out;
}

Rng& MoeLayer::rng() { return impl_->rng; }

// ---------------------------------------------------------------------------------------------
// Expert parallelism (docs/distributed.md). The router is replicated: every rank gathers the
// logits of the global batch (T_g x ld floats, small beside the d-wide token rows) and routes all
// of it, so capacity, dropping, noise draws, balancing losses and statistics are exactly those of
// one process on the concatenated batch, for every router (expert choice included), and every
// rank knows every row's destination: the row counts need no negotiation (one all-to-all of
// counts still checks that the ranks agree). Token rows then travel to the owners of their
// experts and back (all-to-all); backward sends dY the same way and returns dX.

static double seconds_now() { return omp_get_wtime(); }

void MoeLayer::set_parallel(const ParallelGroups& g, bool mean_grads, bool replicated_tokens) {
    Impl& m = *impl_;
    m.par = g;
    m.mean_grads = mean_grads;
    m.replicated = replicated_tokens;
    // Replicated tokens need only the expert group; split tokens the world (the global batch).
    m.par_on =
        replicated_tokens ? g.expert && g.expert->size() > 1 : g.world && g.world->size() > 1;
    m.have_forward = false;
    if (!m.par_on) {
        if (shard_.sharded())
            fail(
                "MoeLayer: holds experts {} of {} parts but runs in one process; build it "
                "unsharded",
                shard_.index, shard_.parts);
        return;
    }
    MOE_CHECK(g.expert && g.data, "set_parallel: expert and data groups are needed");
    const ExpertShard want{g.expert->size(), g.expert->rank()};
    check_shard(cfg_, want);
    if (shard_.sharded() && !(shard_ == want))
        fail("MoeLayer: holds expert part {} of {} but is rank {} of an expert group of {}",
             shard_.index, shard_.parts, want.index, want.parts);
}

void MoeLayer::set_overlap(int chunks) { impl_->overlap = std::max(1, chunks); }

void MoeLayer::set_precision(Precision gemm_prec, Precision router_prec) {
    impl_->prec = gemm_prec;
    impl_->router_prec = router_prec;
}
Precision MoeLayer::precision() const { return impl_->prec; }
Precision MoeLayer::router_precision() const { return impl_->router_prec; }

bool MoeLayer::parallel() const { return impl_->par_on; }
MoeCommStats& MoeLayer::comm_stats() { return impl_->comm; }

MoeLayer::ExpertRange MoeLayer::owned_experts() const {
    const Impl& m = *impl_;
    ExpertRange r;
    // A sharded layer owns what it holds (set_parallel checks the group agrees).
    const int P = shard_.sharded() ? shard_.parts : m.par_on ? m.par.expert->size() : 1;
    const int p = shard_.sharded() ? shard_.index : m.par_on ? m.par.expert->rank() : 0;
    r.count = cfg_.n_experts / P;
    r.first = p * r.count;
    r.floats_per_expert = (size_t)ffn_weight_floats(cfg_.activation, cfg_.d_model, cfg_.d_ff);
    const int held_first = shard_.index * (cfg_.n_experts / shard_.parts);
    r.all_offset = param("experts." + std::to_string(held_first) + ".w1").offset;
    r.all_floats = r.floats_per_expert * (cfg_.n_experts / shard_.parts);
    r.offset = r.all_offset + r.floats_per_expert * (r.first - held_first);
    return r;
}

void MoeLayer::allreduce_grads() {
    Impl& m = *impl_;
    if (!m.par_on || !grads_) return;
    ExpertRange o = owned_experts();
    // Router matrices before the experts, shared experts after: both replicated.
    m.par.world->allreduce_sum(grads_, (int64_t)o.all_offset);
    const size_t tail = o.all_offset + o.all_floats;
    m.par.world->allreduce_sum(grads_ + tail, (int64_t)(n_params_ - tail));
    m.par.data->allreduce_sum(grads_ + o.offset, (int64_t)(o.floats_per_expert * o.count));
}

// Step 1-2 on the global batch: local logits, gathered; noise drawn for the global batch from
// the layer's Rng in the single-process order; the router on all of it.
static void route_parallel(Impl& m, const MoeConfig& cfg, const float* params, float* bias,
                           AuxLosses& aux) {
    ProcessGroup& world = *m.par.world;
    const int W = world.size(), T = m.T, d = cfg.d_model, E = cfg.n_experts;
    const double t0 = seconds_now();
    std::vector<int64_t> counts(W);
    world.allgather(T, counts.data());
    m.tok_start.assign(W + 1, 0);
    for (int q = 0; q < W; q++) m.tok_start[q + 1] = m.tok_start[q] + counts[q];
    m.tok_lo = m.tok_start[world.rank()];
    m.Tg = m.tok_start[W];
    if (m.Tg > INT32_MAX / std::max(1, E))
        fail("MoeLayer: global batch of {} tokens x {} experts is too large", m.Tg, E);
    const int Tg = (int)m.Tg;
    Router& router = *m.router;
    const RouterNoise* noise = m.noise;
    const float* xr = m.x.data();
    m.jittered = m.training && cfg.jitter > 0.f;
    if (m.jittered) {
        // The global draw, of which this rank keeps its slice: the Rng stays in step with one
        // process (and with the other ranks).
        Buffer ug((size_t)Tg * d);
        if (noise && noise->jitter)
            std::memcpy(ug.data(), noise->jitter, sizeof(float) * Tg * d);
        else
            m.rng.fill_uniform(ug.data(), (int64_t)Tg * d);
        ensure(m.jit_u, (int64_t)T * d);
        std::memcpy(m.jit_u.data(), ug.data() + m.tok_lo * d, sizeof(float) * T * d);
        m.jit_ptr = m.jit_u.data();
        ensure(m.xr, (int64_t)T * d);
        const float j = cfg.jitter, *x = m.x.data(), *u = m.jit_ptr;
        float* out = m.xr.data();
        for (int64_t i = 0; i < (int64_t)T * d; i++) out[i] = x[i] * (1.f - j + 2.f * j * u[i]);
        xr = out;
    }
    ensure(m.logits_loc, (int64_t)T * m.ld);
    router_logits(m, T, d, xr, params, m.logits_loc.data());
    ensure(m.logits, (int64_t)Tg * m.ld);
    std::vector<int64_t> lcounts(W);
    for (int q = 0; q < W; q++) lcounts[q] = counts[q] * m.ld;
    world.allgatherv(m.logits_loc.data(), (int64_t)T * m.ld, m.logits.data(), lcounts.data());
    m.comm.router_bytes += (int64_t)sizeof(float) * T * m.ld * (W - 1);

    RouterInput& in = m.rin;
    in = RouterInput{};
    in.T = Tg;
    in.d = d;
    in.E = E;
    in.cfg = &cfg;
    in.logits = m.logits.data();
    in.ld = m.ld;
    in.training = m.training;
    in.bias = cfg.bias_update_rate > 0.f ? bias : nullptr;
    auto draw = [&](bool need, const float* given, Buffer& buf, int64_t n, bool normal) {
        if (!m.training || !need) return (const float*)nullptr;
        ensure(buf, n);
        if (given)
            std::memcpy(buf.data(), given, sizeof(float) * n);
        else if (normal)
            m.rng.fill_normal(buf.data(), n);
        else
            m.rng.fill_uniform(buf.data(), n);
        return (const float*)buf.data();
    };
    in.normal = draw(router.needs_normal(cfg), noise ? noise->normal : nullptr, m.normal,
                     (int64_t)Tg * E, true);
    in.uniform = draw(router.needs_uniform(cfg), noise ? noise->uniform : nullptr, m.uniform,
                      (int64_t)Tg * E, false);
    in.gshard_u = draw(router.needs_gshard_u(cfg), noise ? noise->gshard_u : nullptr, m.gshard_u,
                       Tg, false);
    aux = AuxLosses{};
    router.forward(in, m.routing, aux);
    MOE_CHECK(m.routing.T == Tg && m.routing.E == E, "router returned T={} E={}", m.routing.T,
              m.routing.E);
    m.comm.router_s += seconds_now() - t0;
}

// The all-to-all in chunks (set_overlap): chunk c carries the local experts [j0(c), j0(c+1))
// of every owner. Counts and displacements (rows) per chunk and peer, on both sides:
//   send: this rank's rows are expert-major over all E, so the rows for owner q's chunk-c
//     experts are one contiguous run of m.mine;
//   receive: the receive buffer is chunk-major, then sender-major, then expert-major, so a
//     chunk arrives as one region; recv_pos maps each expert-major local row to its place.
static void plan_chunks(Impl& m, int El, int P, const std::vector<int64_t>& cnt,
                        const std::vector<int32_t>& sender) {
    const int nc = std::min(m.overlap, std::max(El, 1));
    m.chunk_j.assign(nc + 1, 0);
    for (int c = 0; c <= nc; c++) m.chunk_j[c] = (int)((int64_t)c * El / nc);
    m.csend_n.assign((size_t)nc * P, 0);
    m.csend_at.assign((size_t)nc * P, 0);
    m.crecv_n.assign((size_t)nc * P, 0);
    m.crecv_at.assign((size_t)nc * P, 0);
    std::vector<int64_t> start((size_t)El * P, 0);
    int64_t pos = 0;
    for (int c = 0; c < nc; c++)
        for (int q = 0; q < P; q++) {
            const int e_lo = q * El + m.chunk_j[c], e_hi = q * El + m.chunk_j[c + 1];
            m.csend_at[(size_t)c * P + q] = m.mine.offsets[e_lo];
            m.csend_n[(size_t)c * P + q] = m.mine.offsets[e_hi] - m.mine.offsets[e_lo];
            m.crecv_at[(size_t)c * P + q] = pos;
            for (int j = m.chunk_j[c]; j < m.chunk_j[c + 1]; j++) {
                start[(size_t)j * P + q] = pos;
                pos += cnt[(size_t)j * P + q];
            }
            m.crecv_n[(size_t)c * P + q] = pos - m.crecv_at[(size_t)c * P + q];
        }
    m.recv_pos.resize(sender.size());
    for (int j = 0; j < El; j++)
        for (int L = m.local_off[j]; L < m.local_off[j + 1]; L++)
            m.recv_pos[L] = (int32_t)start[(size_t)j * P + sender[L]]++;
}

// Steps 3-4: capacity on the global routing, then who sends which rows where.
//   send side: this rank's kept rows in global row order (expert-major), in m.mine, whose
//     tok_off/tok_rows index them per local token for combine and the dx scatter.
//   receive side: the rows of this expert group's tokens for the owned experts, expert-major
//     (m.local_off), arriving per sender; recv_pos maps each to its place in the receive buffer.
static void plan_exchange(Impl& m, const MoeConfig& cfg) {
    const Routing& r = m.routing;
    if (r.k > 0) {
        int64_t C = expert_capacity(cfg.capacity_factor, m.Tg, r.k, r.E, cfg.dropless);
        apply_capacity(r, C, cfg.priority == "weight", m.kept, m.order);
    } else {
        m.kept.assign(r.n(), 1);
    }
    build_dispatch(r, m.kept.data(), m.disp);
    const Dispatch& g = m.disp;
    const int E = cfg.n_experts, P = m.par.expert->size(), p = m.par.expert->rank();
    const int El = E / P, e0 = p * El;
    const int base = m.par.world->rank() - p;  // world rank of expert-group rank 0
    const int64_t lo = m.tok_lo, hi = m.tok_lo + m.T;
    const int64_t glo = m.tok_start[base], ghi = m.tok_start[base + P];

    // Send side.
    Dispatch& s = m.mine;
    s.T = m.T;
    s.E = E;
    s.n_assign = g.n_assign;
    s.offsets.assign(E + 1, 0);
    s.row_token.clear();
    s.row_assign.clear();
    m.send_rows.assign(P, 0);
    std::vector<int32_t> g2s(g.n_rows, -1);
    for (int e = 0; e < E; e++) {
        for (int i = g.offsets[e]; i < g.offsets[e + 1]; i++) {
            const int64_t t = g.row_token[i];
            if (t < lo || t >= hi) continue;
            g2s[i] = (int32_t)s.row_token.size();
            s.row_token.push_back((int32_t)(t - lo));
            s.row_assign.push_back(g.row_assign[i]);
            m.send_rows[e / El]++;
        }
        s.offsets[e + 1] = (int32_t)s.row_token.size();
    }
    s.n_rows = (int)s.row_token.size();
    s.tok_off.assign(s.T + 1, 0);
    s.tok_rows.clear();
    for (int t = 0; t < s.T; t++) {
        const int64_t tg = lo + t;
        for (int q = g.tok_off[tg]; q < g.tok_off[tg + 1]; q++)
            s.tok_rows.push_back(g2s[g.tok_rows[q]]);
        s.tok_off[t + 1] = (int32_t)s.tok_rows.size();
    }

    // Receive side: sender of a row = the expert-group rank whose token range holds its token.
    m.recv_rows.assign(P, 0);
    m.local_off.assign(El + 1, 0);
    std::vector<int32_t> sender;
    std::vector<int64_t> cnt((size_t)El * P, 0);  // rows of local expert j from sender q
    for (int e = e0; e < e0 + El; e++) {
        for (int i = g.offsets[e]; i < g.offsets[e + 1]; i++) {
            const int64_t t = g.row_token[i];
            if (t < glo || t >= ghi) continue;
            auto first = m.tok_start.begin() + base;
            int q = (int)(std::upper_bound(first, first + P + 1, t) - first) - 1;
            sender.push_back(q);
            m.recv_rows[q]++;
            cnt[(size_t)(e - e0) * P + q]++;
        }
        m.local_off[e - e0 + 1] = (int32_t)sender.size();
    }
    plan_chunks(m, El, P, cnt, sender);
    // The ranks must agree on the plan (they routed the same gathered logits): what each sends
    // must be what its receiver expects.
    std::vector<int64_t> told(P);
    m.par.expert->alltoall(m.send_rows.data(), told.data());
    for (int q = 0; q < P; q++)
        MOE_CHECK(told[q] == m.recv_rows[q],
                  "expert-parallel rank {} expects {} rows from rank {} but is sent {}: the ranks "
                  "routed differently (different builds or configs?)",
                  p, m.recv_rows[q], q, told[q]);
}

static GroupedFfn grouped_owned(const MoeLayer& L, const Impl& m, const float* params,
                                float* grads) {
    const MoeConfig& cfg = L.config();
    MoeLayer::ExpertRange o = L.owned_experts();
    GroupedFfn g;
    g.act = cfg.activation;
    g.E = o.count;
    g.d = cfg.d_model;
    g.f = cfg.d_ff;
    g.offsets = m.local_off.data();
    g.weights = params + o.offset;
    g.grads = grads ? grads + o.offset : nullptr;
    g.stride = (int64_t)o.floats_per_expert;
    g.prec = m.prec;
    return g;
}

// The local experts [j0, j1) of a grouped FFN (row offsets stay absolute).
static GroupedFfn sub_experts(GroupedFfn g, int j0, int j1) {
    g.E = j1 - j0;
    g.offsets += j0;
    g.weights += (int64_t)j0 * g.stride;
    if (g.grads) g.grads += (int64_t)j0 * g.stride;
    if (g.frozen13) g.frozen13 += j0;
    if (g.frozen2) g.frozen2 += j0;
    return g;
}

// One round trip of rows through the owners (forward: x out, expert outputs back; backward: dY
// out, dX back). send: this rank's rows in send order; in / out: the owned experts' rows,
// expert-major (n_recv x d); back: what returns, in send order. work(j0, j1) computes out from
// in for the local experts [j0, j1). One chunk: blocking all-to-alls around all the work. More
// (set_overlap): every chunk's exchange is posted at once; chunk c's experts run as soon as it
// has arrived, and its results are posted home before the next chunk is waited for.
template <class Work>
static void round_trip(Impl& m, int d, const float* send, float* in, const float* out, float* back,
                       Work&& work) {
    ProcessGroup& eg = *m.par.expert;
    const int P = eg.size(), me = eg.rank(), nc = (int)m.chunk_j.size() - 1;
    const int64_t n_recv = (int64_t)m.recv_pos.size();
    ensure(m.rbuf, std::max<int64_t>(n_recv, 1) * d);
    ensure(m.rbuf2, std::max<int64_t>(n_recv, 1) * d);
    float* rb = m.rbuf.data();
    float* rb2 = m.rbuf2.data();
    const int64_t* si = m.csend_n.data();
    auto scaled = [&](const std::vector<int64_t>& v, int c) {
        std::vector<int64_t> r(P);
        for (int q = 0; q < P; q++) r[q] = v[(size_t)c * P + q] * d;
        return r;
    };
    auto to_expert_major = [&](int j0, int j1) {
        for (int64_t L = m.local_off[j0]; L < m.local_off[j1]; L++)
            std::memcpy(in + L * d, rb + (int64_t)m.recv_pos[L] * d, sizeof(float) * d);
    };
    auto to_send_order = [&](int j0, int j1) {
        for (int64_t L = m.local_off[j0]; L < m.local_off[j1]; L++)
            std::memcpy(rb2 + (int64_t)m.recv_pos[L] * d, out + L * d, sizeof(float) * d);
    };
    int64_t sent = 0, returned = 0;
    for (int c = 0; c < nc; c++)
        for (int q = 0; q < P; q++)
            if (q != me) {
                sent += si[(size_t)c * P + q];
                returned += m.crecv_n[(size_t)c * P + q];
            }
    m.comm.alltoall_bytes += (int64_t)sizeof(float) * d * (sent + returned);
    const int El = m.chunk_j[nc];
    double t0 = seconds_now();
    if (nc == 1) {
        std::vector<int64_t> sc = scaled(m.csend_n, 0), rc = scaled(m.crecv_n, 0);
        eg.alltoallv(send, sc.data(), rb, rc.data());
        m.comm.alltoall_s += seconds_now() - t0;
        to_expert_major(0, El);
        work(0, El);
        to_send_order(0, El);
        t0 = seconds_now();
        eg.alltoallv(rb2, rc.data(), back, sc.data());
        m.comm.alltoall_s += seconds_now() - t0;
        return;
    }
    std::vector<int> out_h(nc), back_h(nc);
    std::vector<std::vector<int64_t>> sc(nc), sd(nc), rc(nc), rd(nc);
    for (int c = 0; c < nc; c++) {
        sc[c] = scaled(m.csend_n, c), sd[c] = scaled(m.csend_at, c);
        rc[c] = scaled(m.crecv_n, c), rd[c] = scaled(m.crecv_at, c);
        out_h[c] = eg.ialltoallv(send, sc[c].data(), sd[c].data(), rb, rc[c].data(), rd[c].data());
    }
    m.comm.alltoall_s += seconds_now() - t0;
    for (int c = 0; c < nc; c++) {
        t0 = seconds_now();
        eg.wait(out_h[c]);
        m.comm.alltoall_s += seconds_now() - t0;
        const int j0 = m.chunk_j[c], j1 = m.chunk_j[c + 1];
        to_expert_major(j0, j1);
        work(j0, j1);
        to_send_order(j0, j1);
        t0 = seconds_now();
        back_h[c] =
            eg.ialltoallv(rb2, rc[c].data(), rd[c].data(), back, sc[c].data(), sd[c].data());
        m.comm.alltoall_s += seconds_now() - t0;
    }
    t0 = seconds_now();
    for (int c = 0; c < nc; c++) eg.wait(back_h[c]);
    m.comm.alltoall_s += seconds_now() - t0;
}

void MoeLayer::forward_parallel_(float* y) {
    Impl& m = *impl_;
    const int d = cfg_.d_model;
    route_parallel(m, cfg_, params_, balance_bias_.data(), aux_);
    plan_exchange(m, cfg_);
    const int64_t n_send = m.mine.n_rows, n_recv = (int64_t)m.recv_pos.size();
    const int hf = ffn_hidden(cfg_.activation, cfg_.d_ff);
    ensure(m.sbuf, std::max<int64_t>(n_send, 1) * d);
    ensure(m.ret, std::max<int64_t>(n_send, 1) * d);
    const int64_t nr = std::max<int64_t>(n_recv, 1);
    ensure(m.xe, nr * d);
    ensure(m.he, nr * hf);
    ensure(m.ae, nr * cfg_.d_ff);
    ensure(m.oe, nr * d);
    gather_rows(m.mine, m.x.data(), d, m.sbuf.data());
    GroupedFfn g = grouped_owned(*this, m, params_, grads_);
    m.how = choose_expert_threads(m.want, g.E, g.offsets, d, g.f, get_threads());
    round_trip(m, d, m.sbuf.data(), m.xe.data(), m.oe.data(), m.ret.data(), [&](int j0, int j1) {
        experts_forward(sub_experts(g, j0, j1), m.xe.data(), m.he.data(), m.ae.data(), m.oe.data(),
                        m.how);
    });
    combine_forward(m.mine, m.routing.weight.data(), m.ret.data(), d, y);
    expert_flops_fwd_ = 2.0 * n_recv * (double)ffn_weight_floats(cfg_.activation, d, g.f);
    run_shared_(y);
}

void MoeLayer::backward_parallel_(const float* dy, float* dx) {
    Impl& m = *impl_;
    const int T = m.T, d = cfg_.d_model, Tg = (int)m.Tg;
    const Routing& r = m.routing;
    const int64_t n_send = m.mine.n_rows, n_recv = (int64_t)m.recv_pos.size();
    const int64_t nr = std::max<int64_t>(n_recv, 1), ns = std::max<int64_t>(n_send, 1);
    const int hf = ffn_hidden(cfg_.activation, cfg_.d_ff);

    // Combine on the token side: dweight for this rank's assignments (0 elsewhere), dout rows.
    ensure(m.dweight, std::max(r.n(), 1));
    ensure(m.dout, ns * d);
    combine_backward(m.mine, r.weight.data(), m.ret.data(), dy, d, m.dout.data(), m.dweight.data());
    // dY rows to the experts' owners, experts backward there, dX rows home.
    ensure(m.doe, nr * d);
    ensure(m.dxe, nr * d);
    ensure(m.dae, nr * cfg_.d_ff);
    ensure(m.dhe, nr * hf);
    GroupedFfn g = grouped_owned(*this, m, params_, grads_);
    if (!frozen13_.empty()) {
        g.frozen13 = frozen13_.data() + owned_experts().first;
        g.frozen2 = frozen2_.data() + owned_experts().first;
    }
    ensure(m.dxp, ns * d);
    round_trip(m, d, m.dout.data(), m.doe.data(), m.dxe.data(), m.dxp.data(), [&](int j0, int j1) {
        experts_backward(sub_experts(g, j0, j1), m.xe.data(), m.he.data(), m.ae.data(),
                         m.doe.data(), m.dxe.data(), m.dae.data(), m.dhe.data(), m.how);
    });
    scatter_rows(m.mine, m.dxp.data(), d, dx, false);

    // Router on the global batch, from this rank's dweights only (the others' are 0): a router's
    // dlogits row t reads the dweights of token t's assignments alone (every router's weights
    // are functions of the token's own logits; what couples tokens, capacity and expert choice's
    // selection, has no gradient), so this rank's rows of dlogits come out exact without
    // exchanging dweight. tests/dist checks it for every router.
    const double t0 = seconds_now();
    const int W = m.par.world->size();
    if (m.mean_grads) {
        // dy is W x the global loss's gradient (each rank's loss is a mean over its own tokens
        // and the caller averages): take it to the global scale for the router, whose balancing
        // losses are global, then back to the caller's scale.
        const float inv = 1.f / (float)W;
        for (int a = 0; a < r.n(); a++) m.dweight[a] *= inv;
    }
    ensure(m.dlogits, (int64_t)Tg * m.ld);
    m.router->backward(m.rin, r, m.dweight.data(), m.dlogits.data());
    m.comm.router_s += seconds_now() - t0;
    const float* dl = m.dlogits.data() + m.tok_lo * m.ld;
    if (m.mean_grads) {
        ensure(m.dl_loc, (int64_t)T * m.ld);
        for (int64_t i = 0; i < (int64_t)T * m.ld; i++) m.dl_loc[i] = dl[i] * (float)W;
        dl = m.dl_loc.data();
    }
    const float* xr = m.jittered ? m.xr.data() : m.x.data();
    const Precision rp = m.router_prec;
    if (!router_frozen_) gemm(rp, true, false, m.ld, d, T, 1.f, dl, m.ld, xr, d, 1.f, grads_, d);
    if (!m.jittered) {
        gemm(rp, false, false, T, d, m.ld, 1.f, dl, m.ld, params_, d, 1.f, dx, d);
    } else {
        ensure(m.dxr, (int64_t)T * d);
        gemm(rp, false, false, T, d, m.ld, 1.f, dl, m.ld, params_, d, 0.f, m.dxr.data(), d);
        const float j = cfg_.jitter, *u = m.jit_ptr, *g2 = m.dxr.data();
        for (int64_t i = 0; i < (int64_t)T * d; i++) dx[i] += g2[i] * (1.f - j + 2.f * j * u[i]);
    }
    shared_backward_(dy, dx);
}

// Inference with the same tokens on every rank (set_parallel with replicated_tokens): the routing
// and the dispatch are the single-process ones; this rank runs its experts' rows (contiguous in
// the expert-major buffer: the owners' experts are consecutive) and the expert group all-gathers
// them in rank order, which rebuilds the whole expert-major output; combine then sums each
// token's rows in slot order, as one process does.
void MoeLayer::run_experts_replicated_(float* y) {
    Impl& m = *impl_;
    const int d = cfg_.d_model;
    ProcessGroup& eg = *m.par.expert;
    const int P = eg.size(), me = eg.rank();
    const ExpertRange o = owned_experts();
    GroupedFfn g;
    g.act = cfg_.activation;
    g.E = o.count;
    g.d = d;
    g.f = cfg_.d_ff;
    g.offsets = m.disp.offsets.data() + o.first;
    g.weights = params_ + o.offset;
    g.stride = (int64_t)o.floats_per_expert;
    g.prec = m.prec;
    m.how = choose_expert_threads(m.want, g.E, g.offsets, d, g.f, get_threads());
    experts_forward(g, m.xp.data(), m.h.data(), m.a.data(), m.out.data(), m.how);
    std::vector<int64_t> counts(P);
    for (int q = 0; q < P; q++)
        counts[q] = (int64_t)(m.disp.offsets[(q + 1) * o.count] - m.disp.offsets[q * o.count]) * d;
    ensure(m.ret, std::max<int64_t>(m.disp.n_rows, 1) * d);
    const double t0 = seconds_now();
    eg.allgatherv(m.out.data() + (int64_t)m.disp.offsets[o.first] * d, counts[me], m.ret.data(),
                  counts.data());
    m.comm.alltoall_s += seconds_now() - t0;
    m.comm.alltoall_bytes += (int64_t)sizeof(float) * counts[me] * (P - 1);
    combine_forward(m.disp, m.routing.weight.data(), m.ret.data(), d, y);
    expert_flops_fwd_ = 2.0 * (m.disp.offsets[o.first + o.count] - m.disp.offsets[o.first]) *
                        (double)ffn_weight_floats(cfg_.activation, d, g.f);
    run_shared_(y);
}

}  // namespace moe
