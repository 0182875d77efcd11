// Noisy top-k gating (Shazeer et al. 2017). Router matrices: router.weight W_g [E,d] then
// router.noise_weight W_noise [E,d], so the logits have 2E columns: L (gate) and Ln (noise).
//   clean = L/tau, sigma = softplus(Ln), H = clean + eps ⊙ sigma, eps ~ N(0,1) (training only;
//   H = clean at inference). G = softmax over the top k of H (+ bias for the choice), 0 elsewhere.
// Load loss (training): P(t,i) = Φ((clean_i - kth_excluding(H, k, i)) / sigma_i), the chance that
// expert i stays in the top k under fresh noise on i; load = cv²(Σ_t P(t,·)). Its gradient flows
// into clean_i, sigma_i and the threshold expert's H_j (as in Shazeer's code, where the threshold
// is a differentiable top_k value).
#include <memory>

#include "moe/balance.h"

namespace moe {
namespace {

class NoisyTopkRouter : public RouterBase {
   public:
    using RouterBase::RouterBase;

    std::vector<std::pair<std::string, int>> logit_matrices(const MoeConfig& c) const override {
        return {{"router.weight", c.n_experts}, {"router.noise_weight", c.n_experts}};
    }
    bool needs_normal(const MoeConfig&) const override { return true; }
    bool needs_uniform(const MoeConfig&) const override { return false; }

   protected:
    // logits [T, ld] -> clean_, sigma_, H_ [T,E], probs_ = softmax(clean), out: k slots per token.
    void route(const RouterInput& in, Routing& out) override {
        const int T = in.T, E = in.E, k = cfg_.top_k;
        const size_t TE = (size_t)T * E;
        out.k = k;
        out.token.resize((size_t)T * k);
        out.expert.resize((size_t)T * k);
        out.weight.resize((size_t)T * k);
        clean_.resize(TE);
        sigma_.resize(TE);
        H_.resize(TE);
        idx_.resize(E);
        w_.resize((size_t)T * k);
        training_ = in.training;
        for (int t = 0; t < T; t++) {
            const float* l = in.logits + (size_t)t * in.ld;
            const size_t o = (size_t)t * E;
            for (int i = 0; i < E; i++) {
                clean_[o + i] = l[i] * inv_tau();
                sigma_[o + i] = softplusf(l[E + i]);
                H_[o + i] = training_ ? clean_[o + i] + in.normal[o + i] * sigma_[o + i]
                                      : clean_[o + i];
            }
            softmax_scaled(l, E, inv_tau(), &probs_[o]);
            select_topk(&H_[o], in.bias, E, k, idx_.data());
            float mx = H_[o + idx_[0]];
            for (int j = 1; j < k; j++) mx = std::max(mx, H_[o + idx_[j]]);
            double sum = 0;
            for (int j = 0; j < k; j++) sum += std::exp(H_[o + idx_[j]] - mx);
            for (int j = 0; j < k; j++) {
                const size_t a = (size_t)t * k + j;
                out.token[a] = t;
                out.expert[a] = idx_[j];
                out.weight[a] = w_[a] = (float)(std::exp(H_[o + idx_[j]] - mx) / sum);
            }
        }
        load_ = 0;
        if (training_) {
            P_.resize(TE);
            thr_.resize(TE);
            load_probs(clean_.data(), H_.data(), sigma_.data(), T, E, k, P_.data(), thr_.data(),
                       idx_.data());
            load_ = load_loss(P_.data(), T, E, load_v_);
        }
    }
    double load_value(const RouterInput&) override { return load_; }

    // dH into the two column blocks: dL_i += dH_i / tau; dLn_i += dH_i * eps_i * sigmoid(Ln_i).
    void add_dH(const RouterInput& in, int t, int i, double dH, float* dl) {
        dl[i] += (float)(dH * inv_tau());
        if (training_)
            dl[in.E + i] += (float)(dH * in.normal[(size_t)t * in.E + i] *
                                    sigmoidf(in.logits[(size_t)t * in.ld + in.E + i]));
    }

    // w = softmax over the selected H: dH_j = w_j (dw_j - <w, dw>).
    void route_backward(const RouterInput& in, const Routing& r, const float* dw,
                        float* dlogits) override {
        const int T = in.T, k = r.k;
        for (int t = 0; t < T; t++) {
            double dot = 0;
            for (int j = 0; j < k; j++) dot += (double)w_[(size_t)t * k + j] * dw[(size_t)t * k + j];
            float* dl = dlogits + (size_t)t * in.ld;
            for (int j = 0; j < k; j++) {
                const size_t a = (size_t)t * k + j;
                add_dH(in, t, r.expert[a], w_[a] * (dw[a] - dot), dl);
            }
        }
    }

    // P = Φ(z), z = (clean_i - H_j)/sigma_i: dclean_i = dz/sigma_i, dH_j = -dz/sigma_i,
    // dsigma_i = -dz z/sigma_i, with dz = dP φ(z) and dP(t,i) = scale * d cv²/d Load_i.
    void load_backward(const RouterInput& in, double scale, float* dlogits) override {
        if (!training_) return;
        const int T = in.T, E = in.E;
        g_.resize(E);
        cv_squared_grad(load_v_.data(), E, g_.data());
        for (int t = 0; t < T; t++) {
            const size_t o = (size_t)t * E;
            float* dl = dlogits + (size_t)t * in.ld;
            for (int i = 0; i < E; i++) {
                const int j = thr_[o + i];
                if (j < 0) continue;  // fewer than k other experts: P = 1, no gradient
                const double sig = sigma_[o + i];
                const double z = ((double)clean_[o + i] - H_[o + j]) / sig;
                const double dz = scale * g_[i] * normal_pdf(z);
                dl[i] += (float)(dz / sig * inv_tau());
                add_dH(in, t, j, -dz / sig, dl);
                const double dsig = -dz * z / sig;
                dl[E + i] += (float)(dsig * sigmoidf(in.logits[(size_t)t * in.ld + E + i]));
            }
        }
    }

   private:
    bool training_ = false;
    double load_ = 0;
    std::vector<float> clean_, sigma_, H_, P_, w_;  // w_: own copy of the slot weights
    std::vector<int> idx_, thr_;
    std::vector<double> load_v_, g_;
};

}  // namespace

std::unique_ptr<Router> make_router_noisy_topk(const MoeConfig& c) {
    return std::make_unique<NoisyTopkRouter>(c);
}

}  // namespace moe
