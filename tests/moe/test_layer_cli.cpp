// `moe layer` end to end: --json output, --load/--save against the library run in-process on the
// same tensors, and clear errors with a non-zero exit for bad flags and bad files.
#include <sys/wait.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "moe/moe_layer.h"
#include "moe/runtime.h"
#include "moe/safetensors.h"
#include "test_util.h"

using namespace moe;

namespace {

struct CmdResult {
    int rc;
    std::string out;
};

CmdResult run_moe(const std::string& args) {
    std::string cmd = test::moe_bin() + " " + args + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    CmdResult r{-1, ""};
    if (!p) return r;
    char buf[4096];
    while (fgets(buf, sizeof buf, p)) r.out += buf;
    int st = pclose(p);
    r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

nlohmann::json last_json(const std::string& out) {
    size_t end = out.find_last_not_of('\n');
    size_t start = out.rfind('\n', end);
    return nlohmann::json::parse(out.substr(start == std::string::npos ? 0 : start + 1));
}

std::string tmp(const std::string& name) {
    return ::testing::TempDir() + "moe_layer_cli_" + std::to_string(getpid()) + "_" + name;
}

}  // namespace

TEST(LayerCli, JsonHasTheStatistics) {
    if (test::moe_bin().empty()) GTEST_SKIP() << "MOE_BIN not set";
    CmdResult r = run_moe("layer --router switch --experts 4 --topk 1 --d 16 --ffn 8 --tokens 64 "
                    "--capacity-factor 1.0 --w-switch 0.01 --json");
    ASSERT_EQ(r.rc, 0) << r.out;
    auto j = last_json(r.out);
    EXPECT_EQ(j["router"], "switch");
    ASSERT_EQ(j["tokens_per_expert"].size(), 4u);
    int64_t kept = 0;
    for (auto& v : j["tokens_per_expert"]) {
        EXPECT_LE(v.get<int64_t>(), 16);  // C = ceil(1.0 * 64 * 1 / 4)
        kept += v.get<int64_t>();
    }
    EXPECT_EQ(kept + j["dropped"].get<int64_t>(), 64);
    for (const char* k : {"load_cv", "router_entropy", "mean_top1_weight", "loss_importance",
                          "loss_load", "loss_switch", "loss_z"})
        EXPECT_TRUE(j.contains(k)) << k;
    EXPECT_GT(j["loss_switch"].get<double>(), 0.0);
    EXPECT_TRUE(j["checksum"].contains("sum") && j["checksum"].contains("abs_sum"));
}

// IN written here from a layer's own parameters; OUT must equal what the library computes.
TEST(LayerCli, LoadSaveMatchesLibrary) {
    if (test::moe_bin().empty()) GTEST_SKIP() << "MOE_BIN not set";
    MoeConfig c;
    c.router = "noisy-topk";
    c.n_experts = 4;
    c.top_k = 2;
    c.d_model = 8;
    c.d_ff = 6;
    c.n_shared_experts = 1;
    c.dropless = false;
    c.capacity_factor = 0.75f;
    c.seed = 99;
    const int T = 20, d = 8, E = 4;
    MoeLayer L(c);
    auto x = test::randn(T * d, 1), dy = test::randn(T * d, 2), noise = test::randn(T * E, 3);
    SafetensorsWriter w;
    w.add("x", Shape{T, d}, x.data());
    w.add("dy", Shape{T, d}, dy.data());
    w.add("noise", Shape{T, E}, noise.data());
    for (auto& s : L.params()) w.add(s.name, s.shape, L.param_data() + s.offset);
    const std::string in = tmp("in.safetensors"), out = tmp("out.safetensors");
    w.save(in);

    // Same thread count on both sides: results are bit-identical for a fixed count.
    CmdResult r = run_moe("layer --router noisy-topk --topk 2 --shared-experts 1 --capacity-factor 0.75 "
                    "--threads 1 --load " + in + " --save " + out);
    set_threads(1);
    ASSERT_EQ(r.rc, 0) << r.out;

    RouterNoise rn;
    rn.normal = noise.data();
    std::vector<float> y(T * d), dx(T * d);
    L.zero_grad();
    L.forward({x.data(), {T, d}}, {y.data(), {T, d}}, true, &rn);
    L.backward({dy.data(), {T, d}}, {dx.data(), {T, d}});

    SafetensorsReader o(out);
    EXPECT_TRUE(test::all_close(o.get("y", Shape{T, d}).data, y, 0, 0));
    EXPECT_TRUE(test::all_close(o.get("dx", Shape{T, d}).data, dx, 0, 0));
    for (auto& s : L.params()) {
        std::vector<float> g(L.grad_data() + s.offset, L.grad_data() + s.offset + s.shape.numel());
        EXPECT_TRUE(test::all_close(o.get("grad." + s.name, s.shape).data, g, 0, 0)) << s.name;
    }
    EXPECT_NEAR(o.get("loss.load", Shape{1}).data[0], L.aux().load, 1e-6);
    EXPECT_NEAR(o.get("loss.importance", Shape{1}).data[0], L.aux().importance, 1e-6);
    const StTensor& tpe = o.get("tokens_per_expert", Shape{E});
    EXPECT_EQ(tpe.dtype, "I64");
    for (int e = 0; e < E; e++) EXPECT_EQ((int64_t)tpe.data[e], L.stats().tokens_per_expert[e]);

    // A flag that disagrees with the file, and a file without a parameter, are clear errors.
    r = run_moe("layer --router noisy-topk --topk 2 --tokens 21 --load " + in);
    EXPECT_NE(r.rc, 0);
    EXPECT_NE(r.out.find("--tokens"), std::string::npos) << r.out;
    r = run_moe("layer --router noisy-topk --topk 2 --load " + in);  // no shared expert in flags
    EXPECT_EQ(r.rc, 0) << r.out;  // extra tensors in IN are ignored
    SafetensorsWriter w2;
    w2.add("x", Shape{T, d}, x.data());
    for (auto& s : L.params())
        if (s.name != "experts.2.w3") w2.add(s.name, s.shape, L.param_data() + s.offset);
    w2.save(in);
    r = run_moe("layer --router noisy-topk --topk 2 --shared-experts 1 --load " + in);
    EXPECT_NE(r.rc, 0);
    EXPECT_NE(r.out.find("experts.2.w3"), std::string::npos) << r.out;
    std::remove(in.c_str());
    std::remove(out.c_str());
    set_threads(0);
}

TEST(LayerCli, BadFlagsFailClearly) {
    if (test::moe_bin().empty()) GTEST_SKIP() << "MOE_BIN not set";
    struct Case {
        const char* args;
        const char* says;
    } cases[] = {
        {"layer --experts 4 --topk 5", "top_k=5"},
        {"layer --topk 0", "--topk: 0 is not allowed"},
        {"layer --capacity-factor 0", "capacity-factor"},
        {"layer --capacity-factor -1", "capacity-factor"},
        {"layer --d 0", "--d: 0 is not allowed"},
        {"layer --ffn 0", "--ffn: 0 is not allowed"},
        {"layer --router nope", "--router: 'nope' is not allowed"},
        {"layer --activation tanh", "--activation: 'tanh' is not allowed"},
        {"layer --load /nonexistent/in.safetensors", "/nonexistent/in.safetensors"},
    };
    for (auto& c : cases) {
        CmdResult r = run_moe(c.args);
        EXPECT_NE(r.rc, 0) << c.args;
        EXPECT_NE(r.out.find(c.says), std::string::npos) << c.args << "\n" << r.out;
    }
}
