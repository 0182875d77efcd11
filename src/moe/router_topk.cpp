// Top-k gating (Mixtral): p = softmax(L/tau), keep the k largest, w = p / Σ_topk p.
// Options: no renormalisation (Qwen-MoE/OLMoE: w = p), sigmoid scores (DeepSeek-V3:
// s = sigmoid(L/tau), w = s / Σ_topk s or s). The aux-loss-free bias shifts the selection only.
// Gate dropout (softmax scores, training) replaces p by p' = p * [u >= q]/(1-q) before selection.
// Slots are in descending order of score + bias, ties to the lower expert index.
#include <memory>

#include "moe/balance.h"

namespace moe {
namespace {

class TopkRouter : public RouterBase {
   public:
    explicit TopkRouter(const MoeConfig& c) : RouterBase(c), sigmoid_(c.score == "sigmoid") {}

    bool needs_uniform(const MoeConfig& c) const override {
        return c.gate_dropout > 0.f && c.score != "sigmoid";
    }

   protected:
    // logits [T, ld] -> score_ [T,E] (p' or s), probs_ [T,E], out: k slots per token.
    void route(const RouterInput& in, Routing& out) override {
        const int T = in.T, E = in.E, k = cfg_.top_k;
        out.k = k;
        out.token.resize((size_t)T * k);
        out.expert.resize((size_t)T * k);
        out.weight.resize((size_t)T * k);
        score_.resize((size_t)T * E);
        mask_.resize((size_t)T * E);
        idx_.resize(E);
        const bool drop = dropout_on(in) && !sigmoid_;
        for (int t = 0; t < T; t++) {
            const float* l = in.logits + (size_t)t * in.ld;
            float* p = &probs_[(size_t)t * E];
            float* s = &score_[(size_t)t * E];
            float* m = &mask_[(size_t)t * E];
            if (sigmoid_) {
                double sum = 0;
                for (int i = 0; i < E; i++) {
                    s[i] = sigmoidf(l[i] * inv_tau());
                    sum += s[i];
                }
                for (int i = 0; i < E; i++) p[i] = (float)(s[i] / sum);
            } else {
                softmax_scaled(l, E, inv_tau(), p);
                gate_dropout_mask(drop ? in.uniform + (size_t)t * E : nullptr, E,
                                  cfg_.gate_dropout, m);
                for (int i = 0; i < E; i++) s[i] = p[i] * m[i];
            }
            select_topk(s, in.bias, E, k, idx_.data());
            double sum = 0;
            for (int j = 0; j < k; j++) sum += s[idx_[j]];
            // sum == 0 only when gate dropout removed every chosen expert: weights 0, no NaN.
            const double inv = (cfg_.renormalize && sum > 0) ? 1.0 / sum : 1.0;
            for (int j = 0; j < k; j++) {
                const size_t a = (size_t)t * k + j;
                out.token[a] = t;
                out.expert[a] = idx_[j];
                out.weight[a] = (float)(s[idx_[j]] * inv);
            }
        }
    }

    // w_j = s_j / S (S = Σ_sel s): ds_j = dw_j / S - <dw, s_sel> / S²; then through the mask and
    // softmax, or through the sigmoid.
    void route_backward(const RouterInput& in, const Routing& r, const float* dw,
                        float* dlogits) override {
        const int T = in.T, E = in.E, k = r.k;
        ds_.resize(E);
        for (int t = 0; t < T; t++) {
            const float* s = &score_[(size_t)t * E];
            std::fill(ds_.begin(), ds_.end(), 0.f);
            double S = 0, dot = 0;
            for (int j = 0; j < k; j++) {
                const size_t a = (size_t)t * k + j;
                S += s[r.expert[a]];
                dot += (double)dw[a] * s[r.expert[a]];
            }
            const bool renorm = cfg_.renormalize && S > 0;
            for (int j = 0; j < k; j++) {
                const size_t a = (size_t)t * k + j;
                ds_[r.expert[a]] = renorm ? (float)(dw[a] / S - dot / (S * S)) : dw[a];
            }
            float* dl = dlogits + (size_t)t * in.ld;
            if (sigmoid_) {
                for (int i = 0; i < E; i++) dl[i] += ds_[i] * s[i] * (1.f - s[i]) * inv_tau();
            } else {
                const float* m = &mask_[(size_t)t * E];
                for (int i = 0; i < E; i++) ds_[i] *= m[i];
                softmax_scaled_backward(&probs_[(size_t)t * E], ds_.data(), E, inv_tau(), dl);
            }
        }
    }

    // Sigmoid scores: probs = s / Σ s, so dprobs -> ds_i = (dprobs_i - <dprobs, probs>) / Σ s.
    void probs_backward(const RouterInput& in, const float* dprobs, float* dlogits) override {
        if (!sigmoid_) return RouterBase::probs_backward(in, dprobs, dlogits);
        const int T = in.T, E = in.E;
        for (int t = 0; t < T; t++) {
            const float* s = &score_[(size_t)t * E];
            const float* p = &probs_[(size_t)t * E];
            const float* dp = dprobs + (size_t)t * E;
            double sum = 0, dot = 0;
            for (int i = 0; i < E; i++) {
                sum += s[i];
                dot += (double)dp[i] * p[i];
            }
            float* dl = dlogits + (size_t)t * in.ld;
            for (int i = 0; i < E; i++)
                dl[i] += (float)((dp[i] - dot) / sum) * s[i] * (1.f - s[i]) * inv_tau();
        }
    }

   private:
    bool sigmoid_;
    std::vector<float> score_, mask_, ds_;
    std::vector<int> idx_;
};

}  // namespace

std::unique_ptr<Router> make_router_topk(const MoeConfig& c) {
    if (c.score != "softmax" && c.score != "sigmoid")
        fail("router topk: score='{}' is not 'softmax' or 'sigmoid'", c.score);
    return std::make_unique<TopkRouter>(c);
}

}  // namespace moe
