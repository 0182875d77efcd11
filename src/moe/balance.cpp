// Balancing losses, shared router helpers and RouterBase (see balance.h, docs/routers.md).
#include "moe/balance.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "moe/error.h"

namespace moe {

// ---- fp32 helpers -------------------------------------------------------------------------------

void softmax_scaled(const float* x, int n, float inv_tau, float* p) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n; i++) mx = std::max(mx, x[i] * inv_tau);
    double s = 0;
    for (int i = 0; i < n; i++) {
        p[i] = std::exp(x[i] * inv_tau - mx);
        s += p[i];
    }
    const float inv = (float)(1.0 / s);
    for (int i = 0; i < n; i++) p[i] *= inv;
}

double logsumexp_scaled(const float* x, int n, float inv_tau) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n; i++) mx = std::max(mx, x[i] * inv_tau);
    double s = 0;
    for (int i = 0; i < n; i++) s += std::exp((double)(x[i] * inv_tau - mx));
    return (double)mx + std::log(s);
}

void softmax_scaled_backward(const float* p, const float* dp, int n, float inv_tau, float* dx) {
    double dot = 0;
    for (int i = 0; i < n; i++) dot += (double)p[i] * dp[i];
    for (int i = 0; i < n; i++) dx[i] += (float)(inv_tau * p[i] * (dp[i] - dot));
}

void select_topk(const float* score, const float* bias, int n, int k, int* idx) {
    for (int i = 0; i < n; i++) idx[i] = i;
    // Ties go to the lower index so the choice never depends on the sort's internals.
    auto key = [&](int i) { return bias ? score[i] + bias[i] : score[i]; };
    std::partial_sort(idx, idx + k, idx + n, [&](int a, int b) {
        const float ka = key(a), kb = key(b);
        return ka > kb || (ka == kb && a < b);
    });
}

void gate_dropout_mask(const float* u, int n, float q, float* m) {
    const float keep = 1.f / (1.f - q);
    for (int i = 0; i < n; i++) m[i] = (u == nullptr) ? 1.f : (u[i] >= q ? keep : 0.f);
}

// ---- losses ---------------------------------------------------------------------------------------

double cv_squared(const double* v, int n) {
    if (n <= 1) return 0.0;
    double mean = 0;
    for (int i = 0; i < n; i++) mean += v[i];
    mean /= n;
    double var = 0;
    for (int i = 0; i < n; i++) var += (v[i] - mean) * (v[i] - mean);
    var /= n;
    return var / (mean * mean + 1e-10);
}

void cv_squared_grad(const double* v, int n, double* g) {
    if (n <= 1) {
        for (int i = 0; i < n; i++) g[i] = 0;
        return;
    }
    double mean = 0;
    for (int i = 0; i < n; i++) mean += v[i];
    mean /= n;
    double var = 0;
    for (int i = 0; i < n; i++) var += (v[i] - mean) * (v[i] - mean);
    var /= n;
    const double den = mean * mean + 1e-10;
    // d var/d v_i = 2 (v_i - mean) / n; d mean/d v_i = 1/n.
    for (int i = 0; i < n; i++)
        g[i] = 2.0 * (v[i] - mean) / (n * den) - var * 2.0 * mean / (n * den * den);
}

double importance_loss(const Routing& r, std::vector<double>& importance) {
    importance.assign(r.E, 0.0);
    for (int a = 0; a < r.n(); a++)
        if (r.expert[a] >= 0) importance[r.expert[a]] += r.weight[a];
    return cv_squared(importance.data(), r.E);
}

double switch_loss(const Routing& r, const float* probs, std::vector<double>& f) {
    f.assign(r.E, 0.0);
    int64_t routed = 0;
    for (int a = 0; a < r.n(); a++)
        if (r.expert[a] >= 0) {
            f[r.expert[a]] += 1.0;
            routed++;
        }
    if (routed == 0 || r.T == 0) {
        f.assign(r.E, 0.0);
        return 0.0;
    }
    for (double& v : f) v /= (double)routed;
    double loss = 0;
    for (int i = 0; i < r.E; i++) {
        double P = 0;
        for (int t = 0; t < r.T; t++) P += probs[(size_t)t * r.E + i];
        loss += f[i] * (P / r.T);
    }
    return r.E * loss;
}

double z_loss(const float* gate, int ld, int T, int E, float inv_tau, std::vector<float>& lse) {
    lse.resize(T);
    double s = 0;
    for (int t = 0; t < T; t++) {
        const double l = logsumexp_scaled(gate + (size_t)t * ld, E, inv_tau);
        lse[t] = (float)l;
        s += l * l;
    }
    return T > 0 ? s / T : 0.0;
}

void z_loss_backward(const float* gate, int ld, int T, int E, float inv_tau,
                     const std::vector<float>& lse, double scale, float* dgate) {
    for (int t = 0; t < T; t++) {
        const float* g = gate + (size_t)t * ld;
        float* dg = dgate + (size_t)t * ld;
        // d lse/d gate_i = softmax_i * inv_tau; exp(g_i*inv_tau - lse) is that softmax.
        const double c = scale * 2.0 / T * lse[t] * inv_tau;
        for (int i = 0; i < E; i++) dg[i] += (float)(c * std::exp((double)g[i] * inv_tau - lse[t]));
    }
}

void load_probs(const float* clean, const float* H, const float* sigma, int T, int E, int k,
                float* P, int* thr_idx, int* scratch) {
    for (int t = 0; t < T; t++) {
        const size_t o = (size_t)t * E;
        for (int i = 0; i < E; i++) scratch[i] = i;
        std::sort(scratch, scratch + E, [&](int a, int b) {
            return H[o + a] > H[o + b] || (H[o + a] == H[o + b] && a < b);
        });
        // Rank of each expert in H (reuse thr_idx as the rank table, then overwrite).
        for (int r = 0; r < E; r++) thr_idx[o + scratch[r]] = r;
        for (int i = 0; i < E; i++) {
            const int rank = thr_idx[o + i];
            // In the top k: the k-th largest of the others is the (k+1)-th overall.
            const int pos = rank < k ? k : k - 1;
            thr_idx[o + i] = pos < E ? scratch[pos] : -1;
        }
        for (int i = 0; i < E; i++) {
            const int j = thr_idx[o + i];
            if (j < 0) {
                P[o + i] = 1.f;
                continue;
            }
            const double z = ((double)clean[o + i] - H[o + j]) / sigma[o + i];
            P[o + i] = (float)normal_cdf(z);
        }
    }
}

double load_loss(const float* P, int T, int E, std::vector<double>& load_v) {
    load_v.assign(E, 0.0);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < E; i++) load_v[i] += P[(size_t)t * E + i];
    return cv_squared(load_v.data(), E);
}

// ---- RouterBase -------------------------------------------------------------------------------------

void RouterBase::check_input(const RouterInput& in) const {
    int cols = 0;
    for (auto& m : logit_matrices(cfg_)) cols += m.second;
    if (in.E != cfg_.n_experts)
        fail("router {}: input has E={} but the config has n_experts={}", cfg_.router, in.E,
             cfg_.n_experts);
    if (in.T < 0) fail("router {}: T={} < 0", cfg_.router, in.T);
    if (in.T > 0 && in.logits == nullptr) fail("router {}: logits is null (T={})", cfg_.router, in.T);
    if (in.ld < cols)
        fail("router {}: logits row stride ld={} < {} router columns", cfg_.router, in.ld, cols);
    if (in.training && in.T > 0) {
        if (needs_normal(cfg_) && in.normal == nullptr)
            fail("router {}: training needs the normal draws [T={}, E={}] (RouterInput.normal)",
                 cfg_.router, in.T, in.E);
        if (needs_uniform(cfg_) && in.uniform == nullptr)
            fail("router {}: gate dropout needs the uniform draws [T={}, E={}] (RouterInput.uniform)",
                 cfg_.router, in.T, in.E);
        if (needs_gshard_u(cfg_) && in.gshard_u == nullptr)
            fail("router {}: training needs the uniform draws [T={}] (RouterInput.gshard_u)",
                 cfg_.router, in.T);
    }
}

void RouterBase::forward(const RouterInput& in, Routing& out, AuxLosses& aux) {
    check_input(in);
    T_ = in.T;
    E_ = in.E;
    probs_.resize((size_t)T_ * E_);
    out.T = T_;
    out.E = E_;
    route(in, out);

    aux = AuxLosses{};
    aux.importance = importance_loss(out, importance_);
    aux.switch_loss = switch_loss(out, probs_.data(), f_);
    aux.z_loss = z_loss(in.logits, in.ld, T_, E_, inv_tau(), lse_);
    aux.load = load_value(in);
    aux.weighted_total = cfg_.w_importance * aux.importance + cfg_.w_load * aux.load +
                         cfg_.w_switch * aux.switch_loss + cfg_.w_zloss * aux.z_loss;
}

void RouterBase::backward(const RouterInput& in, const Routing& r, const float* dweight,
                          float* dlogits) {
    MOE_CHECK(in.T == T_ && in.E == E_ && r.n() >= 0,
              "router backward: T={} E={} but forward had T={} E={}", in.T, in.E, T_, E_);
    std::fill(dlogits, dlogits + (size_t)T_ * in.ld, 0.f);
    if (T_ == 0) return;

    // Importance is a function of the assignment weights only, so its gradient joins dweight.
    const int n = r.n();
    dw_.assign(dweight, dweight + n);
    if (cfg_.w_importance != 0.f) {
        g_imp_.resize(E_);
        cv_squared_grad(importance_.data(), E_, g_imp_.data());
        for (int a = 0; a < n; a++)
            if (r.expert[a] >= 0) dw_[a] += (float)(cfg_.w_importance * g_imp_[r.expert[a]]);
    }
    route_backward(in, r, dw_.data(), dlogits);

    if (cfg_.w_switch != 0.f) {
        dprobs_.resize((size_t)T_ * E_);
        for (int t = 0; t < T_; t++)
            for (int i = 0; i < E_; i++)
                dprobs_[(size_t)t * E_ + i] = (float)(cfg_.w_switch * E_ * f_[i] / T_);
        probs_backward(in, dprobs_.data(), dlogits);
    }
    if (cfg_.w_zloss != 0.f)
        z_loss_backward(in.logits, in.ld, T_, E_, inv_tau(), lse_, cfg_.w_zloss, dlogits);
    if (cfg_.w_load != 0.f) load_backward(in, cfg_.w_load, dlogits);
}

void RouterBase::probs_backward(const RouterInput& in, const float* dprobs, float* dlogits) {
    for (int t = 0; t < T_; t++)
        softmax_scaled_backward(&probs_[(size_t)t * E_], dprobs + (size_t)t * E_, E_, inv_tau(),
                                dlogits + (size_t)t * in.ld);
}

}  // namespace moe
