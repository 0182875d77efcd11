// GShard top-2 (Lepikhin et al. 2020): p = softmax(L/tau), e1, e2 the two largest,
// g1 = p1/(p1+p2), g2 = p2/(p1+p2). The first expert always runs; the second only when
// 2*g2 > u, u ~ U(0,1) (training; at inference always). g1 is not renormalised when the second
// is skipped. Unused slot: expert -1, weight 0. Gate dropout (training) uses p' for everything.
#include <memory>

#include "moe/balance.h"

namespace moe {
namespace {

class GshardRouter : public RouterBase {
   public:
    using RouterBase::RouterBase;
    bool needs_gshard_u(const MoeConfig&) const override { return true; }

   protected:
    // logits [T, ld] -> probs_ [T,E], out: 2 slots per token (slot 1 may be unused).
    void route(const RouterInput& in, Routing& out) override {
        const int T = in.T, E = in.E;
        out.k = 2;
        out.token.resize((size_t)T * 2);
        out.expert.resize((size_t)T * 2);
        out.weight.resize((size_t)T * 2);
        score_.resize((size_t)T * E);
        mask_.resize((size_t)T * E);
        e2_.resize(T);
        idx_.resize(E);
        const bool drop = dropout_on(in);
        for (int t = 0; t < T; t++) {
            float* p = &probs_[(size_t)t * E];
            float* s = &score_[(size_t)t * E];
            float* m = &mask_[(size_t)t * E];
            softmax_scaled(in.logits + (size_t)t * in.ld, E, inv_tau(), p);
            gate_dropout_mask(drop ? in.uniform + (size_t)t * E : nullptr, E, cfg_.gate_dropout, m);
            for (int i = 0; i < E; i++) s[i] = p[i] * m[i];
            select_topk(s, nullptr, E, 2, idx_.data());
            const int e1 = idx_[0], e2 = idx_[1];
            const double S = (double)s[e1] + s[e2];
            const float g1 = S > 0 ? (float)(s[e1] / S) : 0.f;
            const float g2 = S > 0 ? (float)(s[e2] / S) : 0.f;
            const bool use2 = !in.training || 2.f * g2 > in.gshard_u[t];
            e2_[t] = e2;
            out.token[2 * t] = out.token[2 * t + 1] = t;
            out.expert[2 * t] = e1;
            out.weight[2 * t] = g1;
            out.expert[2 * t + 1] = use2 ? e2 : -1;
            out.weight[2 * t + 1] = use2 ? g2 : 0.f;
        }
    }

    // g_j = s_j / S over the two: ds_j = dg_j / S - (dg1 s1 + dg2 s2) / S²; an unused slot has
    // no weight, so dg2 = 0 there, but g1 still depends on s2.
    void route_backward(const RouterInput& in, const Routing& r, const float* dw,
                        float* dlogits) override {
        const int T = in.T, E = in.E;
        ds_.resize(E);
        for (int t = 0; t < T; t++) {
            const float* s = &score_[(size_t)t * E];
            const int e1 = r.expert[2 * t], e2 = e2_[t];
            const double dg1 = dw[2 * t], dg2 = r.expert[2 * t + 1] >= 0 ? dw[2 * t + 1] : 0.0;
            const double S = (double)s[e1] + s[e2];
            std::fill(ds_.begin(), ds_.end(), 0.f);
            if (S > 0) {
                const double dot = (dg1 * s[e1] + dg2 * s[e2]) / (S * S);
                ds_[e1] = (float)(dg1 / S - dot);
                ds_[e2] = (float)(dg2 / S - dot);
            }
            const float* m = &mask_[(size_t)t * E];
            for (int i = 0; i < E; i++) ds_[i] *= m[i];
            softmax_scaled_backward(&probs_[(size_t)t * E], ds_.data(), E, inv_tau(),
                                    dlogits + (size_t)t * in.ld);
        }
    }

   private:
    std::vector<float> score_, mask_, ds_;
    std::vector<int> e2_, idx_;
};

}  // namespace

std::unique_ptr<Router> make_router_gshard(const MoeConfig& c) {
    if (c.top_k != 2)
        fail("router gshard routes each token to at most 2 experts: top_k must be 2 (got {})",
             c.top_k);
    return std::make_unique<GshardRouter>(c);
}

}  // namespace moe
