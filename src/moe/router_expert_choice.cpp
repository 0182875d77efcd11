// Expert choice (Zhou et al. 2022): S = softmax(L/tau) over experts for each token; each expert
// takes its top C tokens by S[:, e] (ties to the lower token index), C = min(T, ceil(cf*T*k/E)),
// weight S[t,e]. A token may be taken by several experts or by none. It looks at the whole batch,
// so it is not causal (a token's routing depends on later tokens).
// Routing.k = 0; assignments grouped by expert in expert order, within an expert by descending S.
#include <algorithm>
#include <cmath>
#include <memory>

#include "moe/balance.h"

namespace moe {
namespace {

class ExpertChoiceRouter : public RouterBase {
   public:
    using RouterBase::RouterBase;
    bool token_choice() const override { return false; }
    bool causal() const override { return false; }
    bool needs_uniform(const MoeConfig&) const override { return false; }

   protected:
    void route(const RouterInput& in, Routing& out) override {
        const int T = in.T, E = in.E;
        for (int t = 0; t < T; t++)
            softmax_scaled(in.logits + (size_t)t * in.ld, E, inv_tau(), &probs_[(size_t)t * E]);
        // Same double arithmetic as the PyTorch peer: ceil(((cf * T) * k) / E).
        const int C = T == 0 ? 0
                             : (int)std::min<double>(
                                   T, std::ceil((double)cfg_.capacity_factor * T * cfg_.top_k / E));
        out.k = 0;
        out.token.resize((size_t)E * C);
        out.expert.resize((size_t)E * C);
        out.weight.resize((size_t)E * C);
        idx_.resize(T);
        for (int e = 0; e < E; e++) {
            for (int t = 0; t < T; t++) idx_[t] = t;
            auto s = [&](int t) { return probs_[(size_t)t * E + e]; };
            std::partial_sort(idx_.begin(), idx_.begin() + C, idx_.end(), [&](int a, int b) {
                return s(a) > s(b) || (s(a) == s(b) && a < b);
            });
            for (int c = 0; c < C; c++) {
                const size_t a = (size_t)e * C + c;
                out.token[a] = idx_[c];
                out.expert[a] = e;
                out.weight[a] = s(idx_[c]);
            }
        }
    }

    // dS[t,e] = dw of the assignment (t,e) if chosen, then through each token's softmax.
    void route_backward(const RouterInput& in, const Routing& r, const float* dw,
                        float* dlogits) override {
        const int T = in.T, E = in.E;
        dS_.assign((size_t)T * E, 0.f);
        for (int a = 0; a < r.n(); a++) dS_[(size_t)r.token[a] * E + r.expert[a]] += dw[a];
        for (int t = 0; t < T; t++)
            softmax_scaled_backward(&probs_[(size_t)t * E], &dS_[(size_t)t * E], E, inv_tau(),
                                    dlogits + (size_t)t * in.ld);
    }

   private:
    std::vector<int> idx_;
    std::vector<float> dS_;
};

}  // namespace

std::unique_ptr<Router> make_router_expert_choice(const MoeConfig& c) {
    if (!(c.capacity_factor > 0.f))
        fail("router expert-choice: capacity_factor={} must be > 0 (C = ceil(cf*T*k/E))",
             c.capacity_factor);
    return std::make_unique<ExpertChoiceRouter>(c);
}

}  // namespace moe
