// moe bench gemm: every GEMM engine (docs/precision.md) on the products of one MoE layer step
// (forward and backward of an average expert with T k / E rows) and on a 2048^3 ceiling, in fp32
// and bf16, GFLOP/s beside each other; the engine gemm() picks is marked. What the engine rule in
// src/kernels/gemm.cpp is measured with.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "moe/error.h"
#include "moe/rng.h"
#include "moe/runtime.h"
#include "tools/bench.h"
#include "tools/checked_flags.h"
#include "tools/command.h"

namespace moe::tools {

struct BenchGemmOptions {
    int tokens = 4096, d = 512, ffn = 1024, experts = 8, topk = 2;
    int threads = 0, reps = 7;
    bool json = false;
};

struct GemmShape {
    const char* what;
    bool ta, tb;
    int M, N, K;
};

static double median_ms(const std::vector<double>& v) {
    std::vector<double> s = v;
    std::sort(s.begin(), s.end());
    return s[s.size() / 2];
}

static int run_bench_gemm(const BenchGemmOptions& o) {
    set_threads(o.threads);
    const int n = std::max(1, (int)((int64_t)o.tokens * o.topk / o.experts)), d = o.d, f = o.ffn;
    // The six products of one SwiGLU expert (src/moe/experts.cpp), forward then backward.
    const std::vector<GemmShape> shapes = {
        {"fwd h = x w13^T", false, true, n, 2 * f, d},
        {"fwd out = a w2^T", false, true, n, d, f},
        {"bwd dw2 += dout^T a", true, false, d, f, n},
        {"bwd da = dout w2", false, false, n, f, d},
        {"bwd dx = dh w13", false, false, n, d, 2 * f},
        {"bwd dw13 += dh^T x", true, false, 2 * f, d, n},
        {"ceiling 2048^3", false, false, 2048, 2048, 2048},
    };
    struct Path {
        const char* name;
        Precision prec;
        int engine;  // forced engine
    };
    std::vector<Path> paths = {{"fp32 openblas", Precision::fp32, (int)GemmEngine::openblas}};
    if (gemm_have_onednn())
        paths.push_back({"fp32 onednn", Precision::fp32, (int)GemmEngine::onednn});
    paths.push_back({"bf16 rounded copies", Precision::bf16, (int)GemmEngine::own});
    if (gemm_onednn_bf16())
        paths.push_back({"bf16 onednn", Precision::bf16, (int)GemmEngine::onednn});

    std::printf(
        "moe bench gemm: expert rows n=%d (T=%d k=%d E=%d) d=%d f=%d, %d threads; "
        "GFLOP/s, median of %d; * = gemm()'s choice\n",
        n, o.tokens, o.topk, o.experts, d, f, get_threads(), o.reps);
    std::printf("cpu: %s; %s; oneDNN %s, bf16 kernels %s\n\n", cpu_name().c_str(),
                blas_info().c_str(), gemm_have_onednn() ? "built in" : "absent",
                gemm_onednn_bf16() ? "yes" : "no (bf16 on rounded fp32 copies)");
    std::printf("| product | M x N x K |");
    for (auto& p : paths) std::printf(" %s |", p.name);
    std::printf("\n|---|---|");
    for (size_t i = 0; i < paths.size(); i++) std::printf("---|");
    std::printf("\n");
    nlohmann::json rows = nlohmann::json::array();
    Rng rng(7);
    for (const GemmShape& s : shapes) {
        std::vector<float> A((size_t)s.M * s.K), B((size_t)s.K * s.N), C((size_t)s.M * s.N);
        rng.fill_normal(A.data(), (int64_t)A.size());
        rng.fill_normal(B.data(), (int64_t)B.size());
        const int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
        std::printf("| %s | %d x %d x %d |", s.what, s.M, s.N, s.K);
        nlohmann::json row = {{"product", s.what}, {"M", s.M}, {"N", s.N}, {"K", s.K}};
        const double flops = 2.0 * s.M * s.N * (double)s.K;
        for (const Path& p : paths) {
            gemm_force_engine(-1);
            const GemmEngine chosen = gemm_engine(p.prec, s.ta, s.tb, s.M, s.N, s.K);
            gemm_force_engine(p.engine);
            const int reps = s.M >= 2048 ? std::max(3, o.reps / 2) : o.reps;
            std::vector<double> t;
            for (int r = 0; r < reps + 1; r++) {
                const auto t0 = std::chrono::steady_clock::now();
                gemm(p.prec, s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                     C.data(), s.N);
                const double ms =
                    std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                        .count();
                if (r > 0) t.push_back(ms);  // the first call packs, allocates, builds primitives
            }
            const double gf = flops / (median_ms(t) * 1e6);
            const bool is_choice = (int)chosen == p.engine;
            std::printf(" %.1f%s |", gf, is_choice ? "*" : "");
            row[p.name] = gf;
            if (is_choice) row[std::string(precision_name(p.prec)) + "_choice"] = p.name;
        }
        std::printf("\n");
        rows.push_back(row);
    }
    gemm_force_engine(-1);
    if (o.json) {
        nlohmann::json j = {{"rows", rows},
                            {"threads", get_threads()},
                            {"expert_rows", n},
                            {"cpu", cpu_name()},
                            {"blas", blas_info()},
                            {"onednn", gemm_have_onednn()},
                            {"onednn_bf16", gemm_onednn_bf16()}};
        std::printf("%s\n", j.dump().c_str());
    }
    return 0;
}

static void register_bench_gemm(CLI::App& bench) {
    auto o = std::make_shared<BenchGemmOptions>();
    CLI::App* sub = bench.add_subcommand(
        "gemm",
        "Every GEMM engine (OpenBLAS, oneDNN; fp32 and bf16) on the products of one MoE layer "
        "step and a 2048^3 ceiling, GFLOP/s side by side (docs/precision.md).\n"
        "Example: moe bench gemm --tokens 4096 --d 512 --ffn 256 --experts 64 --topk 8");
    add_checked(sub, "--tokens", o->tokens, Range::in(1, 1 << 22), "tokens T of the layer step");
    add_checked(sub, "--d", o->d, Range::in(1, 1 << 14), "model width d");
    add_checked(sub, "--ffn", o->ffn, Range::in(1, 1 << 16), "expert width f (SwiGLU)");
    add_checked(sub, "--experts", o->experts, Range::in(1, 1 << 16), "experts E");
    add_checked(sub, "--topk", o->topk, Range::in(1, 1 << 16), "experts per token k");
    add_checked(sub, "--threads", o->threads, Range::in(0, 4096), "threads (0: all cores)");
    add_checked(sub, "--reps", o->reps, Range::in(1, 100000), "timed repetitions (median)");
    sub->add_flag("--json", o->json, "last stdout line: one JSON object of the results");
    sub->callback([o]() {
        // A token picks k distinct experts: k > E would time products no layer runs.
        if (o->topk > o->experts)
            usage_fail("--topk: {} is more than --experts {}; a token picks k of the E experts",
                       o->topk, o->experts);
        // Matrices of (T k / E) x 2f and 2f x d floats: refuse sizes that cannot fit.
        if ((int64_t)o->d * o->ffn > (1LL << 28) ||
            (int64_t)o->tokens * o->topk / o->experts * o->ffn > (1LL << 28))
            fail("--d/--ffn/--tokens: the matrices would exceed 2 GB; use a smaller shape");
        exit_code() = run_bench_gemm(*o);
    });
}

static RegisterBench reg_bench_gemm("gemm", register_bench_gemm);

}  // namespace moe::tools
