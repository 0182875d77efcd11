#include "train/generate.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>

#include "moe/error.h"

namespace moe {

using json = nlohmann::json;

int32_t sample_token(const float* logits, int V, const SampleOptions& o, Rng& rng) {
    if (o.temperature <= 0.f) {
        int32_t best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    std::vector<int32_t> idx(V);
    std::iota(idx.begin(), idx.end(), 0);
    // Sort by logit, descending; ties by id so the order is total and deterministic.
    std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    int n = V;
    if (o.top_k > 0 && o.top_k < n) n = o.top_k;
    std::vector<double> p(n);
    const double mx = logits[idx[0]] / (double)o.temperature;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        p[i] = std::exp(logits[idx[i]] / (double)o.temperature - mx);
        sum += p[i];
    }
    for (auto& v : p) v /= sum;
    if (o.top_p < 1.f) {
        double c = 0;
        int m = 0;
        while (m < n) {
            c += p[m++];
            if (c >= o.top_p) break;
        }
        n = std::max(1, m);
        sum = 0;
        for (int i = 0; i < n; i++) sum += p[i];
        for (int i = 0; i < n; i++) p[i] /= sum;
    }
    double u = rng.uniform_double(), c = 0;
    for (int i = 0; i < n; i++) {
        c += p[i];
        if (u < c) return idx[i];
    }
    return idx[n - 1];
}

static void trace_tokens(FILE* f, Model& model, const Tokenizer& tok, const int32_t* ids, int n,
                         int first_traced, int64_t pos0) {
    if (!f) return;
    const ModelConfig& cfg = model.config();
    std::vector<std::vector<MoeLayer::Assignment>> asg(cfg.n_layers);
    for (int l = 0; l < cfg.n_layers; l++)
        if (MoeLayer* m = model.moe_layer(l)) asg[l] = m->last_assignments();
    for (int t = first_traced; t < n; t++) {
        json layers = json::array();
        for (int l = 0; l < cfg.n_layers; l++) {
            if (!model.moe_layer(l)) continue;
            json ex = json::array(), w = json::array();
            for (auto& a : asg[l])
                if (a.token == t && a.expert >= 0 && a.kept) {
                    ex.push_back(a.expert);
                    w.push_back(a.weight);
                }
            layers.push_back({{"layer", l}, {"experts", ex}, {"weights", w}});
        }
        json j = {
            {"pos", pos0 + t}, {"token", ids[t]}, {"text", tok.piece(ids[t])}, {"layers", layers}};
        std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
        std::fwrite(s.data(), 1, s.size(), f);
    }
}

std::vector<int32_t> generate(Model& model, const Tokenizer& tok,
                              const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<void(int32_t)>& on_token, FILE* trace) {
    const int S = model.config().block_size, V = model.config().vocab_size;
    if (prompt.empty()) fail("generate: empty prompt");
    for (int32_t id : prompt)
        if (id < 0 || id >= V) fail("generate: prompt token {} outside the vocabulary ({})", id, V);
    Rng rng(o.seed);
    std::vector<int32_t> ctx = prompt;
    model.cache_reset();
    // Prefill the last block_size tokens of the prompt.
    int n0 = std::min<int>((int)ctx.size(), S);
    const float* logits = model.cache_feed(ctx.data() + ctx.size() - n0, n0);
    trace_tokens(trace, model, tok, ctx.data() + ctx.size() - n0, n0, 0, (int64_t)ctx.size() - n0);
    std::vector<int32_t> out;
    for (int i = 0; i < o.max_tokens; i++) {
        int32_t t = sample_token(logits, V, o, rng);
        ctx.push_back(t);
        out.push_back(t);
        if (on_token) on_token(t);
        // The last token is fed only to trace its routing (nothing samples after it).
        if (i + 1 == o.max_tokens && !trace) break;
        if (model.cache_pos() < S) {
            logits = model.cache_feed(&t, 1);
            trace_tokens(trace, model, tok, &t, 1, 0, (int64_t)ctx.size() - 1);
        } else {
            // Context full: slide by re-feeding the newest block_size tokens.
            model.cache_reset();
            const int32_t* w = ctx.data() + ctx.size() - S;
            logits = model.cache_feed(w, S);
            trace_tokens(trace, model, tok, w, S, S - 1, (int64_t)ctx.size() - S);
        }
    }
    return out;
}

static void trace_hf(FILE* f, const HfModel& m, const int32_t* ids, int n, int64_t pos0,
                     const std::function<std::string(int32_t)>& piece) {
    if (!f) return;
    const int k = m.config().top_k;
    for (int t = 0; t < n; t++) {
        json layers = json::array();
        for (int l = 0; l < m.config().n_layers; l++) {
            if (!m.config().moe_layer[l]) continue;
            json ex = json::array(), w = json::array();
            for (int i = 0; i < k; i++) {
                ex.push_back(m.last_experts()[l][(size_t)t * k + i]);
                w.push_back(m.last_weights()[l][(size_t)t * k + i]);
            }
            layers.push_back({{"layer", l}, {"experts", ex}, {"weights", w}});
        }
        json j = {{"pos", pos0 + t},
                  {"token", ids[t]},
                  {"text", piece ? piece(ids[t]) : std::to_string(ids[t])},
                  {"layers", layers}};
        std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
        std::fwrite(s.data(), 1, s.size(), f);
    }
}

std::vector<int32_t> generate_hf(HfModel& model, const std::vector<int32_t>& prompt,
                                 const SampleOptions& o, const std::vector<int32_t>& eos,
                                 const std::function<void(int32_t)>& on_token, std::string* stop,
                                 FILE* trace, const std::function<std::string(int32_t)>& piece) {
    const int ctx = model.config().max_positions, V = model.config().vocab_size;
    if (prompt.empty()) fail("generate: empty prompt");
    if ((int64_t)prompt.size() > ctx)
        fail("the prompt has {} tokens, more than the model's context of {}; give a shorter "
             "prompt",
             prompt.size(), ctx);
    Rng rng(o.seed);
    model.cache_reset();
    model.reserve((int)std::min<int64_t>(ctx, (int64_t)prompt.size() + o.max_tokens));
    const float* logits = model.cache_feed(prompt.data(), (int)prompt.size());
    trace_hf(trace, model, prompt.data(), (int)prompt.size(), 0, piece);
    std::vector<int32_t> out;
    *stop = "length";
    for (int i = 0; i < o.max_tokens; i++) {
        int32_t t = sample_token(logits, V, o, rng);
        out.push_back(t);
        if (on_token) on_token(t);
        if (std::find(eos.begin(), eos.end(), t) != eos.end()) {
            *stop = "eos";
            break;
        }
        if (i + 1 == o.max_tokens && !trace) break;
        if (model.cache_pos() >= ctx) {
            *stop = "context";
            break;
        }
        logits = model.cache_feed(&t, 1);
        trace_hf(trace, model, &t, 1, model.cache_pos() - 1, piece);
    }
    return out;
}

std::string generated_text(const Tokenizer& tok, const std::vector<int32_t>& ids) {
    std::vector<int32_t> known;
    for (int32_t id : ids)
        if (id >= 0 && id < tok.vocab_size()) known.push_back(id);
    std::string text = tok.decode(known);
    text.resize(utf8_complete_prefix(text));
    return text;
}

}  // namespace moe
