// The inference engine for Hugging Face MoE models: one decoder written out llm.c style, the
// families differing only in a few switches of HfConfig (biases, q/k norms, clip_qkv, dense
// layers, the gated shared expert, renormalisation of the top-k probabilities).
//
// Per layer, for the n tokens fed at positions p0 .. p0+n-1 (HF modelling code's order):
//   h = RMSNorm(x) ; q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)
//   qwen3_moe: q, k per head RMSNorm(q_norm, k_norm); olmoe: RMSNorm over all of q and of k;
//   olmoe clip_qkv: q, k, v clamped to [-c, c]; RoPE (rotate-half) on q and k; k, v -> cache
//   x += softmax(q k^T / sqrt(hd), causal) v Wo^T (+bo)
//   h = RMSNorm(x) ; dense: x += (silu(h Wg^T) * h Wu^T) Wd^T
//   MoE: p = softmax(h Wr^T) in fp32, top-k (renormalised when norm_topk_prob), each token's
//   chosen experts' SwiGLU outputs weighted by p; qwen2_moe adds sigmoid(h ws^T) * shared(h).
// Final RMSNorm and the LM head (the embedding when tied). Weights stay in the mapped files.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "kernels/activations.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/typed_gemm.h"
#include "moe/checked.h"
#include "moe/config.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/gguf.h"
#include "moe/hf_model.h"

namespace moe {

namespace {

struct LayerWeights {
    std::vector<float> ln1, ln2;  // input_layernorm, post_attention_layernorm
    WeightView wq, wk, wv, wo;
    std::vector<float> bq, bk, bv, bo;  // empty when the family has none
    std::vector<float> qn, kn;          // q_norm, k_norm (empty: none)
    bool moe = false;
    std::vector<float> router;                   // [E, d], fp32 copy
    std::vector<WeightView> eg, eu, ed;          // routed experts: gate, up, down
    WeightView sg, su, sd;                       // qwen2_moe shared expert
    std::vector<float> shared_gate;              // [d]: sigmoid(h . shared_gate)
    WeightView dg, du, dd;                       // dense MLP layer
};

}  // namespace

struct HfModel::Impl {
    HfConfig c;
    int d = 0, q_dim = 0, kv_dim = 0;
    WeightView embed, head;
    std::vector<float> norm_f;
    std::vector<LayerWeights> layers;

    // KV cache [layer][position][kv_dim] and RoPE tables [position][hd/2], `cap` positions.
    int cap = 0, pos = 0;
    std::vector<float> kc, vc, rope_cos, rope_sin;

    // Workspaces for n tokens (grown, never shrunk).
    std::vector<float> x, h, rstd, q, k, v, att, o, ffn, g2, a, rl, xe, ye, logits;
    ExpertUsage usage;
    std::vector<std::vector<int32_t>> last_exp;
    std::vector<std::vector<float>> last_w;
    // Routing scratch (sized once): nothing is allocated per token.
    std::vector<int> order, eoff, ecur;
    std::vector<float> probs, tw;
    std::vector<int32_t> toks, slot_row;
    std::vector<WgemmJob> jobs;

    void grow(int n);
    void attention(int l, int n);
    void moe_block(const LayerWeights& L, int l, int n);
    void swiglu_mlp(const WeightView& g, const WeightView& u, const WeightView& dn, const float* in,
                    int m, float* out, bool accumulate);
};

static void resize(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

void HfModel::Impl::grow(int n) {
    const size_t N = (size_t)n;
    const int f = std::max({c.expert_ff, c.dense_ff, c.shared_ff});
    resize(x, N * d);
    resize(h, N * d);
    resize(rstd, N * std::max(c.n_heads, 1));
    resize(q, N * q_dim);
    resize(k, N * kv_dim);
    resize(v, N * kv_dim);
    resize(att, N * q_dim);
    resize(o, N * d);
    resize(ffn, N * d);
    // the experts' rows: every token once per chosen expert, all experts at once
    const size_t R = N * std::max(c.top_k, 1);
    resize(g2, R * 2 * f);
    resize(a, R * f);
    resize(rl, N * std::max(c.n_experts, 1));
    resize(xe, R * d);
    resize(ye, R * d);
}

// HF computes RoPE's angles in fp32: inv_freq = 1 / theta^(2i/hd) (fp32 pow), angle = pos *
// inv_freq as an fp32 product, then cos and sin. Done the same way so long positions agree.
static void hf_rope_tables(float* cos_t, float* sin_t, int p0, int p1, int hd, float theta) {
    const int half = hd / 2;
    for (int p = p0; p < p1; p++)
        for (int i = 0; i < half; i++) {
            const float inv = 1.0f / std::pow(theta, (float)(2 * i) / (float)hd);
            const float ang = (float)p * inv;
            cos_t[(size_t)p * half + i] = (float)std::cos((double)ang);
            sin_t[(size_t)p * half + i] = (float)std::sin((double)ang);
        }
}

HfModel::HfModel(const std::string& dir) : dir_(dir), impl_(std::make_unique<Impl>()) {
    if (is_gguf_file(dir)) {  // metadata and tensors in one file (src/infer/gguf_model.cpp)
        store_ = WeightStore::from_gguf(dir, &cfg_, /*model_weights=*/true);
        bind_weights();
        return;
    }
    const std::string cfg_path = dir + "/config.json";
    cfg_ = hf_config_from_json(read_json_file(cfg_path, "a model config"), cfg_path);
    store_ = std::make_unique<WeightStore>(dir, /*model_weights=*/true);
    bind_weights();
}

HfModel::HfModel(const HfConfig& cfg, std::unique_ptr<WeightStore> store, const std::string& name)
    : dir_(name), cfg_(cfg), store_(std::move(store)), impl_(std::make_unique<Impl>()) {
    bind_weights();
}

// Every tensor of the family by name and shape; small ones converted to fp32 copies.
void HfModel::bind_weights() {
    const std::string& dir = dir_;
    Impl& m = *impl_;
    HfConfig& c = cfg_;
    m.c = c;
    const int64_t d = c.hidden_size, V = c.vocab_size, hd = c.head_dim;
    m.d = (int)d;
    m.q_dim = c.n_heads * c.head_dim;
    m.kv_dim = c.n_kv_heads * c.head_dim;
    WeightStore& w = *store_;
    m.embed = w.get("model.embed_tokens.weight", {V, d});
    m.norm_f = w.get_f32("model.norm.weight", {d});
    if (c.tie_embeddings) {
        m.head = m.embed;
        if (w.has("lm_head.weight")) w.get("lm_head.weight", {V, d});  // HF ignores it too
    } else {
        m.head = w.get("lm_head.weight", {V, d});
    }
    m.layers.resize(c.n_layers);
    for (int l = 0; l < c.n_layers; l++) {
        LayerWeights& L = m.layers[l];
        const std::string p = "model.layers." + std::to_string(l) + ".";
        L.ln1 = w.get_f32(p + "input_layernorm.weight", {d});
        L.ln2 = w.get_f32(p + "post_attention_layernorm.weight", {d});
        const std::string a = p + "self_attn.";
        L.wq = w.get(a + "q_proj.weight", {m.q_dim, d});
        L.wk = w.get(a + "k_proj.weight", {m.kv_dim, d});
        L.wv = w.get(a + "v_proj.weight", {m.kv_dim, d});
        L.wo = w.get(a + "o_proj.weight", {d, m.q_dim});
        if (c.qkv_bias) {
            L.bq = w.get_f32(a + "q_proj.bias", {m.q_dim});
            L.bk = w.get_f32(a + "k_proj.bias", {m.kv_dim});
            L.bv = w.get_f32(a + "v_proj.bias", {m.kv_dim});
        }
        if (c.o_bias) L.bo = w.get_f32(a + "o_proj.bias", {d});
        if (c.qk_norm == HfConfig::QkNorm::per_head) {
            L.qn = w.get_f32(a + "q_norm.weight", {hd});
            L.kn = w.get_f32(a + "k_norm.weight", {hd});
        } else if (c.qk_norm == HfConfig::QkNorm::whole) {
            L.qn = w.get_f32(a + "q_norm.weight", {m.q_dim});
            L.kn = w.get_f32(a + "k_norm.weight", {m.kv_dim});
        }
        const std::string f = c.ffn_prefix(l);
        L.moe = c.moe_layer[l];
        if (L.moe) {
            const int64_t E = c.n_experts, fe = c.expert_ff;
            L.router = w.get_f32(f + "gate.weight", {E, d});
            for (int j = 0; j < E; j++) {
                L.eg.push_back(w.get(c.expert_name(l, j, 0), {fe, d}));
                L.eu.push_back(w.get(c.expert_name(l, j, 1), {fe, d}));
                L.ed.push_back(w.get(c.expert_name(l, j, 2), {d, fe}));
            }
            if (c.shared_ff > 0) {
                const int64_t fs = c.shared_ff;
                L.sg = w.get(f + "shared_expert.gate_proj.weight", {fs, d});
                L.su = w.get(f + "shared_expert.up_proj.weight", {fs, d});
                L.sd = w.get(f + "shared_expert.down_proj.weight", {d, fs});
                L.shared_gate = w.get_f32(f + "shared_expert_gate.weight", {1, d});
            }
        } else {
            const int64_t fd = c.dense_ff;
            L.dg = w.get(f + "gate_proj.weight", {fd, d});
            L.du = w.get(f + "up_proj.weight", {fd, d});
            L.dd = w.get(f + "down_proj.weight", {d, fd});
        }
    }
    // Int8 (int4) matrices only where config.json says the folder is quantised so (moe quantize
    // writes both): a stray I8 or U8 tensor is a damaged or foreign file, not ours to guess about.
    for (const auto& [q, dtype] : {std::pair<const char*, const char*>{"int8", "I8"}, {"int4", "U8"}}) {
        if (c.quantization != q && w.holds_dtype(dtype))
            fail("{}: holds {} ({}) matrices but config.json has {}; restore the config.json that "
                 "moe quantize wrote",
                 dir, q, dtype,
                 c.quantization.empty() ? std::string("no 'moe_cpp_quantization' block")
                                        : "'moe_cpp_quantization' of type " + c.quantization);
    }
    // A tensor the family does not have means a variant we would run wrongly: refuse it.
    for (const std::string& name : w.unused()) {
        if (name.size() >= 21 && name.compare(name.size() - 21, 21, "rotary_emb.inv_freq") == 0)
            continue;  // a buffer older HF versions saved; recomputed from rope_theta
        fail("{}: tensor {} is not part of a {} model as config.json describes it; moe.cpp would "
             "ignore it and compute something else (check config.json's keys)",
             dir, name, c.model_type);
    }
    m.usage.count.assign(c.n_layers, {});
    for (int l = 0; l < c.n_layers; l++)
        if (c.moe_layer[l]) m.usage.count[l].assign(c.n_experts, 0);
    m.last_exp.assign(c.n_layers, {});
    m.last_w.assign(c.n_layers, {});
}

HfModel::~HfModel() = default;

void HfModel::reserve(int n) {
    Impl& m = *impl_;
    if (n <= m.cap) return;
    if (n > cfg_.max_positions)
        fail("{}: {} positions exceed the model's context of {} (max_position_embeddings); give "
             "a shorter prompt or fewer tokens",
             dir_, n, cfg_.max_positions);
    const int cap = std::min(cfg_.max_positions, std::max(n, 2 * m.cap));
    const double bytes = 2.0 * cfg_.n_layers * cap * m.kv_dim * 4;
    check_fits_in_memory(bytes, fmt::format("{}: the KV cache for {} positions", dir_, cap),
                         "give a shorter prompt or fewer --max-tokens");
    // Grow keeping what is cached: [layer][position][kv] with a new position stride.
    std::vector<float> kc((size_t)cfg_.n_layers * cap * m.kv_dim),
        vc((size_t)cfg_.n_layers * cap * m.kv_dim);
    for (int l = 0; l < cfg_.n_layers && m.cap > 0; l++) {
        std::memcpy(&kc[(size_t)l * cap * m.kv_dim], &m.kc[(size_t)l * m.cap * m.kv_dim],
                    (size_t)m.pos * m.kv_dim * 4);
        std::memcpy(&vc[(size_t)l * cap * m.kv_dim], &m.vc[(size_t)l * m.cap * m.kv_dim],
                    (size_t)m.pos * m.kv_dim * 4);
    }
    m.kc.swap(kc);
    m.vc.swap(vc);
    const int half = cfg_.head_dim / 2;
    m.rope_cos.resize((size_t)cap * half);
    m.rope_sin.resize((size_t)cap * half);
    hf_rope_tables(m.rope_cos.data(), m.rope_sin.data(), m.cap, cap, cfg_.head_dim,
                   cfg_.rope_theta);
    m.cap = cap;
}

void HfModel::cache_reset() { impl_->pos = 0; }
int HfModel::cache_pos() const { return impl_->pos; }
const ExpertUsage& HfModel::usage() const { return impl_->usage; }
void HfModel::reset_usage() {
    for (auto& c : impl_->usage.count) std::fill(c.begin(), c.end(), 0);
    impl_->usage.tokens = 0;
}
const std::vector<std::vector<int32_t>>& HfModel::last_experts() const { return impl_->last_exp; }
const std::vector<std::vector<float>>& HfModel::last_weights() const { return impl_->last_w; }

// Causal attention of the n new tokens (positions pos .. pos+n-1) over the cache, GQA: query
// head hq reads key/value head hq / (H / Hkv). Scores and softmax in fp32 (max-subtracted).
void HfModel::Impl::attention(int l, int n) {
    const int H = c.n_heads, hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
    const float scale = 1.0f / std::sqrt((float)hd);
    const float* K = &kc[(size_t)l * cap * kv_dim];
    const float* Vc = &vc[(size_t)l * cap * kv_dim];
    const int total = pos + n;
#pragma omp parallel
    {
        static thread_local std::vector<float> s;  // the scores of one query row
        if (s.size() < (size_t)total) s.resize((size_t)total);
#pragma omp for schedule(static) collapse(2)
        for (int i = 0; i < n; i++)
            for (int hq = 0; hq < H; hq++) {
                const float* qi = &q[(size_t)i * q_dim + (size_t)hq * hd];
                const int kvh = hq / group, upto = pos + i + 1;
                float mx = -INFINITY;
                for (int j = 0; j < upto; j++) {
                    const float* kj = K + (size_t)j * kv_dim + (size_t)kvh * hd;
                    float dot = 0;
#pragma omp simd reduction(+ : dot)
                    for (int e = 0; e < hd; e++) dot += qi[e] * kj[e];
                    s[j] = dot * scale;
                    mx = std::max(mx, s[j]);
                }
                double sum = 0;
                for (int j = 0; j < upto; j++) {
                    s[j] = std::exp(s[j] - mx);
                    sum += s[j];
                }
                const float inv = (float)(1.0 / sum);
                float* out = &att[(size_t)i * q_dim + (size_t)hq * hd];
                std::fill(out, out + hd, 0.f);
                for (int j = 0; j < upto; j++) {
                    const float pj = s[j] * inv;
                    const float* vj = Vc + (size_t)j * kv_dim + (size_t)kvh * hd;
                    for (int e = 0; e < hd; e++) out[e] += pj * vj[e];
                }
            }
    }
}

// out [m, d] (= or +=) SwiGLU MLP of in [m, d]: (silu(in Wg^T) * in Wu^T) Wd^T.
void HfModel::Impl::swiglu_mlp(const WeightView& g, const WeightView& u, const WeightView& dn,
                               const float* in, int m, float* out, bool accumulate) {
    const int f = (int)g.rows;
    const WgemmJob gate_up[2] = {{g2.data(), 2 * f, in, d, g, m, false},
                                 {g2.data() + f, 2 * f, in, d, u, m, false}};
    wgemm_batch(gate_up, 2);
    swiglu_forward(g2.data(), a.data(), m, f);
    wgemm(out, d, a.data(), f, dn, m, accumulate);
}

// The sparse block: fp32 router softmax, top-k per token, then expert by expert over the tokens
// that chose it (a grouped product: every token of an expert in one wgemm), weighted sums in
// expert order as HF's loop adds them.
void HfModel::Impl::moe_block(const LayerWeights& L, int l, int n) {
    const int E = c.n_experts, K = c.top_k;
    sgemm(false, true, n, E, d, 1.f, h.data(), d, L.router.data(), d, 0.f, rl.data(), E);
    std::vector<int32_t>& ex = last_exp[l];
    std::vector<float>& wt = last_w[l];
    ex.assign((size_t)n * K, -1);
    wt.assign((size_t)n * K, 0.f);
    order.resize(E);
    probs.resize(E);
    float* p = probs.data();
    for (int t = 0; t < n; t++) {
        const float* z = &rl[(size_t)t * E];
        float mx = z[0];
        for (int e = 1; e < E; e++) mx = std::max(mx, z[e]);
        double sum = 0;
        for (int e = 0; e < E; e++) sum += p[e] = std::exp(z[e] - mx);
        for (int e = 0; e < E; e++) p[e] = (float)(p[e] / sum);
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + K, order.end(),
                          [&](int a_, int b_) { return p[a_] > p[b_] || (p[a_] == p[b_] && a_ < b_); });
        float ksum = 0;
        for (int i = 0; i < K; i++) ksum += p[order[i]];
        for (int i = 0; i < K; i++) {
            ex[(size_t)t * K + i] = order[i];
            wt[(size_t)t * K + i] = c.norm_topk_prob ? p[order[i]] / ksum : p[order[i]];
            usage.count[l][order[i]]++;
        }
    }
    // Every expert's tokens as consecutive rows (experts in order, tokens in order within one):
    // rows eoff[e] .. eoff[e + 1] - 1 of xe; slot_row[t * K + i] is the row of token t's i-th
    // choice. Then all gate and up products in one batch, all down products in another.
    eoff.assign((size_t)E + 1, 0);
    for (size_t s_ = 0; s_ < (size_t)n * K; s_++) eoff[ex[s_] + 1]++;
    for (int e = 0; e < E; e++) eoff[e + 1] += eoff[e];
    ecur.assign(eoff.begin(), eoff.end() - 1);
    toks.resize((size_t)n * K);
    tw.resize((size_t)n * K);
    slot_row.resize((size_t)n * K);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < K; i++) {
            const int r = ecur[ex[(size_t)t * K + i]]++;
            toks[r] = t;
            tw[r] = wt[(size_t)t * K + i];
            slot_row[(size_t)t * K + i] = r;
        }
    const int rows = n * K, f = c.expert_ff;
    for (int r = 0; r < rows; r++)
        std::memcpy(&xe[(size_t)r * d], &h[(size_t)toks[r] * d], (size_t)d * 4);
    jobs.clear();
    for (int e = 0; e < E; e++) {
        const int r0 = eoff[e], mrows = eoff[e + 1] - r0;
        if (mrows == 0) continue;
        jobs.push_back({&g2[(size_t)r0 * 2 * f], 2 * f, &xe[(size_t)r0 * d], d, L.eg[e], mrows, false});
        jobs.push_back({&g2[(size_t)r0 * 2 * f + f], 2 * f, &xe[(size_t)r0 * d], d, L.eu[e], mrows, false});
    }
    wgemm_batch(jobs.data(), (int)jobs.size());
    swiglu_forward(g2.data(), a.data(), rows, f);
    jobs.clear();
    for (int e = 0; e < E; e++) {
        const int r0 = eoff[e], mrows = eoff[e + 1] - r0;
        if (mrows == 0) continue;
        jobs.push_back({&ye[(size_t)r0 * d], d, &a[(size_t)r0 * f], f, L.ed[e], mrows, false});
    }
    wgemm_batch(jobs.data(), (int)jobs.size());
    // Weighted sums in expert order per token, as HF's expert loop adds them.
#pragma omp parallel for schedule(static) if ((int64_t)n * K * d >= (1 << 16))
    for (int t = 0; t < n; t++) {
        float* dst = &ffn[(size_t)t * d];
        std::fill(dst, dst + d, 0.f);
        int done = -1;  // the last expert added
        for (int i = 0; i < K; i++) {
            int next = -1, slot = -1;  // the smallest expert above `done` among t's choices
            for (int i2 = 0; i2 < K; i2++) {
                const int e = ex[(size_t)t * K + i2];
                if (e > done && (next < 0 || e < next)) next = e, slot = i2;
            }
            const int r = slot_row[(size_t)t * K + slot];
            const float* src = &ye[(size_t)r * d];
            for (int j = 0; j < d; j++) dst[j] += tw[r] * src[j];
            done = next;
        }
    }
    if (c.shared_ff > 0) {
        swiglu_mlp(L.sg, L.su, L.sd, h.data(), n, ye.data(), false);
        for (int t = 0; t < n; t++) {
            const float* ht = &h[(size_t)t * d];
            float z = 0;
            for (int j = 0; j < d; j++) z += ht[j] * L.shared_gate[j];
            const float gate = 1.f / (1.f + std::exp(-z));
            for (int j = 0; j < d; j++) ffn[(size_t)t * d + j] += gate * ye[(size_t)t * d + j];
        }
    }
}

static void add_bias(float* y, const std::vector<float>& b, int n, int width) {
    if (b.empty()) return;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < width; j++) y[(size_t)t * width + j] += b[j];
}

// Long inputs go through in chunks of kChunk tokens: the workspaces (n x expert width) stay
// small whatever the prompt length, and the numbers do not depend on the chunking beyond
// reduction order (the cache holds every earlier position).
static const int kChunk = 256;

const float* HfModel::cache_feed(const int32_t* ids, int n, bool all_logits) {
    Impl& m = *impl_;
    const HfConfig& c = cfg_;
    if (n < 1) fail("{}: nothing to feed", dir_);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c.vocab_size)
            fail("token id {} (position {}) is outside the vocabulary of {} ids; give ids in [0, "
                 "{})",
                 ids[i], m.pos + i, c.vocab_size, c.vocab_size);
    reserve(m.pos + n);
    if (n <= kChunk) return feed_chunk(ids, n, all_logits ? 0 : n - 1, m.logits);
    if (all_logits)
        check_fits_in_memory((double)n * c.vocab_size * 4,
                             fmt::format("{}: the logits of {} positions", dir_, n),
                             "evaluate shorter windows");
    std::vector<float> all;
    if (all_logits) all.resize((size_t)n * c.vocab_size);
    const float* last = nullptr;
    for (int i0 = 0; i0 < n; i0 += kChunk) {
        const int k = std::min(kChunk, n - i0);
        last = feed_chunk(ids + i0, k, all_logits ? 0 : k - 1, m.logits);
        if (all_logits)
            std::memcpy(&all[(size_t)i0 * c.vocab_size], last, (size_t)k * c.vocab_size * 4);
    }
    if (!all_logits) return last;
    m.logits.swap(all);
    return m.logits.data();
}

// The n tokens at positions pos .. pos+n-1; logits of rows first .. n-1 into `out`.
const float* HfModel::feed_chunk(const int32_t* ids, int n, int first, std::vector<float>& out) {
    Impl& m = *impl_;
    const HfConfig& c = cfg_;
    m.grow(n);
    const int d = m.d, hd = c.head_dim;
    for (int i = 0; i < n; i++) widen_rows(&m.x[(size_t)i * d], m.embed, ids[i], 1);
    for (int l = 0; l < c.n_layers; l++) {
        const LayerWeights& L = m.layers[l];
        rmsnorm_forward(m.h.data(), m.rstd.data(), m.x.data(), L.ln1.data(), n, d, c.rms_eps);
        const WgemmJob qkv[3] = {{m.q.data(), m.q_dim, m.h.data(), d, L.wq, n, false},
                                 {m.k.data(), m.kv_dim, m.h.data(), d, L.wk, n, false},
                                 {m.v.data(), m.kv_dim, m.h.data(), d, L.wv, n, false}};
        wgemm_batch(qkv, 3);
        add_bias(m.q.data(), L.bq, n, m.q_dim);
        add_bias(m.k.data(), L.bk, n, m.kv_dim);
        add_bias(m.v.data(), L.bv, n, m.kv_dim);
        if (c.qk_norm == HfConfig::QkNorm::per_head) {  // in place: rmsnorm reads each row first
            rmsnorm_forward(m.q.data(), m.rstd.data(), m.q.data(), L.qn.data(), n * c.n_heads, hd,
                            c.rms_eps);
            rmsnorm_forward(m.k.data(), m.rstd.data(), m.k.data(), L.kn.data(), n * c.n_kv_heads,
                            hd, c.rms_eps);
        } else if (c.qk_norm == HfConfig::QkNorm::whole) {
            rmsnorm_forward(m.q.data(), m.rstd.data(), m.q.data(), L.qn.data(), n, m.q_dim,
                            c.rms_eps);
            rmsnorm_forward(m.k.data(), m.rstd.data(), m.k.data(), L.kn.data(), n, m.kv_dim,
                            c.rms_eps);
        }
        if (c.clip_qkv > 0) {
            const float cl = c.clip_qkv;
            for (auto* buf : {&m.q, &m.k, &m.v}) {
                const size_t cnt = (size_t)n * (buf == &m.q ? m.q_dim : m.kv_dim);
                for (size_t i = 0; i < cnt; i++) (*buf)[i] = std::min(cl, std::max(-cl, (*buf)[i]));
            }
        }
        rope_forward(m.q.data(), 1, n, m.q_dim, c.n_heads, hd, m.pos, m.rope_cos.data(),
                     m.rope_sin.data());
        rope_forward(m.k.data(), 1, n, m.kv_dim, c.n_kv_heads, hd, m.pos, m.rope_cos.data(),
                     m.rope_sin.data());
        std::memcpy(&m.kc[((size_t)l * m.cap + m.pos) * m.kv_dim], m.k.data(),
                    (size_t)n * m.kv_dim * 4);
        std::memcpy(&m.vc[((size_t)l * m.cap + m.pos) * m.kv_dim], m.v.data(),
                    (size_t)n * m.kv_dim * 4);
        m.attention(l, n);
        wgemm(m.o.data(), d, m.att.data(), m.q_dim, L.wo, n);
        add_bias(m.o.data(), L.bo, n, d);
        for (size_t i = 0; i < (size_t)n * d; i++) m.x[i] += m.o[i];
        rmsnorm_forward(m.h.data(), m.rstd.data(), m.x.data(), L.ln2.data(), n, d, c.rms_eps);
        if (L.moe)
            m.moe_block(L, l, n);
        else
            m.swiglu_mlp(L.dg, L.du, L.dd, m.h.data(), n, m.ffn.data(), false);
        for (size_t i = 0; i < (size_t)n * d; i++) m.x[i] += m.ffn[i];
    }
    m.usage.tokens += n;
    // Only the rows whose logits are wanted go through the final norm and the head.
    const int rows = n - first;
    rmsnorm_forward(m.h.data(), m.rstd.data(), &m.x[(size_t)first * d], m.norm_f.data(), rows, d,
                    c.rms_eps);
    resize(out, (size_t)rows * c.vocab_size);
    wgemm(out.data(), c.vocab_size, m.h.data(), d, m.head, rows);
    const int64_t bad = first_non_finite(out.data(), (size_t)rows * c.vocab_size);
    if (bad >= 0)
        fail("{}: the logits at position {} are not finite; the weights hold NaN or Inf, or "
             "overflow in this precision",
             dir_, m.pos + first + bad / c.vocab_size);
    m.pos += n;
    return out.data();
}

double hf_eval_windows(HfModel& model, const std::vector<int32_t>& ids, int block,
                       int64_t* n_pred) {
    const int V = model.config().vocab_size;
    const int64_t n_win = (int64_t)(ids.size() / ((size_t)block + 1));
    if (n_win < 1)
        fail("evaluation data has {} tokens, fewer than one window of --block + 1 = {}; give a "
             "longer text or a smaller --block",
             ids.size(), block + 1);
    double total = 0;
    for (int64_t w = 0; w < n_win; w++) {
        const int32_t* x = ids.data() + (size_t)w * (block + 1);
        model.cache_reset();
        const float* logits = model.cache_feed(x, block, /*all_logits=*/true);
        for (int t = 0; t < block; t++) {  // -log softmax(logits)[target], in double
            const float* z = logits + (size_t)t * V;
            double mx = z[0];
            for (int v = 1; v < V; v++) mx = std::max(mx, (double)z[v]);
            double sum = 0;
            for (int v = 0; v < V; v++) sum += std::exp((double)z[v] - mx);
            total += mx + std::log(sum) - (double)z[x[t + 1]];
        }
    }
    if (n_pred) *n_pred = n_win * block;
    return total / ((double)n_win * block);
}

}  // namespace moe

