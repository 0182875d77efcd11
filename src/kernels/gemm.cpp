#include "kernels/gemm.h"

#include <cblas.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/onednn_gemm.h"
#include "moe/error.h"

namespace moe {

Precision precision_from_string(const std::string& s) {
    if (s == "fp32") return Precision::fp32;
    if (s == "bf16") return Precision::bf16;
    fail("precision '{}': use fp32 or bf16", s);
}
const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {  // BLAS would leave C untouched for K = 0 only when beta = 1
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(long)i * ldc + j] = beta == 0.f ? 0.f : beta * C[(long)i * ldc + j];
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void sgemm_ref(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
               int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int p = 0; p < K; p++) {
                float a = trans_a ? A[(long)p * lda + i] : A[(long)i * lda + p];
                float b = trans_b ? B[(long)j * ldb + p] : B[(long)p * ldb + j];
                acc += (double)a * b;
            }
            float& c = C[(long)i * ldc + j];
            c = (float)(alpha * acc + (beta == 0.f ? 0.0 : (double)beta * c));
        }
    }
}

// ---- bf16 rounding ---------------------------------------------------------------------------

// (the rounding itself: kernels/bf16.h, shared with the inference side's f32_to_bf16)
float round_bf16(float x) { return bf16_bits_to_f32(bf16_bits_rne(x)); }
void round_bf16(const float* x, float* y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = bf16_bits_to_f32(bf16_bits_rne(x[i]));
}
static void to_bf16(const float* x, uint16_t* y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = bf16_bits_rne(x[i]);
}

// op(X) stored rows x cols with stride ld (rows = M or K as stored, i.e. already transposed when
// trans): copied densely (stride cols) through fn. Returns the new stride.
template <class T, class Fn>
static int copy_dense(const float* x, int rows, int cols, int ld, std::vector<T>& buf, Fn fn) {
    if (buf.size() < (size_t)rows * cols) buf.resize((size_t)rows * cols);
    for (int r = 0; r < rows; r++)
        fn(x + (size_t)r * ld, buf.data() + (size_t)r * cols, (size_t)cols);
    return cols;
}

// ---- engines ---------------------------------------------------------------------------------

const char* gemm_engine_name(GemmEngine e) {
    switch (e) {
        case GemmEngine::openblas:
            return "openblas";
        case GemmEngine::onednn:
            return "onednn";
        case GemmEngine::own:
            return "own";
    }
    return "?";
}

static std::atomic<int> g_forced{-2};  // -2: not read yet; -1: automatic

static int forced_engine() {
    int f = g_forced.load(std::memory_order_relaxed);
    if (f != -2) return f;
    f = -1;
    if (const char* s = std::getenv("MOE_GEMM_ENGINE")) {
        if (!std::strcmp(s, "openblas"))
            f = (int)GemmEngine::openblas;
        else if (!std::strcmp(s, "onednn") && onednn_built())
            f = (int)GemmEngine::onednn;
        else if (!std::strcmp(s, "own"))
            f = (int)GemmEngine::own;
    }
    g_forced.store(f, std::memory_order_relaxed);
    return f;
}

void gemm_force_engine(int engine) {
    if (engine == (int)GemmEngine::onednn && !onednn_built()) engine = -1;
    g_forced.store(engine, std::memory_order_relaxed);
}
bool gemm_have_onednn() { return onednn_built(); }
bool gemm_onednn_bf16() { return onednn_bf16_available(); }

GemmEngine gemm_engine(Precision prec, bool trans_a, bool trans_b, int M, int N, int K) {
    const int f = forced_engine();
    if (prec == Precision::bf16) {
        // oneDNN's bf16 kernels where the CPU has them; else rounded copies (own).
        if (f == (int)GemmEngine::own || f == (int)GemmEngine::openblas) return GemmEngine::own;
        return onednn_bf16_available() ? GemmEngine::onednn : GemmEngine::own;
    }
    if (f == (int)GemmEngine::openblas || f == (int)GemmEngine::onednn) return (GemmEngine)f;
    return GemmEngine::openblas;
}

static void gemm_fp32(GemmEngine e, bool ta, bool tb, int M, int N, int K, float alpha,
                      const float* A, int lda, const float* B, int ldb, float beta, float* C,
                      int ldc) {
    if (e == GemmEngine::onednn && K > 0 &&
        onednn_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        return;
    sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(Precision prec, bool ta, bool tb, int M, int N, int K, float alpha, const float* A,
          int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    if (M <= 0 || N <= 0) return;
    const GemmEngine e = gemm_engine(prec, ta, tb, M, N, K);
    if (prec == Precision::fp32 || K <= 0)
        return gemm_fp32(e, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    // Operands as stored: A is [M,K] or (ta) [K,M]; B is [K,N] or (tb) [N,K].
    const int a_rows = ta ? K : M, a_cols = ta ? M : K;
    const int b_rows = tb ? N : K, b_cols = tb ? K : N;
    // Per-thread scratch, grown only: calls come from inside parallel regions (experts), and
    // buffers handed back to the system cost first-touch faults on the next call (ANCHORS.md).
    if (e == GemmEngine::onednn) {
        static thread_local std::vector<uint16_t> a16, b16;
        static thread_local std::vector<float> tmp;
        const int la = copy_dense(A, a_rows, a_cols, lda, a16, to_bf16);
        const int lb = copy_dense(B, b_rows, b_cols, ldb, b16, to_bf16);
        const bool direct = alpha == 1.f && beta == 0.f;
        if (!direct && tmp.size() < (size_t)M * N) tmp.resize((size_t)M * N);
        float* out = direct ? C : tmp.data();
        if (onednn_gemm_bf16(ta, tb, M, N, K, a16.data(), la, b16.data(), lb, out,
                             direct ? ldc : N)) {
            if (!direct)
                for (int i = 0; i < M; i++) {
                    float* c = C + (size_t)i * ldc;
                    const float* t = tmp.data() + (size_t)i * N;
                    for (int j = 0; j < N; j++)
                        c[j] = alpha * t[j] + (beta == 0.f ? 0.f : beta * c[j]);
                }
            return;
        }
        // unavailable after all: the rounded copies below
    }
    static thread_local std::vector<float> ar, br;
    const auto rnd = [](const float* x, float* y, size_t n) { round_bf16(x, y, n); };
    const int la = copy_dense(A, a_rows, a_cols, lda, ar, rnd);
    const int lb = copy_dense(B, b_rows, b_cols, ldb, br, rnd);
    sgemm(ta, tb, M, N, K, alpha, ar.data(), la, br.data(), lb, beta, C, ldc);
}

void gemm_ref(Precision prec, bool ta, bool tb, int M, int N, int K, float alpha, const float* A,
              int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    if (prec == Precision::fp32)
        return sgemm_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    std::vector<float> ar, br;
    const auto rnd = [](const float* x, float* y, size_t n) { round_bf16(x, y, n); };
    const int la = copy_dense(A, ta ? K : M, ta ? M : K, lda, ar, rnd);
    const int lb = copy_dense(B, tb ? N : K, tb ? K : N, ldb, br, rnd);
    sgemm_ref(ta, tb, M, N, K, alpha, ar.data(), la, br.data(), lb, beta, C, ldc);
}

}  // namespace moe
