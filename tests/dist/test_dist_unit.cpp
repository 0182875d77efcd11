// The process-group pieces that need no MPI: the single-process groups, the refusals of
// init_parallel without mpirun, and a layer given single-process groups taking exactly the old
// code path (bit-identical outputs and gradients).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "moe/error.h"
#include "moe/moe_layer.h"
#include "moe/process_group.h"
#include "test_util.h"

namespace moe {

TEST(Dist, LocalGroupsAreOneProcess) {
    ParallelGroups g = init_parallel(false, 1);
    EXPECT_EQ(g.world_size(), 1);
    EXPECT_EQ(g.ep_size(), 1);
    EXPECT_EQ(g.dp_size(), 1);
    EXPECT_EQ(g.layout(), "ep1xdp1");
    EXPECT_FALSE(g.mpi);
    // Collectives of one process are copies.
    std::vector<float> a = {1, 2, 3}, b(3);
    int64_t n = 3;
    g.world->alltoallv(a.data(), &n, b.data(), &n);
    EXPECT_EQ(a, b);
    g.world->allreduce_sum(a.data(), 3);
    EXPECT_EQ(a, b);
    int64_t v = 0;
    g.world->allgather(42, &v);
    EXPECT_EQ(v, 42);
}

TEST(Dist, ExpertParallelWithoutMpirunIsAnError) {
    try {
        init_parallel(false, 2);
        FAIL() << "accepted --expert-parallel 2 in one process";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("mpirun"), std::string::npos) << e.what();
    }
}

TEST(Dist, SingleProcessGroupsKeepTheOldPath) {
    MoeConfig c;
    c.d_model = 16;
    c.d_ff = 12;
    c.n_experts = 4;
    c.top_k = 2;
    c.router = "noisy-topk";
    c.dropless = false;
    c.capacity_factor = 1.0f;
    c.w_load = 0.1f;
    c.w_importance = 0.1f;
    MoeLayer a(c), b(c);
    b.set_parallel(init_parallel(false, 1), /*mean_grads=*/true);
    EXPECT_FALSE(b.parallel());
    const int T = 19, d = c.d_model;
    auto x = test::randn((size_t)T * d, 5), dy = test::randn((size_t)T * d, 6);
    std::vector<float> ya(T * d), yb(T * d), dxa(T * d), dxb(T * d);
    for (int step = 0; step < 2; step++) {
        a.forward({x.data(), {T, d}}, {ya.data(), {T, d}}, true);
        b.forward({x.data(), {T, d}}, {yb.data(), {T, d}}, true);
        a.backward({dy.data(), {T, d}}, {dxa.data(), {T, d}});
        b.backward({dy.data(), {T, d}}, {dxb.data(), {T, d}});
        EXPECT_EQ(ya, yb);
        EXPECT_EQ(dxa, dxb);
        EXPECT_EQ(0, std::memcmp(a.grad_data(), b.grad_data(), sizeof(float) * a.n_params()));
    }
    MoeLayer::ExpertRange o = b.owned_experts();
    EXPECT_EQ(o.first, 0);
    EXPECT_EQ(o.count, 4);
    EXPECT_EQ(o.all_offset, b.param("experts.0.w1").offset);
    EXPECT_EQ(o.all_floats, 4 * o.floats_per_expert);
}

}  // namespace moe
