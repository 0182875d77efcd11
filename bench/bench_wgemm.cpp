// Micro benchmark of the inference product wgemm (src/kernels/typed_gemm.h): y [M, N] =
// x [M, K] W^T with W stored as F32, F16, BF16, Q8_0 and Q4_0, one expert's matrix of the
// issue-9 shape by default (M tokens routed to it). GFLOP/s, median of 9 runs, for the kernel
// wgemm picks on this CPU and, beside it, the AVX2 one (MOE_CPU_CAP's path); and the GB/s of W
// the chosen kernel reads (decode: M = 1 with W larger than the caches, e.g. 1 262144 1024).
//   build/bench_wgemm [M N K [threads]]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/aligned_vector.h"
#include "kernels/q8_gemm.h"
#include "kernels/typed_gemm.h"
#include "moe/rng.h"

using namespace moe;

template <class F>
static double median_s(F f) {
    std::vector<double> t;
    for (int rep = 0; rep < 9; rep++) {
        auto t0 = std::chrono::steady_clock::now();
        f();
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

int main(int argc, char** argv) {
    const int M = argc > 3 ? atoi(argv[1]) : 32, N = argc > 3 ? atoi(argv[2]) : 3584,
              K = argc > 3 ? atoi(argv[3]) : 1024;
    if (argc > 4) omp_set_num_threads(atoi(argv[4]));
    if (M < 1 || N < 1 || K < 32 || K % 32) {
        fprintf(stderr, "bench_wgemm: M, N >= 1 and K a multiple of 32\n");
        return 1;
    }
    Rng rng(1);
    // W in 2 MiB pages where the kernel gives them, as a loaded model holds its weights
    // (io/file_map.h): decode of a W larger than the caches reads what the model reads
    HugePageVector<float> w((size_t)N * K);
    std::vector<float> x((size_t)M * K), y((size_t)M * N);
    rng.fill_normal(w.data(), (int64_t)w.size(), 0.f, 1.f);
    rng.fill_normal(x.data(), (int64_t)x.size(), 0.f, 1.f);
    HugePageVector<uint16_t> h16(w.size()), hb(w.size());
    for (size_t i = 0; i < w.size(); i++) h16[i] = f32_to_f16(w[i]), hb[i] = f32_to_bf16(w[i]);
    HugePageVector<uint8_t> q8((size_t)N * (K / 32) * kQ8BlockBytes), q4((size_t)N * (K / 32) * kQ4BlockBytes);
    for (int r = 0; r < N; r++) {
        quantize_row_q8_0(&w[(size_t)r * K], K, &q8[(size_t)r * (K / 32) * kQ8BlockBytes]);
        quantize_row_q4_0(&w[(size_t)r * K], K, &q4[(size_t)r * (K / 32) * kQ4BlockBytes]);
    }
    const WeightView views[] = {{WType::f32, N, K, w.data()}, {WType::f16, N, K, h16.data()},
                                {WType::bf16, N, K, hb.data()}, {WType::q8_0, N, K, q8.data()},
                                {WType::q4_0, N, K, q4.data()}};
    const WIsa best = wgemm_isa();
    printf("M=%d N=%d K=%d threads=%d: GFLOP/s (and GB/s of W)\n| type | %s | avx2 | %s GB/s |\n"
           "|---|---|---|---|\n", M, N, K, omp_get_max_threads(), wisa_name(best), wisa_name(best));
    for (const WeightView& v : views) {
        double g[2];
        for (int i = 0; i < 2; i++) {
            wgemm_set_isa(i == 0 ? best : WIsa::avx2);
            wgemm(y.data(), N, x.data(), K, v, M);  // warm: scratch, pages
            g[i] = 2.0 * M * N * K / median_s([&] { wgemm(y.data(), N, x.data(), K, v, M); }) * 1e-9;
        }
        wgemm_set_isa(best);
        const double gbs = g[0] / (2.0 * M * K) * wtype_row_bytes(v.type, K);  // W's bytes / time
        printf("| %s | %.1f | %.1f | %.1f |\n", wtype_name(v.type), g[0], g[1], gbs);
    }
}
