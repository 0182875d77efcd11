// The MoE layer's flags, declared once and shared by `moe layer` and `moe bench layer`: one plain
// struct (defaults and help written once), turned into a MoeConfig after parsing.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "moe/moe_layer.h"
#include "tools/checked_flags.h"

namespace moe::tools {

struct LayerShapeOptions {
    std::string router = "topk";
    int experts = 8, topk = 2, d = 64, ffn = 128, tokens = 256;
    float capacity_factor = 0.f;
    bool capacity_given = false;  // --capacity-factor given: the layer is capped (unless --dropless)
    bool dropless = false;
    std::string priority = "token";
    int shared_experts = 0, ffn_shared = 0;
    std::string activation = "swiglu";
    float temperature = 1.f;
    bool no_renormalize = false;
    std::string score = "softmax";
    float jitter = 0.f, gate_dropout = 0.f;
    int groups = 0, topk_groups = 1;
    float w_importance = 0.f, w_load = 0.f, w_switch = 0.f, w_zloss = 0.f;
    uint64_t seed = 1234;
    int threads = 0;

    void add_flags(CLI::App* app) {
        using R = Range;
        add_choice(app, "--router", router,
                   "softmax|noisy-topk|topk|switch|gshard|expert-choice|hierarchical", "router");
        add_checked(app, "--experts", experts, R::in(1, 1 << 16), "number of experts E");
        add_checked(app, "--topk", topk, R::in(1, 1 << 16), "experts per token k");
        add_checked(app, "--d", d, R::in(1, 1 << 16), "model width d");
        add_checked(app, "--ffn", ffn, R::in(1, 1 << 20), "expert FFN width f");
        add_checked(app, "--tokens", tokens, R::in(1, 1 << 24), "tokens T");
        app->add_option("--capacity-factor", capacity_factor,
                        "cap each expert at C = ceil(cf*T*k/E) token-slots (finite number in "
                        "(0, 1000]; token-choice default: dropless, no cap; expert choice: each "
                        "expert takes C = min(T, ceil(cf*T*k/E)) tokens, default cf = 1, i.e. "
                        "C = T*k/E)")
            ->check(range_validator(R::in(0, 1000), false));
        app->add_flag("--dropless", dropless,
                      "never drop (token-choice routers; wins over --capacity-factor; not "
                      "with --router expert-choice, whose capacity is its definition)");
        add_choice(app, "--priority", priority, "token|weight", "who keeps a slot when capped");
        add_checked(app, "--shared-experts", shared_experts, R::in(0, 64), "always-on experts");
        add_checked(app, "--ffn-shared", ffn_shared, R::in(0, 1 << 20),
                    "shared expert width (0: --ffn)");
        add_choice(app, "--activation", activation, "swiglu|gelu|relu", "expert activation");
        add_checked(app, "--temperature", temperature, R::in_open(0, 1e6), "router logits / t");
        app->add_flag("--no-renormalize", no_renormalize, "topk: keep raw top-k probabilities");
        add_choice(app, "--score", score, "softmax|sigmoid", "topk scores");
        add_checked(app, "--jitter", jitter, R::in_open_hi(0, 1),
                    "multiplicative router-input noise U(1-j, 1+j)");
        add_checked(app, "--gate-dropout", gate_dropout, R::in_open_hi(0, 1),
                    "dropout on gate probabilities");
        add_checked(app, "--groups", groups, R::in(0, 1 << 16), "hierarchical: number of groups G");
        add_checked(app, "--topk-groups", topk_groups, R::in(1, 1 << 16),
                    "hierarchical: groups per token");
        add_checked(app, "--w-importance", w_importance, R::in(0, 1e6), "importance loss weight");
        add_checked(app, "--w-load", w_load, R::in(0, 1e6), "load loss weight");
        add_checked(app, "--w-switch", w_switch, R::in(0, 1e6), "switch loss weight");
        add_checked(app, "--w-zloss", w_zloss, R::in(0, 1e6), "router z-loss weight");
        add_checked(app, "--seed", seed, R::at_least(0), "random seed (parameters, input, noise)");
        add_checked(app, "--threads", threads, R::in(0, 4096), "threads (0: all cores)");
    }

    MoeConfig config() const {
        MoeConfig c;
        c.router = router;
        c.n_experts = experts;
        c.top_k = topk;
        c.d_model = d;
        c.d_ff = ffn;
        const bool expert_choice = router == "expert-choice";
        if (expert_choice && dropless)
            usage_fail(
                "--dropless: expert choice always caps each expert at "
                "C = min(T, ceil(cf*T*k/E)) tokens; drop --dropless (or use a token-choice "
                "router)");
        c.dropless = !expert_choice && (dropless || !capacity_given);
        if (capacity_given) {
            if (!(capacity_factor > 0))
                usage_fail(
                    "--capacity-factor: {} is not allowed (expected finite number in "
                    "(0, 1000]); give a value in that range",
                    capacity_factor);
            c.capacity_factor = capacity_factor;
        } else if (expert_choice) {
            c.capacity_factor = 1.f;  // C = T*k/E: the expert-choice paper's default
        }
        c.priority = priority;
        c.n_shared_experts = shared_experts;
        c.d_ff_shared = ffn_shared;
        c.activation = activation_from_string(activation);
        c.temperature = temperature;
        c.renormalize = !no_renormalize;
        c.score = score;
        c.jitter = jitter;
        c.gate_dropout = gate_dropout;
        c.n_groups = groups;
        c.topk_groups = topk_groups;
        c.w_importance = w_importance;
        c.w_load = w_load;
        c.w_switch = w_switch;
        c.w_zloss = w_zloss;
        c.seed = seed;
        try {
            c.validate();
        } catch (const Error& e) {
            usage_fail("{}; change the flags", e.what());
        }
        return c;
    }
};

}  // namespace moe::tools
