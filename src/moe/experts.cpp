#include "moe/experts.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

#include "kernels/activations.h"
#include "kernels/gemm.h"

namespace moe {

void act_forward(Activation act, const float* h, float* a, int64_t rows, int f) {
    switch (act) {
        case Activation::swiglu: swiglu_forward(h, a, rows, f); break;
        case Activation::gelu: gelu_forward(h, a, rows * f); break;
        case Activation::relu: relu_forward(h, a, rows * f); break;
    }
}

void act_backward(Activation act, const float* h, const float* da, float* dh, int64_t rows,
                  int f) {
    switch (act) {
        case Activation::swiglu: swiglu_backward(h, da, dh, rows, f); break;
        case Activation::gelu: gelu_backward(h, da, dh, rows * f); break;
        case Activation::relu: relu_backward(h, da, dh, rows * f); break;
    }
}

// Rows split evenly over the OpenMP threads (each chunk is independent elementwise work).
static void act_rows_threaded(bool fwd, Activation act, const float* h, const float* da, float* o,
                              int64_t rows, int f, bool threaded) {
    const int hf = ffn_hidden(act, f);
    auto run = [&](int64_t r0, int64_t r1) {
        if (r1 <= r0) return;
        if (fwd)
            act_forward(act, h + r0 * hf, o + r0 * f, r1 - r0, f);
        else
            act_backward(act, h + r0 * hf, da + r0 * f, o + r0 * hf, r1 - r0, f);
    };
    if (!threaded || rows * hf < (1 << 14) || omp_get_max_threads() == 1) {
        run(0, rows);
        return;
    }
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), it = omp_get_thread_num();
        run(rows * it / nt, rows * (it + 1) / nt);
    }
}

void ffn_forward(Activation act, int n, int d, int f, const float* x, const float* w13,
                 const float* w2, float* h, float* a, float* out, float beta_out, bool threaded,
                 Precision prec) {
    if (n <= 0) return;
    const int hf = ffn_hidden(act, f);
    gemm(prec, false, true, n, hf, d, 1.f, x, d, w13, d, 0.f, h, hf);
    act_rows_threaded(true, act, h, nullptr, a, n, f, threaded);
    gemm(prec, false, true, n, d, f, 1.f, a, f, w2, f, beta_out, out, d);
}

void ffn_backward(Activation act, int n, int d, int f, const float* x, const float* w13,
                  const float* w2, const float* h, const float* a, const float* dout, float* dx,
                  float beta_dx, float* dw13, float* dw2, float* da, float* dh, bool threaded,
                  Precision prec) {
    if (n <= 0) return;
    const int hf = ffn_hidden(act, f);
    // dout is read by the first two GEMMs back to back while it is warm; dh likewise by the last two.
    // A null dw2 / dw13 is a frozen weight: its gradient GEMM is skipped, dx is still computed.
    if (dw2) gemm(prec, true, false, d, f, n, 1.f, dout, d, a, f, 1.f, dw2, f);  // dw2 += dout^T a
    gemm(prec, false, false, n, f, d, 1.f, dout, d, w2, f, 0.f, da, f);    // da = dout w2
    act_rows_threaded(false, act, h, da, dh, n, f, threaded);              // dh = act'(h) da
    gemm(prec, false, false, n, d, hf, 1.f, dh, hf, w13, d, beta_dx, dx, d);  // dx = dh w13
    if (dw13) gemm(prec, true, false, hf, d, n, 1.f, dh, hf, x, d, 1.f, dw13, d);  // dw13 += dh^T x
}

static void act_forward_ref(Activation act, const float* h, float* a, int64_t rows, int f) {
    switch (act) {
        case Activation::swiglu: swiglu_forward_ref(h, a, rows, f); break;
        case Activation::gelu: gelu_forward_ref(h, a, rows * f); break;
        case Activation::relu: relu_forward_ref(h, a, rows * f); break;
    }
}

static void act_backward_ref(Activation act, const float* h, const float* da, float* dh,
                             int64_t rows, int f) {
    switch (act) {
        case Activation::swiglu: swiglu_backward_ref(h, da, dh, rows, f); break;
        case Activation::gelu: gelu_backward_ref(h, da, dh, rows * f); break;
        case Activation::relu: relu_backward_ref(h, da, dh, rows * f); break;
    }
}

void ffn_forward_ref(Activation act, int n, int d, int f, const float* x, const float* w13,
                     const float* w2, float* h, float* a, float* out) {
    const int hf = ffn_hidden(act, f);
    sgemm_ref(false, true, n, hf, d, 1.f, x, d, w13, d, 0.f, h, hf);
    act_forward_ref(act, h, a, n, f);
    sgemm_ref(false, true, n, d, f, 1.f, a, f, w2, f, 0.f, out, d);
}

void ffn_backward_ref(Activation act, int n, int d, int f, const float* x, const float* w13,
                      const float* w2, const float* h, const float* a, const float* dout,
                      float* dx, float* dw13, float* dw2, float* da, float* dh) {
    const int hf = ffn_hidden(act, f);
    sgemm_ref(true, false, d, f, n, 1.f, dout, d, a, f, 1.f, dw2, f);
    sgemm_ref(false, false, n, f, d, 1.f, dout, d, w2, f, 0.f, da, f);
    act_backward_ref(act, h, da, dh, n, f);
    sgemm_ref(false, false, n, d, hf, 1.f, dh, hf, w13, d, 0.f, dx, d);
    sgemm_ref(true, false, hf, d, n, 1.f, dh, hf, x, d, 1.f, dw13, d);
}

ExpertThreads expert_threads_from_env() {
    const char* s = std::getenv("MOE_EXPERT_THREADS");
    if (!s) return ExpertThreads::automatic;
    if (!std::strcmp(s, "blas")) return ExpertThreads::blas;
    if (!std::strcmp(s, "experts")) return ExpertThreads::experts;
    return ExpertThreads::automatic;
}

ExpertThreads choose_expert_threads(ExpertThreads want, int E, const int32_t* offsets, int d,
                                    int f, int threads) {
    if (want != ExpertThreads::automatic) return want;
    if (threads <= 1) return ExpertThreads::blas;
    // Parallel over experts wins when there are enough busy experts to balance the threads and
    // the largest one is not a big share of the work (measured: docs/layer.md); otherwise let
    // BLAS split each GEMM.
    int64_t total = offsets[E], largest = 0;
    int busy = 0;
    for (int e = 0; e < E; e++) {
        int64_t n = offsets[e + 1] - offsets[e];
        largest = std::max(largest, n);
        busy += n > 0;
    }
    // Tiny batches (decode, tests): waking the pool costs more than the work.
    if (total == 0 || (double)total * d * f < (double)(1 << 18)) return ExpertThreads::blas;
    if (busy >= 2 * threads && largest * threads <= total + total / 4) return ExpertThreads::experts;
    return ExpertThreads::blas;
}

// Experts by decreasing row count (largest first: the classic list-scheduling order keeps the
// threads' finishing times close); ties by index, so the order is fixed.
static std::vector<int> experts_by_size(const GroupedFfn& g) {
    std::vector<int> order(g.E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
        return g.offsets[x + 1] - g.offsets[x] > g.offsets[y + 1] - g.offsets[y];
    });
    return order;
}

void experts_forward(const GroupedFfn& g, const float* xp, float* h, float* a, float* out,
                     ExpertThreads how) {
    const int d = g.d, f = g.f, hf = ffn_hidden(g.act, f);
    auto one = [&](int e, bool threaded) {
        int64_t r0 = g.offsets[e], n = g.offsets[e + 1] - r0;
        if (n == 0) return;
        const float* w = g.weights + e * g.stride;
        ffn_forward(g.act, (int)n, d, f, xp + r0 * d, w, w + (int64_t)hf * d, h + r0 * hf,
                    a + r0 * f, out + r0 * d, 0.f, threaded, g.prec);
    };
    if (how == ExpertThreads::experts) {
        std::vector<int> order = experts_by_size(g);
#pragma omp parallel for schedule(dynamic, 1)
        for (int i = 0; i < g.E; i++) one(order[i], false);
    } else {
        for (int e = 0; e < g.E; e++) one(e, true);
    }
}

void experts_backward(const GroupedFfn& g, const float* xp, const float* h, const float* a,
                      const float* dout, float* dxp, float* da, float* dh, ExpertThreads how) {
    const int d = g.d, f = g.f, hf = ffn_hidden(g.act, f);
    auto one = [&](int e, bool threaded) {
        int64_t r0 = g.offsets[e], n = g.offsets[e + 1] - r0;
        if (n == 0) return;
        const float* w = g.weights + e * g.stride;
        float* gw = g.grads + e * g.stride;
        float* gw13 = g.frozen13 && g.frozen13[e] ? nullptr : gw;
        float* gw2 = g.frozen2 && g.frozen2[e] ? nullptr : gw + (int64_t)hf * d;
        ffn_backward(g.act, (int)n, d, f, xp + r0 * d, w, w + (int64_t)hf * d, h + r0 * hf,
                     a + r0 * f, dout + r0 * d, dxp + r0 * d, 0.f, gw13, gw2,
                     da + r0 * f, dh + r0 * hf, threaded, g.prec);
    };
    if (how == ExpertThreads::experts) {
        std::vector<int> order = experts_by_size(g);
#pragma omp parallel for schedule(dynamic, 1)
        for (int i = 0; i < g.E; i++) one(order[i], false);
    } else {
        for (int e = 0; e < g.E; e++) one(e, true);
    }
}

}  // namespace moe
