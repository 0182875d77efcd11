// The process-group pieces that need no MPI: the single-process groups, the refusals of
// init_parallel without mpirun, and a layer given single-process groups taking exactly the old
// code path (bit-identical outputs and gradients).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/model.h"
#include "moe/moe_layer.h"
#include "moe/process_group.h"
#include "moe/tokenizer.h"
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

// ---- each rank holds only its experts (ExpertShard) ----

static MoeConfig small_moe() {
    MoeConfig c;
    c.d_model = 12;
    c.d_ff = 10;
    c.n_experts = 6;
    c.top_k = 2;
    c.n_shared_experts = 1;
    c.seed = 99;
    return c;
}

TEST(Dist, ShardedLayerHoldsItsExpertsWithTheSameValues) {
    MoeConfig c = small_moe();
    MoeLayer all(c);
    for (int parts : {2, 3, 6})
        for (int index = 0; index < parts; index++) {
            MoeLayer part(c, /*own_buffers=*/true, ExpertShard{parts, index});
            const int per = c.n_experts / parts;
            int experts = 0;
            for (const ParamSpec& p : part.params()) {
                if (p.name.rfind("experts.", 0) == 0) {
                    const int e = std::atoi(p.name.c_str() + 8);
                    EXPECT_GE(e, index * per) << p.name;
                    EXPECT_LT(e, (index + 1) * per) << p.name;
                    experts += p.name.find(".w1") != std::string::npos;
                }
                // The same initial values as the unsharded layer (full-table draw order).
                const ParamSpec& q = all.param(p.name);
                EXPECT_EQ(0, std::memcmp(part.param_data() + p.offset, all.param_data() + q.offset,
                                         sizeof(float) * (size_t)p.shape.numel()))
                    << p.name << " part " << index << " of " << parts;
            }
            EXPECT_EQ(experts, per);
            const size_t per_expert = part.param("experts." + std::to_string(index * per) + ".w1")
                                          .shape.numel() * 3;  // swiglu: w1, w3, w2
            EXPECT_EQ(part.n_params(), all.n_params() - (size_t)(c.n_experts - per) * per_expert);
        }
    // A part that does not divide the experts, or one out of range: clear errors.
    EXPECT_THROW(MoeLayer(c, true, ExpertShard{4, 0}), Error);
    EXPECT_THROW(MoeLayer(c, true, ExpertShard{2, 2}), Error);
    // A sharded layer outside a process group refuses to run (it lacks experts).
    MoeLayer part(c, true, ExpertShard{2, 1});
    const int T = 5, d = c.d_model;
    auto x = test::randn((size_t)T * d, 3);
    std::vector<float> y((size_t)T * d);
    try {
        part.forward({x.data(), {T, d}}, {y.data(), {T, d}}, false);
        FAIL() << "a sharded layer ran in one process";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("set_parallel"), std::string::npos) << e.what();
    }
    EXPECT_THROW(part.set_parallel(init_parallel(false, 1)), Error);
}

static ModelConfig tiny_model() {
    ModelConfig c;
    c.vocab_size = 12;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.d_ff = 24;
    c.block_size = 8;
    c.moe_every = 1;
    c.tie_embeddings = false;
    c.moe.d_model = 16;
    c.moe.d_ff = 8;
    c.moe.n_experts = 4;
    c.moe.top_k = 2;
    return c;
}

// Saving a sharded model asks for the other ranks' experts in file order (here served from an
// unsharded copy): the files are byte for byte the unsharded model's; loading the checkpoint
// into a sharded model reads back exactly its tensors.
TEST(Dist, ShardedModelSavesAndLoadsTheWholeCheckpoint) {
    namespace fs = std::filesystem;
    const std::string root = "/tmp/moe_test_dist_" + std::to_string(getpid());
    fs::remove_all(root);
    auto tok = build_char_tokenizer("abcdefghij\n");
    ModelConfig c = tiny_model();
    c.vocab_size = tok->vocab_size();
    Model all(c);
    all.init_params(11);
    std::vector<float> m = test::randn(all.n_params(), 1), v = test::randn(all.n_params(), 2);
    for (auto& x : v) x = x * x;
    nlohmann::json st = {{"step", 3}};
    save_checkpoint(root + "/all", all, *tok, m.data(), v.data(), &st);

    Model part(c, true, ExpertShard{2, 1});
    part.init_params(11);
    std::map<std::string, size_t> off;
    for (const ParamSpec& p : all.params()) off[p.name] = p.offset;
    std::vector<float> pm(part.n_params()), pv(part.n_params());
    for (const ParamSpec& p : part.params()) {
        ASSERT_EQ(0, std::memcmp(part.param_data() + p.offset, all.param_data() + off[p.name],
                                 sizeof(float) * (size_t)p.shape.numel()))
            << p.name << ": a sharded model's init differs";
        std::memcpy(pm.data() + p.offset, m.data() + off[p.name], sizeof(float) * p.shape.numel());
        std::memcpy(pv.data() + p.offset, v.data() + off[p.name], sizeof(float) * p.shape.numel());
    }
    std::vector<std::string> asked;
    TensorFetch fetch;
    fetch.get = [&](const ParamSpec& s, int which) -> const float* {
        asked.push_back(s.name + "/" + std::to_string(which));
        const float* base = which == 0 ? all.param_data() : which == 1 ? m.data() : v.data();
        return base + off.at(s.name);
    };
    fetch.has_state = [](const ParamSpec&) { return true; };
    save_checkpoint(root + "/part", part, *tok, pm.data(), pv.data(), &st, nullptr, &fetch);
    for (const char* f : {"model.safetensors", "optimizer.safetensors", "config.json"})
        EXPECT_EQ(read_file(root + "/all/" + f), read_file(root + "/part/" + f)) << f;
    // Experts 0 and 1 of each of the 2 layers, 3 tensors each, weights then two moments.
    EXPECT_EQ(asked.size(), 2u * 2 * 3 * 3);
    ASSERT_FALSE(asked.empty());
    EXPECT_EQ(asked[0], "model.layers.0.block_sparse_moe.experts.0.w1.weight/0");

    Model back(c, false, ExpertShard{2, 1});
    load_params(back, root + "/all");
    EXPECT_EQ(0, std::memcmp(back.param_data(), part.param_data(), sizeof(float) * part.n_params()));
    std::vector<float> bm(part.n_params()), bv(part.n_params());
    load_optimizer(back, root + "/all", bm.data(), bv.data());
    EXPECT_EQ(bm, pm);
    EXPECT_EQ(bv, pv);
    fs::remove_all(root);
}

TEST(Dist, LocalNonblockingAllToAllIsACopy) {
    ParallelGroups g = init_parallel(false, 1);
    std::vector<float> a = {1, 2, 3, 4, 5}, b(5, 0.f);
    int64_t n = 3, sd = 1, rd = 2;
    int h = g.world->ialltoallv(a.data(), &n, &sd, b.data(), &n, &rd);
    g.world->wait(h);
    EXPECT_EQ(b, (std::vector<float>{0, 0, 2, 3, 4}));
}

}  // namespace moe
