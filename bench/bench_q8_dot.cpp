// Micro benchmark for the Q8_0 decode kernel's choice (src/kernels/q8_gemm.h): one weight
// matrix [N, K] times one input row, by
//   int8    the input quantised per 32-block, integer dot products (maddubs; what wgemm runs)
//   widen   int8 widened to fp32, FMA with the fp32 input
//   bf16    the same matrix as BF16 (typed_gemm's decode), the precision it replaces
// on one thread, in cache (a small matrix) and from memory (a large one). Median of 15 runs.
//   build/bench_q8_dot [N K]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/q8_gemm.h"
#include "kernels/typed_gemm.h"
#include "moe/rng.h"

using namespace moe;

template <class F>
static double median_s(F f) {
    std::vector<double> t;
    for (int rep = 0; rep < 15; rep++) {
        auto t0 = std::chrono::steady_clock::now();
        f();
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

static void run(int N, int K) {
    Rng rng(1);
    std::vector<float> w((size_t)N * K), x(K);
    rng.fill_normal(w.data(), (int64_t)w.size(), 0.f, 1.f);
    rng.fill_normal(x.data(), K, 0.f, 1.f);
    std::vector<int8_t> q(w.size());
    std::vector<uint16_t> d(w.size() / 32), wb(w.size());
    for (size_t b = 0; b < w.size() / 32; b++) d[b] = quantize_block_q8_0(&w[b * 32], &q[b * 32]);
    for (size_t i = 0; i < w.size(); i++) wb[i] = f32_to_bf16(w[i]);
    const WeightView wq{WType::q8_0, N, K, q.data(), d.data()};
    const WeightView wbv{WType::bf16, N, K, wb.data()};
    const Q8Rows R = q8_rows(wq);
    std::vector<int8_t> qx(K);
    std::vector<float> dx(K / 32), y(N);
    volatile float sink = 0;
    const double t_int8 = median_s([&] {
        q8_quantize_activation(x.data(), K, qx.data(), dx.data());
        for (int n = 0; n < N; n++) y[n] = q8_dot_row(1, R, n, qx.data(), dx.data(), K);
        sink = sink + y[N - 1];
    });
    const double t_widen = median_s([&] {
        for (int n = 0; n < N; n++) y[n] = q8_dot_row_widen_avx2(R, n, x.data(), K);
        sink = sink + y[N - 1];
    });
    const double t_bf16 = median_s([&] {
        wgemm(y.data(), N, x.data(), K, wbv, 1);
        sink = sink + y[N - 1];
    });
    const double gb_q8 = (double)N * K * (1 + 2.0 / 32) / 1e9, gb_bf16 = (double)N * K * 2 / 1e9;
    std::printf("| %5d x %5d | %-6s | %8.1f us | %6.2f GB/s |\n", N, K, "int8", t_int8 * 1e6,
                gb_q8 / t_int8);
    std::printf("| %5d x %5d | %-6s | %8.1f us | %6.2f GB/s |\n", N, K, "widen", t_widen * 1e6,
                gb_q8 / t_widen);
    std::printf("| %5d x %5d | %-6s | %8.1f us | %6.2f GB/s |\n", N, K, "bf16", t_bf16 * 1e6,
                gb_bf16 / t_bf16);
}

int main(int argc, char** argv) {
    if (wgemm_isa() == WIsa::scalar) {
        std::printf("skipped: this CPU has no AVX2\n");
        return 0;
    }
    wgemm_set_isa(WIsa::avx2);
    std::printf("one thread; isa avx2 (bf16 row: typed_gemm's AVX2 decode)\n");
    std::printf("| shape | kernel | median | weights read |\n|---|---|---|---|\n");
    if (argc == 3) {
        run(std::atoi(argv[1]), std::atoi(argv[2]));
        return 0;
    }
    run(256, 1024);    // 0.27 MB of int8: in cache
    run(3584, 1024);   // an expert's gate: 3.9 MB
    run(14336, 4096);  // 62 MB: from memory
}
