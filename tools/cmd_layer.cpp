// moe layer: one forward + backward of a MoE layer on random input (or a user's tensors from a
// safetensors file), printing the routing statistics and aux losses; --save writes y, dx and every
// gradient so the result can be checked against another framework (docs/layer.md).
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "moe/checked.h"
#include "moe/file_io.h"
#include "moe/moe_layer.h"
#include "moe/rng.h"
#include "moe/runtime.h"
#include "moe/safetensors.h"
#include "tools/command.h"
#include "tools/layer_options.h"

namespace moe::tools {

struct LayerOptions {
    LayerShapeOptions shape;
    bool eval = false;
    bool json = false;
    std::string load, save;
    // Flags the user gave explicitly (with --load, the others are taken from the file).
    bool tokens_given = false, d_given = false, experts_given = false, ffn_given = false;
};

// With --load, shapes the user did not give come from the file; those given must agree with it
// (checked again tensor by tensor when the parameters are read).
static void shapes_from_file(LayerOptions& o, const SafetensorsReader& in) {
    const StTensor& x = in.get("x");
    if (x.shape.rank() != 2)
        fail("{}: tensor x: expected shape [T, d], got {}; write x as a 2-D tensor", in.path(),
             x.shape.str());
    // A size read from the file is checked with the flag's own range before it becomes an int.
    auto agree = [&](bool given, int& flag, int64_t v, const char* name, const char* what,
                     const Range& r) {
        if (!r.contains((double)v))
            fail("{}: {} has {} = {}, outside {} ({}); fix the file", in.path(), what, name, v,
                 name, r.describe(true));
        if (!given)
            flag = (int)v;
        else if (flag != v)
            fail("{}: {} has {} = {} but {} {} was given; drop the flag or fix the file", in.path(),
                 what, name, v, name, flag);
    };
    agree(o.tokens_given, o.shape.tokens, x.shape[0], "--tokens", "x", Range::in(1, 1 << 24));
    agree(o.d_given, o.shape.d, x.shape[1], "--d", "x", Range::in(1, 1 << 16));
    if (in.has("router.weight") && in.get("router.weight").shape.rank() == 2)
        agree(o.experts_given, o.shape.experts, in.get("router.weight").shape[0], "--experts",
              "router.weight", Range::in(1, 1 << 16));
    if (in.has("experts.0.w1") && in.get("experts.0.w1").shape.rank() == 2)
        agree(o.ffn_given, o.shape.ffn, in.get("experts.0.w1").shape[0], "--ffn", "experts.0.w1",
              Range::in(1, 1 << 20));
}

static int run_layer(LayerOptions o) {
    std::unique_ptr<SafetensorsReader> in;
    if (!o.load.empty()) {
        in = std::make_unique<SafetensorsReader>(o.load);
        shapes_from_file(o, *in);
    }
    MoeConfig cfg = o.shape.config();
    set_threads(o.shape.threads);
    const int T = o.shape.tokens, d = cfg.d_model, E = cfg.n_experts;
    const bool training = !o.eval;
    {
        // Parameters and gradients, x y dx dy, router logits and probabilities, and the experts'
        // activations (T k slots of width up to 3 f): refused before allocating when too big.
        size_t n = 0;
        MoeLayer::layout(cfg, &n);
        const double Td = (double)T * d, slots = (double)T * cfg.top_k;
        double bytes = 4.0 * (2.0 * n + 6 * Td + 6.0 * T * E + slots * (4.0 * cfg.d_ff + 2 * d));
        check_fits_in_memory(
            bytes, fmt::format("--tokens {} --d {} --experts {} --ffn {}", T, d, E, cfg.d_ff),
            "use smaller sizes");
    }
    MoeLayer layer(cfg);

    std::vector<float> x((size_t)T * d), dy((size_t)T * d, 1.f), y((size_t)T * d),
        dx((size_t)T * d);
    RouterNoise noise;
    std::vector<float> nrm, uni, jit, gu;
    if (in) {
        // Every tensor read is checked for NaN/Inf here, at the boundary: weights and dy as
        // well as x (the layer itself only checks its input).
        auto finite = [&](const std::string& name, const std::vector<float>& v) {
            int64_t i = first_non_finite(v.data(), v.size());
            if (i >= 0)
                fail("{}: tensor {}: value {} at index {} is not finite; write finite values",
                     o.load, name, v[i], i);
        };
        x = in->get("x", Shape{T, d}).data;
        finite("x", x);
        if (in->has("dy")) {
            dy = in->get("dy", Shape{T, d}).data;
            finite("dy", dy);
        }
        for (auto& s : layer.params()) {
            const StTensor& t = in->get(s.name, s.shape);  // names the missing tensor / shape
            finite(s.name, t.data);
            std::copy(t.data.begin(), t.data.end(), layer.param_data() + s.offset);
        }
        auto opt = [&](const char* name, Shape shape, std::vector<float>& buf, const float*& ptr) {
            if (!in->has(name)) return;
            buf = in->get(name, shape).data;
            finite(name, buf);
            ptr = buf.data();
        };
        opt("noise", Shape{T, E}, nrm, noise.normal);
        opt("dropout_u", Shape{T, E}, uni, noise.uniform);
        opt("jitter_u", Shape{T, d}, jit, noise.jitter);
        opt("gshard_u", Shape{T}, gu, noise.gshard_u);
    } else {
        Rng r(cfg.seed ^ 0x9e3779b97f4a7c15ULL);  // input stream apart from the layer's own
        r.fill_normal(x.data(), (int64_t)x.size());
    }

    layer.zero_grad();
    double t0 = now_seconds();
    layer.forward({x.data(), {T, d}}, {y.data(), {T, d}}, training, &noise);
    double t1 = now_seconds();
    layer.backward({dy.data(), {T, d}}, {dx.data(), {T, d}});
    double t2 = now_seconds();

    const MoeStats& st = layer.stats();
    const AuxLosses& aux = layer.aux();
    double ysum = 0, yabs = 0;
    for (float v : y) {
        ysum += v;
        yabs += std::fabs(v);
    }

    std::printf("moe layer: router %s, E=%d k=%d d=%d f=%d T=%d, %s, %s, %s%s\n",
                cfg.router.c_str(), E, cfg.top_k, d, cfg.d_ff, T, activation_name(cfg.activation),
                training ? "training" : "eval",
                cfg.dropless ? "dropless" : fmt::format("capacity factor {}", cfg.capacity_factor).c_str(),
                layer.causal() ? "" : ", non-causal (looks at the whole batch)");
    if (cfg.n_shared_experts)
        std::printf("  shared experts: %d of width %d\n", cfg.n_shared_experts, cfg.d_ff_shared);
    std::printf("  tokens per expert:");
    for (auto v : st.tokens_per_expert) std::printf(" %lld", (long long)v);
    std::printf("\n  token-slots routed %lld, dropped %lld (%.2f%%)\n", (long long)st.routed,
                (long long)st.dropped, st.routed ? 100.0 * st.dropped / st.routed : 0.0);
    std::printf("  load CV %.4f   router entropy %.4f (max %.4f)   mean top-1 weight %.4f\n",
                st.load_cv, st.router_entropy, std::log((double)E), st.mean_top1_weight);
    std::printf("  aux losses (unweighted): importance %.6g  load %.6g  switch %.6g  z %.6g"
                "  (weighted total %.6g)\n",
                aux.importance, aux.load, aux.switch_loss, aux.z_loss, aux.weighted_total);
    std::printf("  y: sum %.6g  sum|y| %.6g   forward %.2f ms, backward %.2f ms\n", ysum, yabs,
                1e3 * (t1 - t0), 1e3 * (t2 - t1));

    if (!o.save.empty()) {
        SafetensorsWriter w;
        w.add("y", Shape{T, d}, y.data());
        w.add("dx", Shape{T, d}, dx.data());
        for (auto& s : layer.params())
            w.add("grad." + s.name, s.shape, layer.grad_data() + s.offset);
        float l[4] = {(float)aux.importance, (float)aux.load, (float)aux.switch_loss,
                      (float)aux.z_loss};
        w.add("loss.importance", Shape{1}, &l[0]);
        w.add("loss.load", Shape{1}, &l[1]);
        w.add("loss.switch", Shape{1}, &l[2]);
        w.add("loss.z", Shape{1}, &l[3]);
        w.add_i64("tokens_per_expert", Shape{E}, st.tokens_per_expert.data());
        w.set_metadata("router", cfg.router);
        w.save(o.save);
        std::printf("  wrote %s\n", o.save.c_str());
    }
    if (o.json) {
        nlohmann::json j;
        j["router"] = cfg.router;
        j["tokens"] = T;
        j["experts"] = E;
        j["topk"] = cfg.top_k;
        j["tokens_per_expert"] = st.tokens_per_expert;
        j["routed"] = st.routed;
        j["dropped"] = st.dropped;
        j["load_cv"] = st.load_cv;
        j["router_entropy"] = st.router_entropy;
        j["mean_top1_weight"] = st.mean_top1_weight;
        j["loss_importance"] = aux.importance;
        j["loss_load"] = aux.load;
        j["loss_switch"] = aux.switch_loss;
        j["loss_z"] = aux.z_loss;
        j["loss_weighted_total"] = aux.weighted_total;
        j["causal"] = layer.causal();
        j["checksum"] = {{"sum", ysum}, {"abs_sum", yabs}};
        std::printf("%s\n", j.dump().c_str());
    }
    return 0;
}

static void register_layer(CLI::App& app) {
    auto opts = std::make_shared<LayerOptions>();
    CLI::App* sub = app.add_subcommand(
        "layer",
        "One forward + backward of a MoE layer; prints routing statistics and aux losses.\n"
        "Example: moe layer --router topk --experts 8 --topk 2 --d 64 --ffn 128 --tokens 256 "
        "--capacity-factor 1.25 --json");
    opts->shape.add_flags(sub);
    sub->add_flag("--eval,!--training", opts->eval,
                  "--training (default: noise, jitter, gate dropout on) or --eval");
    sub->add_flag("--json", opts->json, "last stdout line: one JSON object of the results");
    sub->add_option("--load", opts->load, "read x, parameters (and dy, noise) from safetensors");
    sub->add_option("--save", opts->save, "write y, dx, grad.<param>, loss.*, tokens_per_expert");
    sub->callback([opts, sub]() {
        LayerOptions o = *opts;
        o.shape.capacity_given = sub->count("--capacity-factor") > 0;
        o.tokens_given = sub->count("--tokens") > 0;
        o.d_given = sub->count("--d") > 0;
        o.experts_given = sub->count("--experts") > 0;
        o.ffn_given = sub->count("--ffn") > 0;
        exit_code() = run_layer(o);
    });
}

static RegisterCommand reg_layer("layer", register_layer);

}  // namespace moe::tools
