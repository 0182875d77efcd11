// moe bench generate: llama-bench style prefill (pp) and decode (tg) rows for a Hugging Face
// folder or a random-weight model of a given shape, with the weight bytes each decoded token
// reads and the speed a measured memory bandwidth allows (issue 9). Figures are medians.
//   moe bench generate --random mixtral-795m --type bf16
//   moe bench generate DIR --json
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/aligned_vector.h"
#include "core/simd.h"
#include "io/file_map.h"
#include "kernels/typed_gemm.h"
#include "moe/checked.h"
#include "moe/error.h"
#include "moe/hf_model.h"
#include "moe/runtime.h"
#include "tools/bench.h"
#include "tools/checked_flags.h"
#include "tools/command.h"
#include "tools/hf_tools.h"

namespace moe::tools {

struct BenchGenOptions {
    std::string model, random, type = "bf16";
    int prefill = 128, decode = 64, reps = 3, threads = 0;
    bool json = false;
};

// The shapes a user can name. mixtral-795m is issue 9's benchmark shape: 8 layers, d 1024,
// 16 heads / 8 KV heads, E 8 top-2, expert d_ff 3584, vocab 32000, untied head.
static HfConfig random_shape(const std::string& name) {
    nlohmann::json j = {{"model_type", "mixtral"},
                        {"vocab_size", 32000},
                        {"hidden_size", 1024},
                        {"num_hidden_layers", 8},
                        {"num_attention_heads", 16},
                        {"num_key_value_heads", 8},
                        {"max_position_embeddings", 4096},
                        {"num_local_experts", 8},
                        {"num_experts_per_tok", 2},
                        {"intermediate_size", 3584},
                        {"tie_word_embeddings", false}};
    if (name == "tiny") {
        j["vocab_size"] = 512;
        j["hidden_size"] = 128;
        j["num_hidden_layers"] = 2;
        j["num_attention_heads"] = 4;
        j["num_key_value_heads"] = 2;
        j["intermediate_size"] = 256;
    } else if (name != "mixtral-795m") {
        usage_fail("--random: '{}' is not a known shape (expected one of: mixtral-795m | tiny)",
                   name);
    }
    return hf_config_from_json(j, "--random " + name);
}

// Weight bytes one decoded token reads: attention, the router, k experts per MoE layer (and the
// shared expert), dense MLPs, the final norm and the LM head.
static double bytes_per_token(const HfConfig& c, double esize) {
    const double d = c.hidden_size, q = (double)c.n_heads * c.head_dim,
                 kv = (double)c.n_kv_heads * c.head_dim;
    double b = 0;
    for (int l = 0; l < c.n_layers; l++) {
        b += esize * (d * q * 2 + d * kv * 2) + 4.0 * 2 * d;
        if (c.moe_layer[l]) {
            b += 4.0 * c.n_experts * d + esize * c.top_k * 3 * d * c.expert_ff;
            if (c.shared_ff) b += esize * 3 * d * c.shared_ff + 4 * d;
        } else {
            b += esize * 3 * d * c.dense_ff;
        }
    }
    return b + esize * c.vocab_size * d + esize * d;
}

// KV-cache bytes one decoded token reads on average: attention reads the fp32 keys and values of
// every position so far in every layer (positions prefill .. prefill + decode - 1 are decoded;
// the token at position p reads p + 1 of each). 2-5 MB at m795's pp128 + tg64, 1-2% of its
// q8_0 weights: counted, as the bound is what reading every byte a token needs allows.
static double kv_bytes_per_token(const HfConfig& c, int prefill, int decode) {
    const double kv = (double)c.n_kv_heads * c.head_dim;
    const double mean_positions = prefill + (decode - 1) / 2.0 + 1;
    return c.n_layers * 2 * kv * 4 * mean_positions;
}

// Read bandwidth: every thread sums its share of a 1 GiB buffer (vectorised by the compiler's
// clones); the best pass after the first touch.
typedef float v16f __attribute__((vector_size(64)));  // 16 floats: no reassociation needed

// Four independent sums of 16 lanes (four zmm loads, or eight ymm, per step): enough loads in
// flight that memory, not the add latency, bounds the loop. With four sums of 8 lanes a 2-core
// Xeon here read 21-24 GB/s where an AVX-512 loop read 26-28 (session 9), so the bound was low
// and decode looked closer to it than it was; with two, a core summed at ~15 GB/s.
MOE_SIMD_CLONES static float sum_block(const float* p, size_t n) {
    v16f a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (size_t i = 0; i + 64 <= n; i += 64) {
        v16f x0, x1, x2, x3;
        std::memcpy(&x0, p + i, 64);
        std::memcpy(&x1, p + i + 16, 64);
        std::memcpy(&x2, p + i + 32, 64);
        std::memcpy(&x3, p + i + 48, 64);
        a0 += x0;
        a1 += x1;
        a2 += x2;
        a3 += x3;
    }
    a0 += a1 + a2 + a3;
    float s = 0;
    for (int j = 0; j < 16; j++) s += a0[j];
    return s;
}

// The buffer, in 2 MiB pages where the kernel gives them, as the weights' copy (io/file_map.h):
// the bound is the best the machine reads, whichever way the weights are held.
struct BandwidthProbe {
    static constexpr size_t n = (size_t)1 << 28;  // 1 GiB of floats
    HugePageVector<float> buf;
    double best = 0;
    int passes = 0;
    std::vector<double> rates;  // every pass, GB/s (their median is printed beside the best)
    BandwidthProbe() {
        try {
            buf.assign(n, 1.0f);
        } catch (const std::bad_alloc&) {
            fail("bench generate: no 1 GiB of memory for the bandwidth measurement; free some");
        }
    }
    // Three passes now; `best` keeps the fastest of every pass so far. Measured between the
    // timed runs, as the machine's bandwidth drifts (26-31 GB/s within minutes here, and a pass
    // now and then at half that while a neighbour reads too).
    void measure() {
        volatile float sink = 0;
        for (int pass = 0; pass < 3; pass++, passes++) {
            const double t0 = now_seconds();
            float total = 0;
            const float* b = buf.data();
#pragma omp parallel for reduction(+ : total) schedule(static)
            for (long c = 0; c < 256; c++) total += sum_block(b + (size_t)c * (n / 256), n / 256);
            const double dt = now_seconds() - t0;
            sink = sink + total;
            rates.push_back(n * 4.0 / dt / 1e9);
            best = std::max(best, rates.back());
        }
    }
};

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

static int run_bench_generate(const BenchGenOptions& o) {
    set_threads(o.threads);
    if (o.model.empty() == o.random.empty())
        usage_fail("moe bench generate: give a model folder or --random SHAPE (one of them)");
    std::unique_ptr<HfModel> model;
    std::string label;
    WType t = o.type == "f32"                       ? WType::f32
              : o.type == "f16"                     ? WType::f16
              : o.type == "q8_0" || o.type == "int8" ? WType::q8_0
              : o.type == "q4_0"                    ? WType::q4_0
                                                    : WType::bf16;
    if (!o.random.empty()) {
        HfConfig c = random_shape(o.random);
        model = std::make_unique<HfModel>(c, WeightStore::random(c, t, 1), "random " + o.random);
        label = o.random + " (random)";
    } else {
        model = load_hf_model(o.model);
        print_hf_summary(*model);
        label = o.model;
    }
    const HfConfig& c = model->config();
    if (o.prefill + o.decode > c.max_positions)
        usage_fail("--prefill + --decode: {} positions exceed the model's context of {}",
                   o.prefill + o.decode, c.max_positions);
    // Stored type of the big matrices (a folder may mix; the first expert decides the label).
    const WeightView probe = model->weights().get(
        c.moe_layer[0] ? c.expert_name(0, 0, 0) : c.ffn_prefix(0) + "gate_proj.weight",
        {c.moe_layer[0] ? c.expert_ff : c.dense_ff, c.hidden_size});
    const double esize = (double)wtype_row_bytes(probe.type, 32) / 32;  // q8_0: 34 / 32
    std::vector<int32_t> ids(o.prefill + o.decode);
    for (size_t i = 0; i < ids.size(); i++) ids[i] = (int32_t)((i * 7919 + 13) % c.vocab_size);
    std::vector<double> pp, tg;
    BandwidthProbe bw_probe;
    for (int r = 0; r < o.reps + 1; r++) {  // the first pass warms caches and page tables
        model->cache_reset();
        model->reserve(o.prefill + o.decode);
        double t0 = now_seconds();
        model->cache_feed(ids.data(), o.prefill);
        double t1 = now_seconds();
        for (int i = 0; i < o.decode; i++) model->cache_feed(&ids[o.prefill + i], 1);
        double t2 = now_seconds();
        bw_probe.measure();
        if (r == 0) continue;
        pp.push_back(o.prefill / (t1 - t0));
        tg.push_back(o.decode / (t2 - t1));
    }
    // how the loaded files hold the weights (io/file_map.h: MOE_HUGEPAGES and its auto rule)
    const FileMapTotals held = file_map_totals();
    struct Held {
        const char* key;   // JSON weights_memory
        const char* text;  // the cpu line
    };
    const Held memory = !o.random.empty() ? Held{"random", "random, in memory"}
                        : held.huge > 0 && held.mapped == 0
                            ? Held{"huge_pages", "copied into huge pages"}
                        : held.huge > 0 ? Held{"mixed", "partly copied into huge pages"}
                                        : Held{"mapped", "mapped"};
    const double bw = bw_probe.best;
    const double weight_bpt = bytes_per_token(c, esize);
    const double kv_bpt = kv_bytes_per_token(c, o.prefill, o.decode);
    const double bpt = weight_bpt + kv_bpt, bound = bw * 1e9 / bpt;
    const double pp_med = median(pp), tg_med = median(tg);
    const double bw_median = median(bw_probe.rates);
    std::printf("cpu: %s; %d threads; weights %s, %s; read bandwidth %.1f GB/s (best of %d passes over 1 GiB, between the runs; median %.1f)\n",
                cpu_name().c_str(), get_threads(), wtype_name(probe.type), memory.text, bw,
                bw_probe.passes, bw_median);
    std::printf("bytes/token: weights %.1f MB + KV cache %.1f MB (fp32, the mean over the decoded positions)\n\n",
                weight_bpt / 1e6, kv_bpt / 1e6);
    std::printf("| model | params | type | threads | test | t/s | bytes/token | bound t/s |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    std::printf("| %s | %.0f M | %s | %d | pp%d | %.1f | - | - |\n", label.c_str(),
                c.n_params() / 1e6, wtype_name(probe.type), get_threads(), o.prefill, pp_med);
    std::printf("| %s | %.0f M | %s | %d | tg%d | %.1f | %.0f MB | %.1f (%.0f%%) |\n",
                label.c_str(), c.n_params() / 1e6, wtype_name(probe.type), get_threads(),
                o.decode, tg_med, bpt / 1e6, bound, 100.0 * tg_med / bound);
    if (o.json) {
        nlohmann::json j = {{"model", label},
                            {"type", wtype_name(probe.type)},
                            {"threads", get_threads()},
                            {"prefill_tokens", o.prefill},
                            {"decode_tokens", o.decode},
                            {"prefill_tok_s", pp_med},
                            {"decode_tok_s", tg_med},
                            {"prefill_runs", pp},
                            {"decode_runs", tg},
                            {"bytes_per_token", bpt},
                            {"weight_bytes_per_token", weight_bpt},
                            {"kv_bytes_per_token", kv_bpt},
                            {"bandwidth_gb_s", bw},
                            {"bandwidth_median_gb_s", bw_median},
                            {"weights_memory", memory.key},
                            {"bound_tok_s", bound},
                            {"isa", wisa_name(wgemm_isa())}};
        std::printf("%s\n", j.dump().c_str());
    }
    return 0;
}

static void register_bench_generate(CLI::App& bench) {
    auto o = std::make_shared<BenchGenOptions>();
    CLI::App* sub = bench.add_subcommand(
        "generate",
        "Prefill (pp) and decode (tg) tokens/s of a Hugging Face folder or a random model, with\n"
        "the weight bytes per decoded token and the bound a measured memory bandwidth allows.\n"
        "Example: moe bench generate --random mixtral-795m --type bf16 --threads 2");
    sub->add_option("model", o->model, "Hugging Face model folder");
    add_choice(sub, "--random", o->random, "mixtral-795m|tiny", "random weights of this shape");
    add_choice(sub, "--type", o->type, "f32|bf16|f16|q8_0|q4_0|int8",
               "with --random: the stored weight type (int8 = q8_0; router and norms f32)");
    add_checked(sub, "--prefill", o->prefill, Range::in(1, 1 << 16), "prompt tokens (pp)");
    add_checked(sub, "--decode", o->decode, Range::in(1, 1 << 16), "decoded tokens (tg)");
    add_checked(sub, "--reps", o->reps, Range::in(1, 1000), "measured passes (median)");
    add_checked(sub, "--threads", o->threads, Range::in(0, 4096), "threads (0: all cores)");
    sub->add_flag("--json", o->json, "last stdout line: prefill_tok_s, decode_tok_s, ...");
    sub->callback([o]() { exit_code() = run_bench_generate(*o); });
}

static RegisterBench reg_bench_generate("generate", register_bench_generate);

}  // namespace moe::tools
