// Top-p (threshold) routing, a dynamic router (Huang et al. 2024, "Harder Tasks Need More
// Experts: Dynamic Routing in MoE Models"): p = softmax(L/tau); each token takes experts in
// descending order of p + bias until the cumulative p of the chosen reaches the threshold
// (cum >= threshold), at least 1 and at most max_k = top_k experts; w = p / Σ_chosen p.
// A confident router spends one expert on a token, an unsure one up to max_k.
//
// Exactness (so the peer agrees): p in fp32, the running sum in double of the fp32 p, compared
// with the fp32 threshold as a double; ties in p + bias go to the lower expert index, so equal
// probabilities are taken in index order. Slots beyond the chosen count are unused (expert -1,
// weight 0), as GShard's unused second slot. The aux-loss-free bias reorders the candidates only:
// the running sum and the weights use p itself. Gate dropout (training) replaces p by
// p' = p * [u >= q]/(1-q) for the order, the running sum and the weights (as topk does).
#include <memory>

#include "moe/balance.h"

namespace moe {
namespace {

class TopPRouter : public RouterBase {
   public:
    using RouterBase::RouterBase;

   protected:
    // logits [T, ld] -> score_ [T,E] (p'), probs_ [T,E], out: max_k slots per token, the first
    // n_t used.
    void route(const RouterInput& in, Routing& out) override {
        const int T = in.T, E = in.E, k = cfg_.top_k;
        const double threshold = cfg_.threshold;
        out.k = k;
        out.token.resize((size_t)T * k);
        out.expert.resize((size_t)T * k);
        out.weight.resize((size_t)T * k);
        score_.resize((size_t)T * E);
        mask_.resize((size_t)T * E);
        idx_.resize(E);
        const bool drop = dropout_on(in);
        for (int t = 0; t < T; t++) {
            float* p = &probs_[(size_t)t * E];
            float* s = &score_[(size_t)t * E];
            float* m = &mask_[(size_t)t * E];
            softmax_scaled(in.logits + (size_t)t * in.ld, E, inv_tau(), p);
            gate_dropout_mask(drop ? in.uniform + (size_t)t * E : nullptr, E, cfg_.gate_dropout, m);
            for (int i = 0; i < E; i++) s[i] = p[i] * m[i];
            // The max_k best candidates in order; take them until the running sum reaches p.
            select_topk(s, in.bias, E, k, idx_.data());
            int n = 0;
            double sum = 0;
            while (n < k) {
                sum += s[idx_[n]];
                n++;
                if (sum >= threshold) break;
            }
            // sum == 0 only when gate dropout removed every chosen expert: weights 0, no NaN.
            const double inv = sum > 0 ? 1.0 / sum : 0.0;
            for (int j = 0; j < k; j++) {
                const size_t a = (size_t)t * k + j;
                out.token[a] = t;
                out.expert[a] = j < n ? idx_[j] : -1;
                out.weight[a] = j < n ? (float)(s[idx_[j]] * inv) : 0.f;
            }
        }
    }

    // The chosen set is piecewise constant in the logits; inside it w_j = s_j / S over the used
    // slots: ds_j = dw_j / S - <dw, s_used> / S², then through the dropout mask and the softmax.
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
                if (r.expert[a] < 0) continue;
                S += s[r.expert[a]];
                dot += (double)dw[a] * s[r.expert[a]];
            }
            if (S > 0)
                for (int j = 0; j < k; j++) {
                    const size_t a = (size_t)t * k + j;
                    if (r.expert[a] >= 0) ds_[r.expert[a]] = (float)(dw[a] / S - dot / (S * S));
                }
            const float* m = &mask_[(size_t)t * E];
            for (int i = 0; i < E; i++) ds_[i] *= m[i];
            softmax_scaled_backward(&probs_[(size_t)t * E], ds_.data(), E, inv_tau(),
                                    dlogits + (size_t)t * in.ld);
        }
    }

   private:
    std::vector<float> score_, mask_, ds_;
    std::vector<int> idx_;
};

}  // namespace

std::unique_ptr<Router> make_router_top_p(const MoeConfig& c) {
    if (!(c.threshold > 0.f && c.threshold <= 1.f))
        fail("router top-p: threshold={} must be in (0, 1] (cumulative probability)", c.threshold);
    return std::make_unique<TopPRouter>(c);
}

}  // namespace moe
