// Dense softmax gating (Jacobs/Jordan; Eigen et al.): G = softmax(L/tau), every expert runs with
// weight G_i. Routing has k = E slots per token, slot i = expert i. Gate dropout (training) scales
// p_i by [u_i >= q]/(1-q) after the softmax.
#include <memory>

#include "moe/balance.h"

namespace moe {
namespace {

class SoftmaxRouter : public RouterBase {
   public:
    using RouterBase::RouterBase;

   protected:
    // logits [T, ld] -> probs_ [T,E], out: k=E slots, weight p' = p * mask.
    void route(const RouterInput& in, Routing& out) override {
        const int T = in.T, E = in.E;
        out.k = E;
        out.token.resize((size_t)T * E);
        out.expert.resize((size_t)T * E);
        out.weight.resize((size_t)T * E);
        mask_.resize((size_t)T * E);
        const bool drop = dropout_on(in);
        for (int t = 0; t < T; t++) {
            float* p = &probs_[(size_t)t * E];
            float* m = &mask_[(size_t)t * E];
            softmax_scaled(in.logits + (size_t)t * in.ld, E, inv_tau(), p);
            gate_dropout_mask(drop ? in.uniform + (size_t)t * E : nullptr, E, cfg_.gate_dropout, m);
            for (int i = 0; i < E; i++) {
                const size_t a = (size_t)t * E + i;
                out.token[a] = t;
                out.expert[a] = i;
                out.weight[a] = p[i] * m[i];
            }
        }
    }

    // dp_i = dw_i * mask_i, then through the softmax.
    void route_backward(const RouterInput& in, const Routing& r, const float* dw,
                        float* dlogits) override {
        const int T = in.T, E = in.E;
        dp_.resize(E);
        for (int t = 0; t < T; t++) {
            for (int i = 0; i < E; i++) dp_[i] = dw[(size_t)t * E + i] * mask_[(size_t)t * E + i];
            softmax_scaled_backward(&probs_[(size_t)t * E], dp_.data(), E, inv_tau(),
                                    dlogits + (size_t)t * in.ld);
        }
    }

   private:
    std::vector<float> mask_, dp_;
};

}  // namespace

std::unique_ptr<Router> make_router_softmax(const MoeConfig& c) {
    return std::make_unique<SoftmaxRouter>(c);
}

}  // namespace moe
