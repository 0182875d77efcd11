// The MoE layer's flags, declared once and shared by `moe layer` and `moe bench layer`: one plain
// struct (defaults and help written once), turned into a MoeConfig after parsing.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "moe/moe_layer.h"

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
        app->add_option("--router", router,
                        "softmax | noisy-topk | topk | switch | gshard | expert-choice | "
                        "hierarchical")
            ->capture_default_str();
        app->add_option("--experts", experts, "number of experts E")->capture_default_str();
        app->add_option("--topk", topk, "experts per token k")->capture_default_str();
        app->add_option("--d", d, "model width d")->capture_default_str();
        app->add_option("--ffn", ffn, "expert FFN width f")->capture_default_str();
        app->add_option("--tokens", tokens, "tokens T")->capture_default_str();
        app->add_option("--capacity-factor", capacity_factor,
                        "cap each expert at ceil(cf*T*k/E) token-slots (default: dropless; "
                        "expert choice: cf = k)");
        app->add_flag("--dropless", dropless, "never drop (wins over --capacity-factor)");
        app->add_option("--priority", priority, "who keeps a slot when capped: token | weight")
            ->capture_default_str();
        app->add_option("--shared-experts", shared_experts, "always-on experts")
            ->capture_default_str();
        app->add_option("--ffn-shared", ffn_shared, "shared expert width (default: --ffn)");
        app->add_option("--activation", activation, "swiglu | gelu | relu")->capture_default_str();
        app->add_option("--temperature", temperature, "router logits / t")->capture_default_str();
        app->add_flag("--no-renormalize", no_renormalize, "topk: keep raw top-k probabilities");
        app->add_option("--score", score, "topk scores: softmax | sigmoid")->capture_default_str();
        app->add_option("--jitter", jitter, "multiplicative router-input noise U(1-j, 1+j)");
        app->add_option("--gate-dropout", gate_dropout, "dropout on gate probabilities");
        app->add_option("--groups", groups, "hierarchical: number of groups G");
        app->add_option("--topk-groups", topk_groups, "hierarchical: groups per token");
        app->add_option("--w-importance", w_importance, "importance loss weight");
        app->add_option("--w-load", w_load, "load loss weight");
        app->add_option("--w-switch", w_switch, "switch loss weight");
        app->add_option("--w-zloss", w_zloss, "router z-loss weight");
        app->add_option("--seed", seed, "random seed (parameters, input, noise)")
            ->capture_default_str();
        app->add_option("--threads", threads, "threads (default: all cores)");
    }

    MoeConfig config() const {
        MoeConfig c;
        c.router = router;
        c.n_experts = experts;
        c.top_k = topk;
        c.d_model = d;
        c.d_ff = ffn;
        c.dropless = dropless || !capacity_given;
        if (capacity_given) {
            if (!(capacity_factor > 0))
                fail("--capacity-factor {} must be > 0", capacity_factor);
            c.capacity_factor = capacity_factor;
        } else if (router == "expert-choice") {
            c.capacity_factor = 0.f;  // the router's default: cf = k
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
        if (tokens <= 0) fail("--tokens {} must be >= 1", tokens);
        c.validate();
        return c;
    }
};

}  // namespace moe::tools
