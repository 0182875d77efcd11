#include "moe/capacity.h"

#include <algorithm>
#include <cmath>

#include "moe/router.h"

namespace moe {

int64_t expert_capacity(double capacity_factor, int64_t T, int k, int E, bool dropless) {
    if (dropless) return -1;
    MOE_CHECK(capacity_factor > 0 && E > 0, "capacity_factor={} E={}", capacity_factor, E);
    // In double, no epsilon: exact for the usual factors (0.5, 1, 1.25, 2), and what a Python
    // peer computes with math.ceil(cf * T * k / E).
    return (int64_t)std::ceil(capacity_factor * (double)T * (double)k / (double)E);
}

// Slot-major rank of assignment a = t*k + j: j*T + t.
static inline int64_t slot_major_rank(int a, int T, int k) {
    return (int64_t)(a % k) * T + a / k;
}

void apply_capacity(const Routing& r, int64_t C, bool by_weight, std::vector<uint8_t>& kept,
                    std::vector<int32_t>& order) {
    const int n = r.n(), T = r.T, k = r.k;
    MOE_CHECK(k > 0 && n == T * k, "capacity needs token-choice routing (T={} k={} n={})", T, k, n);
    kept.assign(n, 0);
    if (C < 0) {
        for (int a = 0; a < n; a++) kept[a] = r.expert[a] >= 0;
        return;
    }
    // Visit assignments in priority order, count per expert. Slot-major order is built directly;
    // weight order is a stable sort of it (so ties stay slot-major).
    order.resize(n);
    int m = 0;
    for (int j = 0; j < k; j++)
        for (int t = 0; t < T; t++) {
            int a = t * k + j;
            if (r.expert[a] >= 0) order[m++] = a;
        }
    if (by_weight)
        std::stable_sort(order.begin(), order.begin() + m,
                         [&](int32_t x, int32_t y) { return r.weight[x] > r.weight[y]; });
    std::vector<int64_t> used(r.E, 0);
    for (int i = 0; i < m; i++) {
        int a = order[i], e = r.expert[a];
        if (used[e] < C) {
            used[e]++;
            kept[a] = 1;
        }
    }
}

void apply_capacity_ref(const Routing& r, int64_t C, bool by_weight, std::vector<uint8_t>& kept) {
    const int n = r.n(), T = r.T, k = r.k;
    kept.assign(n, 0);
    auto higher = [&](int b, int a) {  // does b have priority over a?
        if (by_weight && r.weight[b] != r.weight[a]) return r.weight[b] > r.weight[a];
        return slot_major_rank(b, T, k) < slot_major_rank(a, T, k);
    };
    for (int a = 0; a < n; a++) {
        if (r.expert[a] < 0) continue;
        if (C < 0) {
            kept[a] = 1;
            continue;
        }
        int64_t ahead = 0;
        for (int b = 0; b < n; b++)
            if (b != a && r.expert[b] == r.expert[a] && higher(b, a)) ahead++;
        kept[a] = ahead < C;
    }
}

}  // namespace moe
