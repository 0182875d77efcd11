// Internal router interface (DESIGN.md §4 step 2). One router per file (router_<name>.cpp), one
// line each in the name -> factory table (router.cpp). A router turns logits into a Routing,
// computes the balancing losses (they need its internals) and, in backward, turns dL/dweight of
// every assignment plus the aux-loss gradients into dL/dlogits. Router math is fp32 always.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moe/moe_layer.h"

namespace moe {

// A list of assignments (token, expert, weight).
// Token choice (k > 0): assignment a = t*k + j for slot j of token t; expert[a] = -1 when the
//   slot is unused (GShard's second expert not dispatched). The layer applies capacity after.
// Expert choice (k == 0): assignments grouped by expert, already limited to capacity.
struct Routing {
    int T = 0, E = 0, k = 0;
    std::vector<int32_t> token, expert;
    std::vector<float> weight;
    int n() const { return (int)expert.size(); }
};

struct RouterInput {
    int T = 0, d = 0, E = 0;
    const MoeConfig* cfg = nullptr;
    // Raw logits x'·W^T, [T, ld]: the columns of each matrix in logit_matrices() order, first
    // router.weight (E columns). Temperature is applied by the router (to the gate logits only).
    const float* logits = nullptr;
    int ld = 0;
    const float* normal = nullptr;    // [T,E] N(0,1) when needs_normal() and training
    const float* uniform = nullptr;   // [T,E] U(0,1) when needs_uniform() and training
    const float* gshard_u = nullptr;  // [T]   U(0,1) when needs_gshard_u() and training
    const float* bias = nullptr;      // [E] aux-loss-free selection bias, or nullptr
    bool training = false;
};

class Router {
   public:
    virtual ~Router() = default;
    // Router matrices (name, rows): logits has sum(rows) columns in this order.
    virtual std::vector<std::pair<std::string, int>> logit_matrices(const MoeConfig& c) const {
        return {{"router.weight", c.n_experts}};
    }
    virtual bool token_choice() const { return true; }
    virtual bool causal() const { return true; }
    virtual bool needs_normal(const MoeConfig&) const { return false; }
    virtual bool needs_uniform(const MoeConfig& c) const { return c.gate_dropout > 0.f; }
    virtual bool needs_gshard_u(const MoeConfig&) const { return false; }

    // Fills out (Routing), aux (weighted losses) and probs() [T,E], the router's score
    // distribution used for entropy statistics. Keeps what backward needs.
    virtual void forward(const RouterInput& in, Routing& out, AuxLosses& aux) = 0;
    // dweight[a] = dL/d out.weight[a] (0 for unused or dropped slots). Writes dlogits [T, in.ld]
    // (every column, overwritten), including the weighted aux-loss gradients.
    virtual void backward(const RouterInput& in, const Routing& r, const float* dweight,
                          float* dlogits) = 0;
    const std::vector<float>& probs() const { return probs_; }

   protected:
    std::vector<float> probs_;
};

std::unique_ptr<Router> make_router(const MoeConfig& cfg);  // throws on unknown names
std::vector<std::string> router_names();

}  // namespace moe
