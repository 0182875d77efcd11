// bench_model: forward + backward (+ an AdamW update over the flat buffers) of the Transformer LM
// on the main config (nanoGPT's CPU baby shape: vocab 65, 4 layers, 4 heads, d 128, block 64,
// batch 12; MoE FFN E=8 top-2, expert d_ff 256, SwiGLU, tied embeddings), and the same shape with
// a dense SwiGLU FFN of equal active FLOPs (d_ff 512). Prints median ms per phase over the timed
// steps and tokens/s; --json prints one JSON object per config.
//   bench_model [--steps N] [--threads N] [--dense-only|--moe-only] [--json]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "moe/model.h"
#include "moe/rng.h"
#include "moe/runtime.h"

using namespace moe;

namespace {

// Process CPU time (all threads): on a machine shared with other jobs, wall time of a 2-core run
// swings by 3x while CPU time of a 1-thread run stays put, so both are printed.
double cpu_seconds() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

// Plain AdamW over the flat buffers (decoupled decay, none on norms), as the trainer does it.
void adamw(Model& m, std::vector<float>& mom, std::vector<float>& var, int step, float lr) {
    const float b1 = 0.9f, b2 = 0.99f, eps = 1e-8f, wd = 0.1f;
    const float c1 = 1.f / (1.f - std::pow(b1, (float)step)), c2 = 1.f / (1.f - std::pow(b2, (float)step));
    float* p = m.param_data();
    const float* g = m.grad_data();
    for (const ParamSpec& s : m.params()) {
        const float decay = m.is_no_decay(s) ? 0.f : wd;
        const long o = (long)s.offset, n = (long)s.shape.numel();
#pragma omp parallel for schedule(static) if (n >= 65536)
        for (long i = o; i < o + n; i++) {
            mom[i] = b1 * mom[i] + (1 - b1) * g[i];
            var[i] = b2 * var[i] + (1 - b2) * g[i] * g[i];
            p[i] -= lr * (mom[i] * c1 / (std::sqrt(var[i] * c2) + eps) + decay * p[i]);
        }
    }
}

void run(const char* name, const ModelConfig& c, int B, int steps, int warm, bool json) {
    Model m(c);
    const int S = c.block_size, T = B * S;
    std::vector<float> mom(m.n_params(), 0.f), var(m.n_params(), 0.f);
    Rng r(1);
    std::vector<int32_t> tok(T), tgt(T);
    std::vector<double> t_fwd, t_bwd, t_opt, t_step, t_cpu;
    float loss = 0;
    for (int s = 0; s < warm + steps; s++) {
        for (int i = 0; i < T; i++) tok[i] = (int32_t)r.below(c.vocab_size);
        for (int i = 0; i < T; i++) tgt[i] = tok[(i + 1) % T];
        double c0 = cpu_seconds();
        double t0 = now_seconds();
        m.zero_grad();
        loss = m.forward(tok.data(), tgt.data(), B, S, true);
        double t1 = now_seconds();
        m.backward();
        double t2 = now_seconds();
        adamw(m, mom, var, s + 1, 1e-3f);
        double t3 = now_seconds();
        double c3 = cpu_seconds();
        if (s >= warm) {
            t_cpu.push_back(1e3 * (c3 - c0));
            t_fwd.push_back(1e3 * (t1 - t0));
            t_bwd.push_back(1e3 * (t2 - t1));
            t_opt.push_back(1e3 * (t3 - t2));
            t_step.push_back(1e3 * (t3 - t0));
        }
    }
    double ms = median(t_step);
    auto mn = *std::min_element(t_step.begin(), t_step.end());
    if (json)
        std::printf(
            "{\"config\":\"%s\",\"threads\":%d,\"tokens_per_step\":%d,\"params\":%zu,"
            "\"fwd_ms\":%.3f,\"bwd_ms\":%.3f,\"adamw_ms\":%.3f,\"step_ms\":%.3f,\"step_ms_min\":%.3f,"
            "\"cpu_ms\":%.3f,\"tokens_per_s\":%.1f,\"loss\":%.4f}\n",
            name, get_threads(), T, m.n_params(), median(t_fwd), median(t_bwd), median(t_opt), ms,
            mn, median(t_cpu), T / (ms / 1e3), loss);
    else
        std::printf("%-6s T=%d params=%zu  fwd %.2f ms  bwd %.2f ms  adamw %.2f ms  step %.2f ms "
                    "(min %.2f, cpu %.2f)  %.0f tok/s  (threads %d)\n",
                    name, T, m.n_params(), median(t_fwd), median(t_bwd), median(t_opt), ms, mn,
                    median(t_cpu), T / (ms / 1e3), get_threads());
}

}  // namespace

int main(int argc, char** argv) {
    runtime_init(argc, argv);
    int steps = 30, threads = 2;
    bool json = false, dense = true, moe = true;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
        else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--json") json = true;
        else if (a == "--dense-only") moe = false;
        else if (a == "--moe-only") dense = false;
        else {
            std::fprintf(stderr, "usage: bench_model [--steps N] [--threads N] [--dense-only|--moe-only] [--json]\n");
            return 1;
        }
    }
    set_threads(threads);
    ModelConfig c;
    c.vocab_size = 65;
    c.d_model = 128;
    c.n_layers = 4;
    c.n_heads = 4;
    c.n_kv_heads = 4;
    c.block_size = 64;
    c.tie_embeddings = true;
    c.moe.n_experts = 8;
    c.moe.top_k = 2;
    c.moe.d_ff = 256;
    c.moe.router = "topk";
    c.moe.w_switch = 0.01f;
    if (moe) {
        c.moe_every = 1;
        run("moe", c, 12, steps, 5, json);
    }
    if (dense) {
        c.moe_every = 0;
        c.d_ff = 512;
        run("dense", c, 12, steps, 5, json);
    }
    return 0;
}
