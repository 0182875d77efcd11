// Expert FFNs (DESIGN.md §4 step 5). One expert on n contiguous rows, HF Mixtral orientation
// (y = x W^T):
//   swiglu: h = x [w1; w3]^T [n, 2f] (w1 and w3 adjacent: one GEMM), a = silu(h1) * h3 [n, f]
//   relu / gelu: h = x w1^T [n, f], a = act(h)
//   out = a w2^T [n, d]
// Weights of one expert are contiguous: w13 [hf, d] (hf = 2f for swiglu, else f), then w2 [d, f].
// The grouped versions run every expert of a permuted buffer (rows [off[e], off[e+1]) belong to
// expert e) and choose how to use the threads (ExpertThreads).
#pragma once
#include <cstdint>

#include "moe/moe_layer.h"

namespace moe {

inline int ffn_hidden(Activation act, int f) { return act == Activation::swiglu ? 2 * f : f; }
inline int64_t ffn_weight_floats(Activation act, int d, int f) {
    return (int64_t)ffn_hidden(act, f) * d + (int64_t)d * f;
}

// Activation over rows x f (h has ffn_hidden(act, f) columns). Serial: callers split rows.
void act_forward(Activation act, const float* h, float* a, int64_t rows, int f);
void act_backward(Activation act, const float* h, const float* da, float* dh, int64_t rows, int f);

// x [n,d] -> h [n,hf], a [n,f], out [n,d] = beta_out * out + a w2^T.
// threaded: activation split over OpenMP threads (BLAS threads its own GEMMs); otherwise all
// serial (the caller is inside a parallel region).
void ffn_forward(Activation act, int n, int d, int f, const float* x, const float* w13,
                 const float* w2, float* h, float* a, float* out, float beta_out, bool threaded,
                 Precision prec = Precision::fp32);
// dout [n,d] -> dx [n,d] = beta_dx * dx + dh w13; dw13 += dh^T x, dw2 += dout^T a.
// Scratch: da [n,f], dh [n,hf]. dw13 or dw2 null: that weight is frozen, its GEMM is skipped.
void ffn_backward(Activation act, int n, int d, int f, const float* x, const float* w13,
                  const float* w2, const float* h, const float* a, const float* dout, float* dx,
                  float beta_dx, float* dw13, float* dw2, float* da, float* dh, bool threaded,
                  Precision prec = Precision::fp32);
// References: sgemm_ref (double accumulation) and the `_ref` activations.
void ffn_forward_ref(Activation act, int n, int d, int f, const float* x, const float* w13,
                     const float* w2, float* h, float* a, float* out);
void ffn_backward_ref(Activation act, int n, int d, int f, const float* x, const float* w13,
                      const float* w2, const float* h, const float* a, const float* dout,
                      float* dx, float* dw13, float* dw2, float* da, float* dh);

// How the experts share the threads:
//   blas    — experts one after another, each GEMM threaded by OpenBLAS (few large experts)
//   experts — OpenMP over experts (largest first), every GEMM single-threaded (many small ones)
enum class ExpertThreads { automatic, blas, experts };
ExpertThreads expert_threads_from_env();  // MOE_EXPERT_THREADS=blas|experts, else automatic
ExpertThreads choose_expert_threads(ExpertThreads want, int E, const int32_t* offsets, int d,
                                    int f, int threads);

struct GroupedFfn {
    Activation act = Activation::swiglu;
    int E = 0, d = 0, f = 0;
    const int32_t* offsets = nullptr;  // [E+1]
    const float* weights = nullptr;    // expert e at weights + e * stride
    float* grads = nullptr;            // same layout
    int64_t stride = 0;                // floats per expert (ffn_weight_floats)
    // Frozen weights (fine-tuning, null = none): expert e's w1+w3 (frozen13[e]) or w2
    // (frozen2[e]) get no gradient GEMM in backward.
    const uint8_t* frozen13 = nullptr;
    const uint8_t* frozen2 = nullptr;
    Precision prec = Precision::fp32;  // GEMM operands (bf16: rounded, fp32 accumulation)
};

// xp [n,d] -> h [n,hf], a [n,f], out [n,d] (n = offsets[E]).
void experts_forward(const GroupedFfn& g, const float* xp, float* h, float* a, float* out,
                     ExpertThreads how);
// dout [n,d] -> dxp [n,d]; grads += (scratch da [n,f], dh [n,hf]).
void experts_backward(const GroupedFfn& g, const float* xp, const float* h, const float* a,
                      const float* dout, float* dxp, float* da, float* dh, ExpertThreads how);

}  // namespace moe
