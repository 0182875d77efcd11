// Switch routing (Fedus et al. 2021): p = softmax(L/tau), e = argmax (p + bias), weight p_e,
// one expert per token (k = 1). Multiplicative jitter acts on the router input and is applied by
// the layer; gate dropout (training) uses p' = p * [u >= q]/(1-q) for the choice and the weight.
#include <memory>

#include "moe/balance.h"

namespace moe {
namespace {

class SwitchRouter : public RouterBase {
   public:
    using RouterBase::RouterBase;

   protected:
    // logits [T, ld] -> probs_ [T,E], out: 1 slot per token.
    void route(const RouterInput& in, Routing& out) override {
        const int T = in.T, E = in.E;
        out.k = 1;
        out.token.resize(T);
        out.expert.resize(T);
        out.weight.resize(T);
        mask_.resize((size_t)T * E);
        const bool drop = dropout_on(in);
        for (int t = 0; t < T; t++) {
            float* p = &probs_[(size_t)t * E];
            float* m = &mask_[(size_t)t * E];
            softmax_scaled(in.logits + (size_t)t * in.ld, E, inv_tau(), p);
            gate_dropout_mask(drop ? in.uniform + (size_t)t * E : nullptr, E, cfg_.gate_dropout, m);
            int best = 0;
            float best_key = p[0] * m[0] + (in.bias ? in.bias[0] : 0.f);
            for (int i = 1; i < E; i++) {
                const float key = p[i] * m[i] + (in.bias ? in.bias[i] : 0.f);
                if (key > best_key) best = i, best_key = key;  // strict: ties keep the lower index
            }
            out.token[t] = t;
            out.expert[t] = best;
            out.weight[t] = p[best] * m[best];
        }
    }

    void route_backward(const RouterInput& in, const Routing& r, const float* dw,
                        float* dlogits) override {
        const int T = in.T, E = in.E;
        dp_.resize(E);
        for (int t = 0; t < T; t++) {
            std::fill(dp_.begin(), dp_.end(), 0.f);
            const int e = r.expert[t];
            dp_[e] = dw[t] * mask_[(size_t)t * E + e];
            softmax_scaled_backward(&probs_[(size_t)t * E], dp_.data(), E, inv_tau(),
                                    dlogits + (size_t)t * in.ld);
        }
    }

   private:
    std::vector<float> mask_, dp_;
};

}  // namespace

std::unique_ptr<Router> make_router_switch(const MoeConfig& c) {
    if (c.top_k != 1)
        fail("router switch routes each token to one expert: top_k must be 1 (got {})", c.top_k);
    return std::make_unique<SwitchRouter>(c);
}

}  // namespace moe
