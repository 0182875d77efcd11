// Balancing losses (DESIGN.md §4, docs/routers.md) with their backward, the small fp32 helpers
// every router shares (scaled softmax, top-k selection, gate dropout), and RouterBase: the part of
// a router that is the same for all of them (input checks, the four aux losses, the order of the
// backward pass). A router file only says how it routes and how its routing differentiates.
//
// Losses are reported unweighted in AuxLosses; backward adds the gradient of
// weighted_total = w_importance*importance + w_load*load + w_switch*switch_loss + w_zloss*z_loss.
#pragma once
#include <cmath>
#include <vector>

#include "moe/router.h"

namespace moe {

// ---- fp32 helpers (exp in float, sums in double: E is small, the cost is nil) -------------------

// p = softmax(x * inv_tau) over n values, max-subtracted.
void softmax_scaled(const float* x, int n, float inv_tau, float* p);
// log sum_i exp(x_i * inv_tau), max-subtracted.
double logsumexp_scaled(const float* x, int n, float inv_tau);
// Backward of p = softmax(x * inv_tau): dx += inv_tau * p ⊙ (dp - <p, dp>).
void softmax_scaled_backward(const float* p, const float* dp, int n, float inv_tau, float* dx);
// The k largest of score (+ bias, when given) in descending order, ties to the lower index.
// idx must hold n ints (scratch); the first k are the answer.
void select_topk(const float* score, const float* bias, int n, int k, int* idx);
// Gate dropout factor for one token: m_i = [u_i >= q] / (1 - q); all ones when u == nullptr.
void gate_dropout_mask(const float* u, int n, float q, float* m);
inline float sigmoidf(float x) { return 1.f / (1.f + std::exp(-x)); }
// softplus(x) = log(1 + e^x), stable for large |x|.
inline float softplusf(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }
// Standard normal CDF and density.
inline double normal_cdf(double z) { return 0.5 * std::erfc(-z * 0.70710678118654752440); }
inline double normal_pdf(double z) { return 0.39894228040143267794 * std::exp(-0.5 * z * z); }

// ---- losses ---------------------------------------------------------------------------------------

// cv²(v) = population variance / (mean² + 1e-10) (Shazeer's cv_squared); 0 for n <= 1.
double cv_squared(const double* v, int n);
// g_i = d cv²(v) / d v_i.
void cv_squared_grad(const double* v, int n, double* g);

// importance = cv²(Importance), Importance_i = Σ_a weight_a over assignments with expert_a = i
// (before capacity). Fills importance [E].
double importance_loss(const Routing& r, std::vector<double>& importance);
// switch = E Σ_i f_i P_i; f_i = share of routed assignments (expert >= 0) going to i (no gradient),
// P_i = mean_t probs[t,i]. Fills f [E]. dL/dprobs[t,i] = E f_i / T.
double switch_loss(const Routing& r, const float* probs, std::vector<double>& f);
// z = (1/T) Σ_t lse_t², lse_t = logsumexp_i(gate[t,i] * inv_tau), gate rows of stride ld.
// Fills lse [T].
double z_loss(const float* gate, int ld, int T, int E, float inv_tau, std::vector<float>& lse);
// dgate[t,i] += scale * 2/T * lse_t * softmax(gate_t * inv_tau)_i * inv_tau.
void z_loss_backward(const float* gate, int ld, int T, int E, float inv_tau,
                     const std::vector<float>& lse, double scale, float* dgate);

// Shazeer's smooth load (noisy top-k, training): for token t and expert i,
//   P(t,i) = Φ((clean_i - kth_excluding(H, k, i)) / sigma_i),
// kth_excluding(H, k, i) = the k-th largest of H over experts j != i (for i in the top k of H the
// (k+1)-th largest overall, else the k-th); when fewer than k other experts exist it is -inf and
// P = 1. thr_idx[t,i] records which expert j gave the threshold (-1 for -inf). All [T,E].
void load_probs(const float* clean, const float* H, const float* sigma, int T, int E, int k,
                float* P, int* thr_idx, int* scratch);
// load = cv²(Load), Load_i = Σ_t P(t,i). Fills load_v [E].
double load_loss(const float* P, int T, int E, std::vector<double>& load_v);

// ---- RouterBase -------------------------------------------------------------------------------------

class RouterBase : public Router {
   public:
    explicit RouterBase(const MoeConfig& cfg) : cfg_(cfg) {}
    void forward(const RouterInput& in, Routing& out, AuxLosses& aux) final;
    void backward(const RouterInput& in, const Routing& r, const float* dweight,
                  float* dlogits) final;

   protected:
    // Fill out (the assignments) and probs_ [T,E]; keep what route_backward needs.
    virtual void route(const RouterInput& in, Routing& out) = 0;
    // dlogits += d(Σ_a dw_a weight_a)/dlogits.
    virtual void route_backward(const RouterInput& in, const Routing& r, const float* dw,
                                float* dlogits) = 0;
    // dlogits += d(Σ dprobs ⊙ probs)/dlogits. Default: probs = softmax(gate/tau).
    virtual void probs_backward(const RouterInput& in, const float* dprobs, float* dlogits);
    // The load loss (noisy top-k only): value after route(), and its backward (scale = w_load).
    virtual double load_value(const RouterInput&) { return 0.0; }
    virtual void load_backward(const RouterInput&, double scale, float* dlogits) {}

    // True when gate dropout applies on this forward (training, q > 0, router supports it).
    bool dropout_on(const RouterInput& in) const {
        return in.training && cfg_.gate_dropout > 0.f && in.uniform != nullptr;
    }
    float inv_tau() const { return 1.f / cfg_.temperature; }

    MoeConfig cfg_;
    int T_ = 0, E_ = 0;

   private:
    void check_input(const RouterInput& in) const;
    std::vector<double> importance_, g_imp_, f_;
    std::vector<float> lse_, dw_, dprobs_;
};

}  // namespace moe
