// Hierarchical two-level gating: a primary router picks groups, a secondary router inside each
// chosen group picks experts; the weight is the product. Router matrices: router.weight [E,d]
// (expert logits L) then router.group_weight [G,d] (group logits Lg). Group g owns experts
// g*m .. g*m+m-1, m = E/G.
//   p_group = softmax(Lg/tau); the topk_groups largest groups are chosen;
//   in a chosen group q = softmax(L/tau over the group's m experts); its k/topk_groups largest run;
//   weight = p_group(g) * q(e).
// Slots: chosen groups in descending p_group, inside a group descending q (ties: lower index).
// probs() = p_group(g(e)) * q_all(e) (q_all: in-group softmax for every group), a distribution.
#include <memory>

#include "moe/balance.h"

namespace moe {
namespace {

class HierarchicalRouter : public RouterBase {
   public:
    explicit HierarchicalRouter(const MoeConfig& c)
        : RouterBase(c), G_(c.n_groups), m_(c.n_experts / c.n_groups) {}

    std::vector<std::pair<std::string, int>> logit_matrices(const MoeConfig& c) const override {
        return {{"router.weight", c.n_experts}, {"router.group_weight", c.n_groups}};
    }
    bool needs_uniform(const MoeConfig&) const override { return false; }

   protected:
    void route(const RouterInput& in, Routing& out) override {
        const int T = in.T, E = in.E, k = cfg_.top_k, tg = cfg_.topk_groups, kk = k / tg;
        out.k = k;
        out.token.resize((size_t)T * k);
        out.expert.resize((size_t)T * k);
        out.weight.resize((size_t)T * k);
        pg_.resize((size_t)T * G_);
        q_.resize((size_t)T * E);
        gidx_.resize(G_);
        eidx_.resize(m_);
        for (int t = 0; t < T; t++) {
            const float* l = in.logits + (size_t)t * in.ld;
            float* pg = &pg_[(size_t)t * G_];
            float* q = &q_[(size_t)t * E];
            softmax_scaled(l + E, G_, inv_tau(), pg);
            for (int g = 0; g < G_; g++) softmax_scaled(l + g * m_, m_, inv_tau(), q + g * m_);
            for (int e = 0; e < E; e++) probs_[(size_t)t * E + e] = pg[e / m_] * q[e];
            select_topk(pg, nullptr, G_, tg, gidx_.data());
            for (int gi = 0; gi < tg; gi++) {
                const int g = gidx_[gi];
                select_topk(q + g * m_, nullptr, m_, kk, eidx_.data());
                for (int j = 0; j < kk; j++) {
                    const size_t a = (size_t)t * k + gi * kk + j;
                    const int e = g * m_ + eidx_[j];
                    out.token[a] = t;
                    out.expert[a] = e;
                    out.weight[a] = pg[g] * q[e];
                }
            }
        }
    }

    // Given dpg [G] and dq [E] of one token: through the group softmax (columns E..E+G) and each
    // group's in-group softmax (columns of its experts).
    void backward_token(int t, const float* dpg, const float* dq, int E, float* dl) {
        softmax_scaled_backward(&pg_[(size_t)t * G_], dpg, G_, inv_tau(), dl + E);
        for (int g = 0; g < G_; g++)
            softmax_scaled_backward(&q_[(size_t)t * E + g * m_], dq + g * m_, m_, inv_tau(),
                                    dl + g * m_);
    }

    // w = pg(g) q(e): dpg(g) += dw q(e), dq(e) += dw pg(g).
    void route_backward(const RouterInput& in, const Routing& r, const float* dw,
                        float* dlogits) override {
        const int T = in.T, E = in.E, k = r.k;
        dpg_.resize(G_);
        dq_.resize(E);
        for (int t = 0; t < T; t++) {
            std::fill(dpg_.begin(), dpg_.end(), 0.f);
            std::fill(dq_.begin(), dq_.end(), 0.f);
            for (int j = 0; j < k; j++) {
                const size_t a = (size_t)t * k + j;
                const int e = r.expert[a], g = e / m_;
                dpg_[g] += dw[a] * q_[(size_t)t * E + e];
                dq_[e] += dw[a] * pg_[(size_t)t * G_ + g];
            }
            backward_token(t, dpg_.data(), dq_.data(), E, dlogits + (size_t)t * in.ld);
        }
    }

    // probs(e) = pg(g(e)) q_all(e): the same product rule over every expert.
    void probs_backward(const RouterInput& in, const float* dprobs, float* dlogits) override {
        const int T = in.T, E = in.E;
        dpg_.resize(G_);
        dq_.resize(E);
        for (int t = 0; t < T; t++) {
            std::fill(dpg_.begin(), dpg_.end(), 0.f);
            for (int e = 0; e < E; e++) {
                const int g = e / m_;
                const float dp = dprobs[(size_t)t * E + e];
                dpg_[g] += dp * q_[(size_t)t * E + e];
                dq_[e] = dp * pg_[(size_t)t * G_ + g];
            }
            backward_token(t, dpg_.data(), dq_.data(), E, dlogits + (size_t)t * in.ld);
        }
    }

   private:
    int G_, m_;
    std::vector<float> pg_, q_, dpg_, dq_;
    std::vector<int> gidx_, eidx_;
};

}  // namespace

std::unique_ptr<Router> make_router_hierarchical(const MoeConfig& c) {
    const int E = c.n_experts, G = c.n_groups, k = c.top_k, tg = c.topk_groups;
    if (G < 1) fail("router hierarchical: n_groups={} must be >= 1 (set --groups)", G);
    if (E % G != 0)
        fail("router hierarchical: n_experts={} is not divisible by n_groups={}", E, G);
    if (tg < 1 || tg > G)
        fail("router hierarchical: topk_groups={} must be in [1, n_groups={}]", tg, G);
    if (k % tg != 0)
        fail("router hierarchical: top_k={} is not divisible by topk_groups={}", k, tg);
    if (k / tg > E / G)
        fail("router hierarchical: top_k/topk_groups={} > {} experts per group (E={}, G={})",
             k / tg, E / G, E, G);
    return std::make_unique<HierarchicalRouter>(c);
}

}  // namespace moe
