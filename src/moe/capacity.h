// Capacity (DESIGN.md §4 step 3): which token-choice assignments an expert accepts.
// C = ceil(cf * T * k / E) slots per expert (k = slots per token; the dense softmax router has
// k = E, so C = ceil(cf * T)); dropless layers keep every routed assignment.
// Priority decides who gets a slot when an expert is over-subscribed:
//   token  — slot-major: every token's slot 0 in token order, then every slot 1, ... (a token's
//            first choice beats anybody's second choice; GShard / Switch "first come first served")
//   weight — all assignments by router weight, descending; ties broken by slot-major order
//            ("batch prioritised routing", Riquelme et al. 2021)
// An assignment is kept iff fewer than C assignments of higher priority went to the same expert.
// A dropped slot adds 0 to y: the caller's residual connection carries x through.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/moe_layer.h"

namespace moe {

struct Routing;

// Slots per expert for T tokens and k slots per token; -1 for "unlimited".
int64_t expert_capacity(double capacity_factor, int64_t T, int k, int E, bool dropless);

// r is token choice (r.k > 0, assignment a = t*k + j). kept[a] = 1 iff a is routed
// (expert >= 0) and within capacity C (C < 0: unlimited). `order` is scratch.
void apply_capacity(const Routing& r, int64_t C, bool by_weight, std::vector<uint8_t>& kept,
                    std::vector<int32_t>& order);
// The definition, O(n^2): counts higher-priority assignments to the same expert one by one.
void apply_capacity_ref(const Routing& r, int64_t C, bool by_weight, std::vector<uint8_t>& kept);

}  // namespace moe
