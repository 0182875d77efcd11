// The name -> factory table of routers. Adding a router: one file router_<name>.cpp that defines
// make_router_<name>, one line below, one test in tests/router/.
#include "moe/router.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>

#include "moe/error.h"

namespace moe {

std::unique_ptr<Router> make_router_softmax(const MoeConfig& c);
std::unique_ptr<Router> make_router_noisy_topk(const MoeConfig& c);
std::unique_ptr<Router> make_router_topk(const MoeConfig& c);
std::unique_ptr<Router> make_router_switch(const MoeConfig& c);
std::unique_ptr<Router> make_router_gshard(const MoeConfig& c);
std::unique_ptr<Router> make_router_expert_choice(const MoeConfig& c);
std::unique_ptr<Router> make_router_hierarchical(const MoeConfig& c);
std::unique_ptr<Router> make_router_top_p(const MoeConfig& c);

namespace {

struct RouterEntry {
    const char* name;
    std::unique_ptr<Router> (*make)(const MoeConfig&);
};

const RouterEntry kRouters[] = {
    {"softmax", make_router_softmax},
    {"noisy-topk", make_router_noisy_topk},
    {"topk", make_router_topk},
    {"switch", make_router_switch},
    {"gshard", make_router_gshard},
    {"expert-choice", make_router_expert_choice},
    {"hierarchical", make_router_hierarchical},
    {"top-p", make_router_top_p},
};

// What every router needs; router-specific rules live in each factory.
void check_common(const MoeConfig& c) {
    if (c.n_experts < 1) fail("router {}: n_experts={} must be >= 1", c.router, c.n_experts);
    if (c.top_k < 1)
        fail("router {}: top_k={} must be >= 1 (experts per token)", c.router, c.top_k);
    if (c.top_k > c.n_experts)
        fail("router {}: top_k={} > n_experts={} (cannot choose more experts than exist)", c.router,
             c.top_k, c.n_experts);
    if (!(c.temperature > 0.f) || !std::isfinite(c.temperature))
        fail("router {}: temperature={} must be a finite number > 0", c.router, c.temperature);
    if (!(c.gate_dropout >= 0.f && c.gate_dropout < 1.f))
        fail("router {}: gate_dropout={} must be in [0, 1)", c.router, c.gate_dropout);
}

}  // namespace

std::vector<std::string> router_names() {
    std::vector<std::string> v;
    for (auto& e : kRouters) v.push_back(e.name);
    return v;
}

std::unique_ptr<Router> make_router(const MoeConfig& cfg) {
    for (auto& e : kRouters)
        if (cfg.router == e.name) {
            check_common(cfg);
            return e.make(cfg);
        }
    fail("unknown router '{}' (valid: {})", cfg.router, fmt::join(router_names(), ", "));
}

}  // namespace moe
