// Capacity: hand-worked cases for both priorities, and the counting implementation against the
// O(n^2) definition on random routings (ties, unused slots, C from 0 to unlimited).
#include "moe/capacity.h"

#include "moe/router.h"
#include "test_util.h"

using namespace moe;

namespace {

Routing make_routing(int T, int k, int E, std::vector<int32_t> expert, std::vector<float> weight) {
    Routing r;
    r.T = T;
    r.k = k;
    r.E = E;
    r.expert = std::move(expert);
    r.weight = std::move(weight);
    for (int a = 0; a < T * k; a++) r.token.push_back(a / k);
    return r;
}

// 4 tokens, top-2 of 3 experts:
//   t0: e0 0.6, e1 0.4    t1: e0 0.7, e2 0.3    t2: e0 0.5, e1 0.5    t3: e1 0.9, e0 0.1
// cf = 0.75: C = ceil(0.75 * 4 * 2 / 3) = 2.
Routing worked_example() {
    return make_routing(4, 2, 3, {0, 1, 0, 2, 0, 1, 1, 0},
                        {0.6f, 0.4f, 0.7f, 0.3f, 0.5f, 0.5f, 0.9f, 0.1f});
}

}  // namespace

TEST(Capacity, Formula) {
    EXPECT_EQ(expert_capacity(0.75, 4, 2, 3, false), 2);
    EXPECT_EQ(expert_capacity(1.0, 4096, 2, 8, false), 1024);
    EXPECT_EQ(expert_capacity(1.25, 4096, 2, 8, false), 1280);
    EXPECT_EQ(expert_capacity(1.0, 5, 1, 3, false), 2);  // ceil(5/3)
    EXPECT_EQ(expert_capacity(1.0, 7, 4, 4, false), 7);  // dense softmax: k = E -> ceil(cf T)
    EXPECT_EQ(expert_capacity(1.0, 7, 2, 4, true), -1);
}

// Token priority, slot-major: slot 0 in token order (t0 e0, t1 e0, t2 e0, t3 e1), then slot 1
// (t0 e1, t1 e2, t2 e1, t3 e0). e0 fills with t0s0, t1s0 -> t2s0 and t3s1 dropped; e1 takes
// t3s0, t0s1 -> t2s1 dropped; e2 takes t1s1.
TEST(Capacity, TokenPriorityWorkedExample) {
    Routing r = worked_example();
    std::vector<uint8_t> kept, ref;
    std::vector<int32_t> order;
    apply_capacity(r, 2, false, kept, order);
    EXPECT_EQ(kept, (std::vector<uint8_t>{1, 1, 1, 1, 0, 0, 1, 0}));
    apply_capacity_ref(r, 2, false, ref);
    EXPECT_EQ(ref, kept);
}

// Weight priority: 0.9 t3s0 e1, 0.7 t1s0 e0, 0.6 t0s0 e0, 0.5 t2s0 e0 (slot-major rank 2 beats
// t2s1's rank 6), 0.5 t2s1 e1, 0.4 t0s1 e1, 0.3 t1s1 e2, 0.1 t3s1 e0.
// e0: t1s0, t0s0 kept; t2s0, t3s1 dropped. e1: t3s0, t2s1 kept; t0s1 dropped. e2: t1s1 kept.
TEST(Capacity, WeightPriorityWorkedExample) {
    Routing r = worked_example();
    std::vector<uint8_t> kept, ref;
    std::vector<int32_t> order;
    apply_capacity(r, 2, true, kept, order);
    EXPECT_EQ(kept, (std::vector<uint8_t>{1, 0, 1, 1, 0, 1, 1, 0}));
    apply_capacity_ref(r, 2, true, ref);
    EXPECT_EQ(ref, kept);
}

// Unused slots (GShard's second expert not dispatched, expert -1) take no capacity and are
// never kept; C = 1.
TEST(Capacity, UnusedSlotsTakeNoCapacity) {
    Routing r = make_routing(3, 2, 2, {0, -1, 1, 0, 0, -1}, {0.9f, 0.1f, 0.6f, 0.4f, 0.8f, 0.2f});
    std::vector<uint8_t> kept;
    std::vector<int32_t> order;
    apply_capacity(r, 1, false, kept, order);
    EXPECT_EQ(kept, (std::vector<uint8_t>{1, 0, 1, 0, 0, 0}));
    apply_capacity(r, -1, false, kept, order);
    EXPECT_EQ(kept, (std::vector<uint8_t>{1, 0, 1, 1, 1, 0}));
    apply_capacity(r, 1, true, kept, order);  // e0: 0.9 (t0) wins over 0.8 (t2) and 0.4 (t1)
    EXPECT_EQ(kept, (std::vector<uint8_t>{1, 0, 1, 0, 0, 0}));
}

TEST(Capacity, MatchesDefinitionOnRandomRoutings) {
    Rng rng(7);
    for (int trial = 0; trial < 60; trial++) {
        int T = 1 + rng.below(40), E = 1 + rng.below(9), k = 1 + rng.below(E);
        std::vector<int32_t> ex(T * k);
        std::vector<float> w(T * k);
        for (int a = 0; a < T * k; a++) {
            ex[a] = rng.below(10) == 0 ? -1 : (int)rng.below(E);
            w[a] = (float)rng.below(5) / 4.f;  // few distinct values: many ties
        }
        Routing r = make_routing(T, k, E, ex, w);
        int64_t C = (int64_t)rng.below(T + 1) - (trial % 5 == 0 ? T + 1 : 0);
        if (C < -1) C = -1;
        for (bool by_weight : {false, true}) {
            std::vector<uint8_t> kept, ref;
            std::vector<int32_t> order;
            apply_capacity(r, C, by_weight, kept, order);
            apply_capacity_ref(r, C, by_weight, ref);
            ASSERT_EQ(kept, ref) << "T=" << T << " E=" << E << " k=" << k << " C=" << C
                                 << " by_weight=" << by_weight;
            std::vector<int64_t> per(E, 0);
            for (int a = 0; a < T * k; a++)
                if (kept[a]) per[ex[a]]++;
            for (int e = 0; e < E; e++)
                if (C >= 0) {
                    EXPECT_LE(per[e], C);
                }
        }
    }
}
