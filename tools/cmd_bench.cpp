// moe bench: benchmarks as sub-subcommands (tools/bench.h). `moe bench layer` times the MoE layer
// beside a dense FFN of equal active FLOPs on the same BLAS, the machine's sgemm ceiling, the
// expert GEMMs alone, and the PyTorch peer (bench/peers/torch_layer_bench.py) in the same run.
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "moe/experts.h"
#include "moe/moe_layer.h"
#include "moe/process_group.h"
#include "moe/rng.h"
#include "moe/runtime.h"
#include "tools/bench.h"
#include "tools/checked_flags.h"
#include "tools/command.h"
#include "tools/layer_options.h"

namespace moe::tools {

std::vector<std::pair<const char*, RegisterBenchFn>>& bench_registry() {
    static std::vector<std::pair<const char*, RegisterBenchFn>> r;
    return r;
}

static void register_bench(CLI::App& app) {
    CLI::App* bench = app.add_subcommand("bench", "Benchmarks with their peers beside them.\n"
                                                  "Example: moe bench layer --json");
    bench->require_subcommand(1);
    auto& reg = bench_registry();
    std::sort(reg.begin(), reg.end(),
              [](auto& a, auto& b) { return std::string(a.first) < b.first; });
    for (auto& r : reg) r.second(*bench);
}

static RegisterCommand reg_bench("bench", register_bench);

// ---------------------------------------------------------------------------------------------
// moe bench layer

struct BenchLayerOptions {
    LayerShapeOptions shape;
    int reps = 10, warmup = 2;
    bool no_peer = false, json = false;
    bool mpi = false;       // under mpirun: expert-parallel layer, --tokens split over the ranks
    int expert_parallel = 0;  // 0: every rank
    int overlap = 1;          // all-to-all chunks (MoeLayer::set_overlap)
    std::string precision = "fp32";  // GEMM operands (docs/precision.md)
};

struct Timing {
    double median = 0, min = 0, max = 0;
    double faults = 0;  // minor page faults per timed repetition (should be ~0: workspaces reused)
    double cpu = 0;     // median process CPU ms per repetition (robust when the machine is shared)
};

static double cpu_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return 1e3 * ts.tv_sec + 1e-6 * ts.tv_nsec;
}

static long minor_faults() {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_minflt;
}

template <typename F>
static Timing time_ms(F&& fn, int reps, int warmup) {
    for (int i = 0; i < warmup; i++) fn();
    std::vector<double> t, c;
    long f0 = minor_faults();
    for (int i = 0; i < reps; i++) {
        double c0 = cpu_ms(), t0 = now_seconds();
        fn();
        t.push_back(1e3 * (now_seconds() - t0));
        c.push_back(cpu_ms() - c0);
    }
    long f1 = minor_faults();
    std::sort(t.begin(), t.end());
    Timing r;
    r.faults = (double)(f1 - f0) / reps;
    std::sort(c.begin(), c.end());
    r.cpu = c[c.size() / 2];
    r.min = t.front();
    r.max = t.back();
    r.median = t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
    return r;
}

// The PyTorch peer in its best environment (shared/ANCHORS.md): AVX-512 OpenBLAS kernels,
// jemalloc that never purges, same threads. Returns null when python3-torch is absent.
static nlohmann::json run_torch_peer(const BenchLayerOptions& o, const MoeConfig& cfg, int k_eff,
                                     int threads, std::string& why) {
    std::string script = std::string(MOE_SOURCE_DIR) + "/bench/peers/torch_layer_bench.py";
    if (FILE* f = std::fopen(script.c_str(), "r"))
        std::fclose(f);
    else {
        why = "no " + script;
        return nullptr;
    }
    const char* jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    std::string preload;
    if (FILE* f = std::fopen(jemalloc, "r")) {
        std::fclose(f);
        preload = std::string("LD_PRELOAD=") + jemalloc +
                  " MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 ";
    }
    // OpenBLAS's AVX-512 kernels where the CPU (and OS) have AVX-512; on an AVX2 CPU that
    // setting dies with "illegal instruction", and OpenBLAS's own choice is already right.
    const CpuFeatures& cf = cpu_features();
    const char* coretype = cf.avx512f && cf.avx512bw ? "OPENBLAS_CORETYPE=SKYLAKEX " : "";
    std::string cmd = std::string("env ") + coretype + "OMP_NUM_THREADS=" + std::to_string(threads) +
                      " " + preload + "/usr/bin/python3 " + script +
                      fmt::format(" --tokens {} --d {} --ffn {} --experts {} --topk {} "
                                  "--activation {} --reps {} --warmup {} --threads {}{} 2>&1",
                                  o.shape.tokens, cfg.d_model, cfg.d_ff, cfg.n_experts, k_eff,
                                  activation_name(cfg.activation), o.reps, o.warmup, threads,
                                  // bf16: autocast; fp32 runs keep the peer's default
                                  o.precision == "fp32" ? "" : " --precision " + o.precision);
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) {
        why = "cannot start /usr/bin/python3";
        return nullptr;
    }
    std::string out, last;
    char buf[4096];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    int rc = pclose(p);
    size_t end = out.find_last_not_of("\n");
    if (end != std::string::npos) {
        size_t start = out.rfind('\n', end);
        last = out.substr(start == std::string::npos ? 0 : start + 1, end + 1 - (start == std::string::npos ? 0 : start + 1));
    }
    auto j = nlohmann::json::parse(last, nullptr, false);
    if (rc != 0 || j.is_discarded() || !j.is_object()) {
        why = "peer failed: " + (last.empty() ? std::string("no output") : last);
        return nullptr;
    }
    return j;
}

// moe bench layer --mpi (under mpirun, docs/distributed.md): the layer split over the ranks,
// --tokens being the global batch (each rank 1/W of it), fwd+bwd timed; the step split into
// compute, all-to-all and the router's gathers/reductions, and the bytes each rank sends per
// step. Rank 0 prints the slowest rank's figures (a step ends when the last rank is done).
static int run_bench_layer_mpi(const BenchLayerOptions& o) {
    MoeConfig cfg = o.shape.config();
    if (o.reps < 1 || o.warmup < 0)
        fail("--reps {} must be >= 1 and --warmup {} >= 0", o.reps, o.warmup);
    ParallelGroups g = init_parallel(launched_by_mpirun(), o.expert_parallel);
    try {
        set_threads(o.shape.threads);
        const int W = g.world_size(), r = g.world_rank();
        const int Tg = o.shape.tokens, d = cfg.d_model;
        if (Tg % W != 0) fail("--tokens {}: must be divisible by the {} ranks", Tg, W);
        const int T = Tg / W;
        // The transport, for the cost model (docs/distributed.md): all-to-all of one float per
        // peer (latency) and of 4 MiB per peer (bandwidth), medians.
        double lat_us = 0, bw_gbs = 0;
        if (W > 1) {
            auto med_of = [&](int64_t floats, int reps) {
                std::vector<float> sb((size_t)floats * W, 1.f), rb((size_t)floats * W);
                std::vector<int64_t> c(W, floats);
                std::vector<double> ts;
                for (int i = 0; i < reps + 2; i++) {
                    g.world->barrier();
                    double t0 = now_seconds();
                    g.world->alltoallv(sb.data(), c.data(), rb.data(), c.data());
                    if (i >= 2) ts.push_back(now_seconds() - t0);
                }
                std::sort(ts.begin(), ts.end());
                return ts[ts.size() / 2];
            };
            const double t1 = med_of(1, 50);
            const int64_t big = 1 << 20;
            const double tb = med_of(big, 5);
            lat_us = 1e6 * t1;
            bw_gbs = 4.0 * big * (W - 1) / std::max(1e-9, tb - t1) / 1e9;  // bytes each rank sends
        }
        // Each rank holds its experts only, as the trainer does.
        const ExpertShard shard =
            g.ep_size() > 1 ? ExpertShard{g.ep_size(), g.expert->rank()} : ExpertShard{};
        MoeLayer layer(cfg, /*own_buffers=*/true, shard);
        layer.set_parallel(g);
        layer.set_overlap(o.overlap);
        std::vector<float> x((size_t)T * d), y((size_t)T * d), dy((size_t)T * d, 1.f),
            dx((size_t)T * d);
        Rng rng(cfg.seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(r + 1)));
        rng.fill_normal(x.data(), (int64_t)x.size());
        auto step = [&] {
            layer.forward({x.data(), {T, d}}, {y.data(), {T, d}}, true);
            layer.backward({dy.data(), {T, d}}, {dx.data(), {T, d}});
        };
        for (int i = 0; i < o.warmup; i++) step();
        layer.comm_stats() = MoeCommStats{};
        // CPU time of this process per step beside the wall time: on a machine shared with other
        // work (and Linux's per-session CPU shares) the ranks do not get a core each, and the
        // CPU time says what the step costs where they do (waiting in MPI polls, so it counts).
        auto cpu_now = [] {
            timespec ts;
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
            return ts.tv_sec + 1e-9 * ts.tv_nsec;
        };
        std::vector<double> t, cpu;
        for (int i = 0; i < o.reps; i++) {
            g.world->barrier();
            double t0 = now_seconds(), c0 = cpu_now();
            step();
            cpu.push_back(1e3 * (cpu_now() - c0));
            g.world->barrier();  // the step ends when the slowest rank is done
            t.push_back(1e3 * (now_seconds() - t0));
        }
        std::sort(t.begin(), t.end());
        std::sort(cpu.begin(), cpu.end());
        const MoeCommStats c = layer.comm_stats();
        // Per rank per step; the maximum over ranks of the communication times.
        double v[5] = {1e3 * c.alltoall_s / o.reps, 1e3 * c.router_s / o.reps,
                       (double)c.alltoall_bytes / o.reps, (double)c.router_bytes / o.reps,
                       cpu[cpu.size() / 2]};
        std::vector<double> all(5 * W);
        g.world->allgather_bytes(v, sizeof(v), all.data());
        double mx[5] = {0, 0, 0, 0, 0};
        for (int q = 0; q < W; q++)
            for (int i = 0; i < 5; i++) mx[i] = std::max(mx[i], all[5 * q + i]);
        const double med = t[t.size() / 2];
        if (r == 0) {
            std::printf(
                "moe bench layer --mpi: %s (%d ranks), router %s, T=%d (global; %d per rank) "
                "d=%d f=%d E=%d k=%d, %d threads per rank, overlap %d\n",
                g.layout().c_str(), W, cfg.router.c_str(), Tg, T, d, cfg.d_ff, cfg.n_experts,
                cfg.top_k, get_threads(), o.overlap);
            std::printf("fwd+bwd %.2f ms (median of %d, min %.2f): compute %.2f ms, all-to-all "
                        "%.2f ms, router gather/reduce %.2f ms; per rank per step %.2f MiB "
                        "all-to-all, %.3f MiB router\n",
                        med, o.reps, t.front(), std::max(0.0, med - mx[0] - mx[1]), mx[0], mx[1],
                        mx[2] / (1 << 20), mx[3] / (1 << 20));
            std::printf("CPU time per step (median; the busiest rank): %.2f ms\n", mx[4]);
            if (W > 1)
                std::printf("transport: all-to-all latency %.1f us (1 float per peer), %.2f GB/s "
                            "per rank sent (4 MiB per peer)\n",
                            lat_us, bw_gbs);
            if (o.json) {
                nlohmann::json j = {{"layout", g.layout()},
                                    {"ranks", W},
                                    {"tokens", Tg},
                                    {"fwd_bwd_ms", med},
                                    {"fwd_bwd_ms_min", t.front()},
                                    {"alltoall_ms", mx[0]},
                                    {"router_comm_ms", mx[1]},
                                    {"compute_ms", std::max(0.0, med - mx[0] - mx[1])},
                                    {"alltoall_bytes_per_rank", mx[2]},
                                    {"router_bytes_per_rank", mx[3]},
                                    {"threads", get_threads()},
                                    {"overlap", o.overlap},
                                    {"cpu_ms", mx[4]},
                                    {"alltoall_latency_us", lat_us},
                                    {"alltoall_gb_per_s", bw_gbs}};
                std::printf("%s\n", j.dump().c_str());
            }
        }
    } catch (const Error& e) {
        if (g.world_size() > 1) g.world->abort(e.what());
        throw;
    }
    finalize_parallel();
    return 0;
}

static int run_bench_layer(const BenchLayerOptions& o) {
    if (o.mpi) return run_bench_layer_mpi(o);
    MoeConfig cfg = o.shape.config();
    if (o.reps < 1 || o.warmup < 0) fail("--reps {} must be >= 1 and --warmup {} >= 0", o.reps, o.warmup);
    set_threads(o.shape.threads);
    const int threads = get_threads();
    const int T = o.shape.tokens, d = cfg.d_model, f = cfg.d_ff;
    const Precision prec = precision_from_string(o.precision);
    MoeLayer layer(cfg);
    layer.set_precision(prec);
    std::vector<float> x((size_t)T * d), y((size_t)T * d), dy((size_t)T * d, 1.f), dx((size_t)T * d);
    Rng rng(cfg.seed ^ 0x9e3779b97f4a7c15ULL);
    rng.fill_normal(x.data(), (int64_t)x.size());

    // MoE layer (training mode: what a training step runs).
    Timing moe_fwd = time_ms([&] { layer.forward({x.data(), {T, d}}, {y.data(), {T, d}}, true); },
                             o.reps, o.warmup);
    Timing moe_fb = time_ms(
        [&] {
            layer.forward({x.data(), {T, d}}, {y.data(), {T, d}}, true);
            layer.backward({dy.data(), {T, d}}, {dx.data(), {T, d}});
        },
        o.reps, o.warmup);
    const double flops_fwd = layer.last_expert_flops_fwd();
    const MoeStats st = layer.stats();
    int64_t rows = 0;
    for (auto v : st.tokens_per_expert) rows += v;
    const int k_eff = std::max<int>(1, (int)std::lround((double)rows / T));

    // Dense FFN with the same active FLOPs: width k_eff * f on every token, BLAS-threaded GEMMs.
    const int F = k_eff * f, HF = ffn_hidden(cfg.activation, F);
    std::vector<float> dw((size_t)ffn_weight_floats(cfg.activation, d, F)), dg(dw.size()),
        h((size_t)T * HF), a((size_t)T * F), da((size_t)T * F), dh((size_t)T * HF);
    rng.fill_uniform(dw.data(), (int64_t)dw.size(), -0.04f, 0.04f);
    const float* w13 = dw.data();
    const float* w2 = dw.data() + (size_t)HF * d;
    Timing dense_fwd = time_ms(
        [&] {
            ffn_forward(cfg.activation, T, d, F, x.data(), w13, w2, h.data(), a.data(), y.data(),
                        0.f, true, prec);
        },
        o.reps, o.warmup);
    Timing dense_fb = time_ms(
        [&] {
            ffn_forward(cfg.activation, T, d, F, x.data(), w13, w2, h.data(), a.data(), y.data(),
                        0.f, true, prec);
            ffn_backward(cfg.activation, T, d, F, x.data(), w13, w2, h.data(), a.data(), dy.data(),
                         dx.data(), 0.f, dg.data(), dg.data() + (size_t)HF * d, da.data(),
                         dh.data(), true, prec);
        },
        o.reps, o.warmup);
    const double dense_flops_fwd = 2.0 * T * (double)ffn_weight_floats(cfg.activation, d, F);

    // The expert GEMM chain alone (same per-expert row counts as the layer's last step), to
    // compare with the sgemm ceiling.
    std::vector<int32_t> off(cfg.n_experts + 1, 0);
    for (int e = 0; e < cfg.n_experts; e++) off[e + 1] = off[e] + (int32_t)st.tokens_per_expert[e];
    const int hf = ffn_hidden(cfg.activation, f);
    const int64_t stride = ffn_weight_floats(cfg.activation, d, f);
    std::vector<float> ew((size_t)stride * cfg.n_experts), eg(ew.size()), exp_x((size_t)rows * d),
        eh((size_t)rows * hf), ea((size_t)rows * f), eo((size_t)rows * d), edx((size_t)rows * d),
        eda((size_t)rows * f), edh((size_t)rows * hf);
    rng.fill_uniform(ew.data(), (int64_t)ew.size(), -0.04f, 0.04f);
    rng.fill_normal(exp_x.data(), (int64_t)exp_x.size());
    GroupedFfn g;
    g.act = cfg.activation;
    g.E = cfg.n_experts;
    g.d = d;
    g.f = f;
    g.offsets = off.data();
    g.weights = ew.data();
    g.grads = eg.data();
    g.stride = stride;
    g.prec = prec;
    ExpertThreads how = choose_expert_threads(expert_threads_from_env(), g.E, off.data(), d, f, threads);
    Timing exp_fb = time_ms(
        [&] {
            experts_forward(g, exp_x.data(), eh.data(), ea.data(), eo.data(), how);
            experts_backward(g, exp_x.data(), eh.data(), ea.data(), eo.data(), edx.data(),
                             eda.data(), edh.data(), how);
        },
        o.reps, o.warmup);
    const double exp_flops = 3.0 * 2.0 * rows * (double)stride;

    // The ceiling: one large square GEMM in the same precision, engine and threads.
    const int N = 2048;
    std::vector<float> A((size_t)N * N), B((size_t)N * N), C((size_t)N * N);
    rng.fill_normal(A.data(), (int64_t)A.size());
    rng.fill_normal(B.data(), (int64_t)B.size());
    Timing ceil_t = time_ms(
        [&] { gemm(prec, false, false, N, N, N, 1.f, A.data(), N, B.data(), N, 0.f, C.data(), N); },
        std::max(3, o.reps / 2), 1);
    const double sgemm_gflops = 2.0 * N * N * (double)N / (ceil_t.median * 1e6);

    // PyTorch peer.
    nlohmann::json peer = nullptr;
    std::string why = "--no-peer";
    if (!o.no_peer) peer = run_torch_peer(o, cfg, k_eff, threads, why);
    auto pget = [&](const char* k) -> nlohmann::json {
        return peer.is_object() && peer.contains(k) ? peer[k] : nlohmann::json(nullptr);
    };

    const double moe_gflops = 3.0 * flops_fwd / (moe_fb.median * 1e6);
    const double dense_gflops = 3.0 * dense_flops_fwd / (dense_fb.median * 1e6);
    const double exp_gflops = exp_flops / (exp_fb.median * 1e6);
    // The engine of the expert GEMMs (the first forward product of an average expert).
    const GemmEngine engine =
        gemm_engine(prec, false, true, (int)(rows / std::max(1, cfg.n_experts)), hf, d);
    std::printf("moe bench layer: router %s, T=%d d=%d f=%d E=%d k=%d %s%s, %d threads, "
                "precision %s (GEMM engine %s)\n",
                cfg.router.c_str(), T, d, f, cfg.n_experts, cfg.top_k,
                activation_name(cfg.activation), cfg.dropless ? ", dropless" : "", threads,
                precision_name(prec), gemm_engine_name(engine));
    std::printf("cpu: %s; %s; expert threads: %s; median of %d after %d warm-up\n\n",
                cpu_name().c_str(), blas_info().c_str(),
                how == ExpertThreads::experts ? "parallel over experts" : "BLAS-threaded GEMMs",
                o.reps, o.warmup);
    std::printf("| impl | fwd ms | fwd+bwd ms (min..max) | fwd+bwd CPU ms | tokens/s (fwd+bwd) | "
                "GFLOP/s | page faults/rep |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    auto row = [&](const char* name, Timing fw, Timing fb, double gf) {
        std::printf("| %s | %.2f | %.2f (%.2f..%.2f) | %.1f | %.0f | %.1f | %.0f |\n", name,
                    fw.median, fb.median, fb.min, fb.max, fb.cpu, T / (fb.median * 1e-3), gf,
                    fw.faults + fb.faults);
    };
    row("moe.cpp MoE layer", moe_fwd, moe_fb, moe_gflops);
    row(fmt::format("moe.cpp dense FFN (d_ff {})", F).c_str(), dense_fwd, dense_fb, dense_gflops);
    std::printf("| moe.cpp expert GEMMs alone | - | %.2f | %.1f | - | %.1f | %.0f |\n", exp_fb.median,
                exp_fb.cpu, exp_gflops, exp_fb.faults);
    std::printf("| %s GEMM %d^3 (ceiling) | %.2f | - | - | - | %.1f | %.0f |\n",
                precision_name(prec), N, ceil_t.median, sgemm_gflops, ceil_t.faults);
    if (peer.is_object()) {
        double tf = pget("torch_fwd_ms"), tfb = pget("torch_fwdbwd_ms");
        double tdf = pget("torch_dense_fwd_ms"), tdfb = pget("torch_dense_fwdbwd_ms");
        auto cpu = [&](const char* k) { return pget(k).is_number() ? (double)pget(k) : 0.0; };
        std::printf("| PyTorch %s MoE | %.2f | %.2f | %.1f | %.0f | %.1f | - |\n",
                    pget("torch_version").get<std::string>().c_str(), tf, tfb,
                    cpu("torch_fwdbwd_cpu_ms"), T / (tfb * 1e-3), 3.0 * flops_fwd / (tfb * 1e6));
        std::printf("| PyTorch dense FFN | %.2f | %.2f | %.1f | %.0f | %.1f | - |\n", tdf, tdfb,
                    cpu("torch_dense_fwdbwd_cpu_ms"), T / (tdfb * 1e-3),
                    3.0 * dense_flops_fwd / (tdfb * 1e6));
        std::printf("\nspeed-up over PyTorch: fwd %.2fx, fwd+bwd %.2fx\n", tf / moe_fwd.median,
                    tfb / moe_fb.median);
    } else {
        std::printf("| PyTorch | skipped: %s | | | | | |\n", why.c_str());
    }
    std::printf("MoE / dense time: fwd %.3f, fwd+bwd %.3f;  expert GEMMs at %.0f%% of sgemm\n",
                moe_fwd.median / dense_fwd.median, moe_fb.median / dense_fb.median,
                100.0 * exp_gflops / sgemm_gflops);

    if (o.json) {
        nlohmann::json j;
        j["shape"] = {{"router", cfg.router}, {"tokens", T}, {"d", d}, {"ffn", f},
                      {"experts", cfg.n_experts}, {"topk", cfg.top_k},
                      {"activation", activation_name(cfg.activation)}, {"dropless", cfg.dropless}};
        j["moe_fwd_ms"] = moe_fwd.median;
        j["moe_fwdbwd_ms"] = moe_fb.median;
        j["moe_fwdbwd_min_ms"] = moe_fb.min;
        j["moe_fwdbwd_max_ms"] = moe_fb.max;
        j["moe_page_faults_per_rep"] = moe_fb.faults;
        j["moe_fwd_cpu_ms"] = moe_fwd.cpu;
        j["moe_fwdbwd_cpu_ms"] = moe_fb.cpu;
        j["dense_fwd_cpu_ms"] = dense_fwd.cpu;
        j["dense_fwdbwd_cpu_ms"] = dense_fb.cpu;
        j["expert_gemm_cpu_ms"] = exp_fb.cpu;
        j["sgemm_cpu_ms"] = ceil_t.cpu;
        j["dense_fwd_ms"] = dense_fwd.median;
        j["dense_fwdbwd_ms"] = dense_fb.median;
        j["dense_ffn"] = F;
        j["torch_fwd_ms"] = pget("torch_fwd_ms");
        j["torch_fwdbwd_ms"] = pget("torch_fwdbwd_ms");
        j["torch_dense_fwd_ms"] = pget("torch_dense_fwd_ms");
        j["torch_dense_fwdbwd_ms"] = pget("torch_dense_fwdbwd_ms");
        for (const char* k : {"torch_fwd_cpu_ms", "torch_fwdbwd_cpu_ms", "torch_dense_fwd_cpu_ms",
                              "torch_dense_fwdbwd_cpu_ms"})
            j[k] = pget(k);
        j["torch_skipped"] = peer.is_object() ? nlohmann::json(nullptr) : nlohmann::json(why);
        j["moe_gflops"] = moe_gflops;
        j["dense_gflops"] = dense_gflops;
        j["expert_gemm_ms"] = exp_fb.median;
        j["expert_gemm_gflops"] = exp_gflops;
        j["sgemm_gflops"] = sgemm_gflops;
        j["expert_gemm_vs_sgemm"] = exp_gflops / sgemm_gflops;
        j["moe_vs_dense_fwdbwd"] = moe_fb.median / dense_fb.median;
        j["moe_vs_dense_fwd"] = moe_fwd.median / dense_fwd.median;
        j["speedup_vs_torch_fwdbwd"] =
            peer.is_object() ? nlohmann::json((double)pget("torch_fwdbwd_ms") / moe_fb.median)
                             : nlohmann::json(nullptr);
        j["expert_threads"] = how == ExpertThreads::experts ? "experts" : "blas";
        j["threads"] = threads;
        j["precision"] = precision_name(prec);
        j["gemm_engine"] = gemm_engine_name(engine);
        j["torch_precision"] = pget("precision");
        j["reps"] = o.reps;
        j["cpu"] = cpu_name();
        j["blas"] = blas_info();
        std::printf("%s\n", j.dump().c_str());
    }
    return 0;
}

static void register_bench_layer(CLI::App& bench) {
    auto opts = std::make_shared<BenchLayerOptions>();
    // Shape A of issue 3 by default.
    opts->shape.tokens = 4096;
    opts->shape.d = 512;
    opts->shape.ffn = 1024;
    opts->shape.experts = 8;
    opts->shape.topk = 2;
    CLI::App* sub = bench.add_subcommand(
        "layer",
        "Time the MoE layer (fwd, fwd+bwd) beside a dense FFN of equal active FLOPs, the sgemm "
        "ceiling and the PyTorch peer.\n"
        "Example: moe bench layer --tokens 4096 --d 512 --ffn 256 --experts 64 --topk 8 "
        "--threads 2 --json");
    opts->shape.add_flags(sub);
    add_checked(sub, "--reps", opts->reps, Range::in(1, 100000), "timed repetitions (median)");
    add_checked(sub, "--warmup", opts->warmup, Range::in(0, 100000), "untimed repetitions first");
    sub->add_flag("--no-peer", opts->no_peer, "skip the PyTorch peer");
    sub->add_flag("--mpi", opts->mpi,
                  "under mpirun: the expert-parallel layer, --tokens split over the ranks; prints "
                  "compute / all-to-all / router communication and bytes per rank");
    add_checked(sub, "--expert-parallel", opts->expert_parallel, Range::in(0, 1 << 20),
                "with --mpi: ranks per expert group (0 = all)");
    add_checked(sub, "--overlap", opts->overlap, Range::in(1, 1024),
                "with --mpi: all-to-all chunks overlapped with the expert GEMMs (1 = off)");
    add_choice(sub, "--precision", opts->precision, "fp32|bf16",
               "GEMM operands: fp32, or bf16 (rounded, fp32 accumulation; the router stays fp32); "
               "the PyTorch peer runs under bf16 autocast then");
    sub->add_flag("--json", opts->json, "last stdout line: one JSON object of the results");
    sub->callback([opts, sub]() {
        BenchLayerOptions o = *opts;
        o.shape.capacity_given = sub->count("--capacity-factor") > 0;
        exit_code() = run_bench_layer(o);
    });
}

static RegisterBench reg_bench_layer("layer", register_bench_layer);

}  // namespace moe::tools
