// AdamW, schedule, clipping, checkpoints (round trip and every corruption), evaluation windows,
// sampling, and greedy KV-cache generation against full recomputation.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "kernels/adamw.h"
#include "moe/checkpoint.h"
#include "moe/config.h"
#include "moe/file_io.h"
#include "moe/safetensors.h"
#include "moe/trainer.h"
#include "test_util.h"
#include "train/generate.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {

std::string tmp_dir(const char* name) {
    std::string d = "/tmp/moe_test_train_" + std::to_string(getpid()) + "_" + name;
    fs::remove_all(d);
    make_dirs(d);
    return d;
}

ModelConfig tiny_moe(int vocab) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.d_ff = 24;
    c.block_size = 8;
    c.moe_every = 2;  // layer 1 MoE
    c.tie_embeddings = false;
    c.init_std = 0.3f;
    c.moe.d_model = 16;
    c.moe.n_experts = 4;
    c.moe.top_k = 2;
    c.moe.d_ff = 12;
    c.moe.router = "topk";
    c.moe.w_switch = 0.01f;
    c.moe.bias_update_rate = 0.01f;  // so balance_bias is saved too
    return c;
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

// ---- AdamW ----

TEST(AdamW, HandComputedStep) {
    // p=1, g=0.5, step 1: m=0.05, v=0.00025, mhat=0.5, vhat=0.25 -> update 0.5/0.5 = 1;
    // p -= 0.1 * (1 + 0.1 * 1) = 0.89.
    float p = 1.f, g = 0.5f, m = 0.f, v = 0.f;
    AdamWParams h;
    h.lr = 0.1f;
    h.beta1 = 0.9f;
    h.beta2 = 0.999f;
    h.eps = 1e-8f;
    h.weight_decay = 0.1f;
    h.step = 1;
    adamw_update(&p, &g, &m, &v, 1, h);
    EXPECT_NEAR(m, 0.05f, 1e-7);
    EXPECT_NEAR(v, 0.00025f, 1e-8);  // 1 - 0.999 in float is 0.00099999
    EXPECT_NEAR(p, 0.89f, 1e-6);
    // Step 2 with g=-0.5: m=0.045-0.05=-0.005, v=0.00024975+0.00025=0.00049975
    // mhat=-0.005/0.19=-0.0263158, vhat=0.00049975/0.001999=0.25 -> update -0.0526316
    h.step = 2;
    g = -0.5f;
    float p1 = p;
    adamw_update(&p, &g, &m, &v, 1, h);
    double mhat = -0.005 / 0.19, vhat = 0.00049975 / (1 - 0.999 * 0.999);
    double want = p1 - 0.1 * (mhat / (std::sqrt(vhat) + 1e-8) + 0.1 * p1);
    EXPECT_NEAR(p, want, 1e-5);
    // No decay: a zero gradient leaves the parameter where it is at step 1 (m = v = 0).
    float q = 3.f, gz = 0.f, mz = 0.f, vz = 0.f;
    h.weight_decay = 0.f;
    h.step = 1;
    adamw_update(&q, &gz, &mz, &vz, 1, h);
    EXPECT_EQ(q, 3.f);
}

TEST(AdamW, FastMatchesRefOnOddSizes) {
    for (size_t n : {1, 3, 7, 33, 4097, 100003}) {
        auto p = test::randn(n, 1), g = test::randn(n, 2);
        std::vector<float> p2 = p, m(n, 0.f), v(n, 0.f), m2 = m, v2 = v;
        AdamWParams h;
        h.lr = 3e-3f;
        h.beta2 = 0.99f;
        h.weight_decay = 0.1f;
        for (int s = 1; s <= 3; s++) {
            h.step = s;
            auto gs = test::randn(n, 10 + s);
            adamw_update_ref(p.data(), gs.data(), m.data(), v.data(), n, h);
            adamw_update(p2.data(), gs.data(), m2.data(), v2.data(), n, h);
        }
        EXPECT_TRUE(test::all_close(p2, p, 1e-6, 1e-7)) << "n=" << n;
        EXPECT_TRUE(test::all_close(m2, m, 1e-6, 1e-9)) << "n=" << n;
        EXPECT_TRUE(test::all_close(v2, v, 1e-6, 1e-12)) << "n=" << n;
    }
}

// ---- schedule and clipping ----

TEST(Schedule, WarmupCosineValues) {
    TrainConfig c;
    c.lr = 1e-3;
    c.min_lr = 1e-4;
    c.warmup_steps = 10;
    c.max_steps = 110;
    EXPECT_NEAR(lr_at(c, 1), 1e-3 / 11, 1e-12);
    EXPECT_NEAR(lr_at(c, 10), 1e-3 * 10 / 11, 1e-12);
    EXPECT_NEAR(lr_at(c, 11), 1e-3, 1e-12);    // it = 10: cosine starts at lr
    EXPECT_NEAR(lr_at(c, 61), 5.5e-4, 1e-12);  // half way: (lr + min_lr) / 2
    EXPECT_NEAR(lr_at(c, 111), 1e-4, 1e-12);   // end: min_lr
    EXPECT_NEAR(lr_at(c, 500), 1e-4, 1e-12);
    EXPECT_NEAR(lr_at(c, 36), 1e-4 + 0.5 * (1 + std::cos(M_PI * 0.25)) * 9e-4, 1e-12);
    c.lr_decay_steps = 60;
    EXPECT_NEAR(lr_at(c, 61), 1e-4, 1e-12);
    for (int s = 1; s < 110; s++) EXPECT_GE(lr_at(c, s), 0.0);
}

TEST(Clipping, GlobalNormAndScale) {
    for (size_t n : {1, 7, 33, 16385, 70001}) {
        auto g = test::randn(n, 3);
        double ref = 0;
        for (float x : g) ref += (double)x * x;
        ref = std::sqrt(ref);
        EXPECT_NEAR(l2_norm(g.data(), n), ref, 1e-9 * ref);
        EXPECT_EQ(l2_norm(g.data(), n), l2_norm_ref(g.data(), n));  // same blocks, same bits
        std::vector<float> c = g;
        double pre = clip_grad_norm(c.data(), n, 0.5);
        EXPECT_NEAR(pre, ref, 1e-9 * ref);
        if (ref > 0.5) {
            EXPECT_NEAR(l2_norm(c.data(), n), 0.5, 1e-5);
        }
        std::vector<float> u = g;
        clip_grad_norm(u.data(), n, 10 * ref);  // below the threshold: untouched
        EXPECT_EQ(u, g);
        clip_grad_norm(u.data(), n, 0);  // 0 = off
        EXPECT_EQ(u, g);
    }
}

// ---- checkpoints ----

struct CkptFixture : ::testing::Test {
    std::string root;
    std::unique_ptr<Tokenizer> tok;
    std::unique_ptr<Model> model;
    std::vector<float> m, v;
    nlohmann::json state;
    void SetUp() override {
        root = tmp_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
        tok = build_char_tokenizer("abcdefghij\n ");
        model = std::make_unique<Model>(tiny_moe(tok->vocab_size()));
        model->init_params(5);
        model->moe_layer(1)->balance_bias() = {0.1f, -0.2f, 0.3f, -0.4f};
        m = test::randn(model->n_params(), 8);
        v = test::randn(model->n_params(), 9);
        for (auto& x : v) x = x * x;
        state = {{"step", 42}, {"note", "x"}};
        save_checkpoint(root + "/ck", *model, *tok, m.data(), v.data(), &state);
    }
    void TearDown() override { fs::remove_all(root); }
};

TEST_F(CkptFixture, RoundTripIsExact) {
    for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors", "vocab.json",
                          "trainer_state.json"})
        EXPECT_TRUE(file_exists(root + "/ck/" + f)) << f;
    LoadedModel lm = load_model(root + "/ck");
    EXPECT_EQ(lm.dir, root + "/ck");
    ASSERT_EQ(lm.model->n_params(), model->n_params());
    EXPECT_EQ(std::memcmp(lm.model->param_data(), model->param_data(), model->n_params() * 4), 0);
    EXPECT_EQ(lm.model->moe_layer(1)->balance_bias(), model->moe_layer(1)->balance_bias());
    EXPECT_EQ(lm.tokenizer->vocab_size(), tok->vocab_size());
    std::vector<float> m2(m.size()), v2(v.size());
    load_optimizer(*lm.model, root + "/ck", m2.data(), v2.data());
    EXPECT_EQ(m2, m);
    EXPECT_EQ(v2, v);
    EXPECT_EQ(load_trainer_state(root + "/ck"), state);
    // HF naming and config keys.
    SafetensorsReader r(root + "/ck/model.safetensors");
    EXPECT_TRUE(r.has("model.embed_tokens.weight"));
    EXPECT_TRUE(r.has("model.layers.1.block_sparse_moe.gate.weight"));
    EXPECT_TRUE(r.has("model.layers.1.block_sparse_moe.experts.3.w2.weight"));
    auto cj = nlohmann::json::parse(read_file(root + "/ck/config.json"));
    EXPECT_EQ(cj["num_local_experts"], 4);
    EXPECT_EQ(cj["intermediate_size"], 12);
    // Saving again swaps atomically and leaves no temp folders behind.
    model->param_data()[0] += 1.f;
    save_checkpoint(root + "/ck", *model, *tok, m.data(), v.data(), &state);
    LoadedModel lm2 = load_model(root + "/ck");
    EXPECT_EQ(lm2.model->param_data()[0], model->param_data()[0]);
    int entries = 0;
    for (auto& e : fs::directory_iterator(root)) {
        (void)e;
        entries++;
    }
    EXPECT_EQ(entries, 1);
}

TEST_F(CkptFixture, RunFolderResolvesToBest) {
    fs::create_directories(root + "/run");
    fs::rename(root + "/ck", root + "/run/latest");
    EXPECT_EQ(resolve_checkpoint_dir(root + "/run"), root + "/run/latest");
    EXPECT_EQ(resolve_resume_dir(root + "/run"), root + "/run/latest");
    save_checkpoint(root + "/run/best", *model, *tok, nullptr, nullptr, nullptr);
    EXPECT_EQ(resolve_checkpoint_dir(root + "/run"), root + "/run/best");
    EXPECT_FALSE(file_exists(root + "/run/best/optimizer.safetensors"));
    std::string e = error_of([&] { resolve_checkpoint_dir(root + "/nothing"); });
    EXPECT_NE(e.find("nothing"), std::string::npos) << e;
    make_dirs(root + "/emptyrun");
    e = error_of([&] { load_model(root + "/emptyrun"); });
    EXPECT_NE(e.find("not a checkpoint folder"), std::string::npos) << e;
    e = error_of([&] { resolve_resume_dir(root + "/emptyrun"); });
    EXPECT_NE(e.find("nothing to resume"), std::string::npos) << e;
}

TEST_F(CkptFixture, CorruptionsAreNamedErrors) {
    const std::string ck = root + "/ck", st = ck + "/model.safetensors";
    const std::string good = read_file(st);
    auto expect = [&](const char* what, const std::vector<std::string>& needles) {
        std::string e = error_of([&] { load_model(ck); });
        EXPECT_FALSE(e.empty()) << what << ": no error";
        for (auto& n : needles) EXPECT_NE(e.find(n), std::string::npos) << what << ": " << e;
        write_file_atomic(st, good);
    };
    write_file_atomic(st, good.substr(0, good.size() - 100));
    expect("truncated", {"model.safetensors", "truncated"});
    write_file_atomic(st, good.substr(0, 5));
    expect("truncated header", {"model.safetensors"});
    std::string bad = good;
    uint64_t huge = 1ull << 50;
    std::memcpy(&bad[0], &huge, 8);
    write_file_atomic(st, bad);
    expect("bad header length", {"model.safetensors", "header"});
    bad = good;
    bad[8] = '!';
    write_file_atomic(st, bad);
    expect("bad header JSON", {"model.safetensors", "JSON"});
    {  // missing tensor
        SafetensorsReader r(st);
        SafetensorsWriter w;
        for (auto& n : r.names())
            if (n != "model.layers.0.self_attn.q_proj.weight")
                w.add(n, r.get(n).shape, r.get(n).data.data());
        w.save(st);
        expect("missing tensor",
               {"model.safetensors", "missing tensor model.layers.0.self_attn.q_proj.weight"});
    }
    {  // wrong shape
        SafetensorsReader r(st);
        SafetensorsWriter w;
        for (auto& n : r.names()) {
            const StTensor& t = r.get(n);
            if (n == "model.norm.weight") {
                std::vector<float> z(t.data.size() + 1, 1.f);
                w.add(n, Shape{(int64_t)z.size()}, z.data());
            } else {
                w.add(n, t.shape, t.data.data());
            }
        }
        w.save(st);
        expect("wrong shape", {"model.safetensors", "model.norm.weight", "expected shape [16]"});
    }
    {  // config mismatch: one more layer than the weights have
        std::string cfg = read_file(ck + "/config.json");
        auto j = nlohmann::json::parse(cfg);
        j["num_hidden_layers"] = 3;
        write_file_atomic(ck + "/config.json", j.dump());
        std::string e = error_of([&] { load_model(ck); });
        EXPECT_NE(e.find("key 'num_hidden_layers' is 3"), std::string::npos) << e;
        j["num_hidden_layers"] = 1;
        write_file_atomic(ck + "/config.json", j.dump());
        e = error_of([&] { load_model(ck); });
        EXPECT_NE(e.find("key 'num_hidden_layers' is 1"), std::string::npos) << e;
        j["num_hidden_layers"] = 2;
        j["vocab_size"] = 99;
        write_file_atomic(ck + "/config.json", j.dump());
        e = error_of([&] { load_model(ck); });
        EXPECT_NE(e.find("key 'vocab_size' is 99"), std::string::npos) << e;
        write_file_atomic(ck + "/config.json", std::string("{ not json"));
        e = error_of([&] { load_model(ck); });
        EXPECT_NE(e.find("config.json"), std::string::npos) << e;
        write_file_atomic(ck + "/config.json", cfg);
    }
    {  // optimizer: missing moment
        SafetensorsReader r(ck + "/optimizer.safetensors");
        SafetensorsWriter w;
        for (auto& n : r.names())
            if (n != "lm_head.weight.exp_avg_sq") w.add(n, r.get(n).shape, r.get(n).data.data());
        w.save(ck + "/optimizer.safetensors");
        std::vector<float> m2(m.size()), v2(v.size());
        std::string e = error_of([&] { load_optimizer(*model, ck, m2.data(), v2.data()); });
        EXPECT_NE(e.find("optimizer.safetensors: missing tensor lm_head.weight.exp_avg_sq"),
                  std::string::npos)
            << e;
    }
    fs::remove(ck + "/vocab.json");
    std::string e = error_of([&] { load_model(ck); });
    EXPECT_NE(e.find("no tokenizer"), std::string::npos) << e;
}

TEST_F(CkptFixture, FullDiskKeepsThePreviousCheckpoint) {
    const std::string before = read_file(root + "/ck/model.safetensors");
    model->param_data()[0] += 1.f;
    for (const char* budget : {"0", "1000", "20000"}) {
        setenv("MOE_TEST_CKPT_FAIL_AFTER_BYTES", budget, 1);
        std::string e = error_of(
            [&] { save_checkpoint(root + "/ck", *model, *tok, m.data(), v.data(), &state); });
        unsetenv("MOE_TEST_CKPT_FAIL_AFTER_BYTES");
        EXPECT_NE(e.find("No space left on device"), std::string::npos) << budget << ": " << e;
        EXPECT_EQ(read_file(root + "/ck/model.safetensors"), before);
        LoadedModel lm = load_model(root + "/ck");  // still loads
        int entries = 0;
        for (auto& d : fs::directory_iterator(root)) {
            (void)d;
            entries++;
        }
        EXPECT_EQ(entries, 1) << "temp folder left behind";
    }
    // A fresh target that fails leaves nothing at all.
    setenv("MOE_TEST_CKPT_FAIL_AFTER_BYTES", "100", 1);
    EXPECT_THROW(save_checkpoint(root + "/new", *model, *tok, nullptr, nullptr, nullptr), Error);
    unsetenv("MOE_TEST_CKPT_FAIL_AFTER_BYTES");
    EXPECT_FALSE(fs::exists(root + "/new"));
}

// ---- evaluation and generation ----

TEST(Evaluate, ConsecutiveWindowsMeanOverPredictedTokens) {
    ModelConfig c = tiny_moe(7);
    c.moe.bias_update_rate = 0;
    Model model(c);
    model.init_params(3);
    Rng r(4);
    std::vector<int32_t> toks(7 * 9 + 5);  // 7 full windows of S+1 = 9, 5 left over
    for (auto& t : toks) t = (int32_t)r.below(7);
    int64_t n_pred = 0;
    double got = evaluate_windows(model, toks, 8, 3, &n_pred);  // batches of 3, 3, 1
    EXPECT_EQ(n_pred, 7 * 8);
    double want = 0;
    for (int w = 0; w < 7; w++) {
        const int32_t* s = toks.data() + w * 9;
        want += model.forward(s, s + 1, 1, 8, false);
    }
    want /= 7;
    EXPECT_NEAR(got, want, 1e-5);
    std::vector<int32_t> few(8);
    EXPECT_THROW(evaluate_windows(model, few, 8, 3), Error);
}

TEST(Sampling, GreedyTopKTopPAndSeed) {
    std::vector<float> logits = {0.1f, 2.f, -1.f, 1.9f, 0.f};
    Rng r(1);
    SampleOptions o;
    o.temperature = 0;
    EXPECT_EQ(sample_token(logits.data(), 5, o, r), 1);
    o.temperature = 1.0f;
    o.top_k = 1;
    for (int i = 0; i < 20; i++) EXPECT_EQ(sample_token(logits.data(), 5, o, r), 1);
    o.top_k = 2;
    int c1 = 0, c3 = 0;
    for (int i = 0; i < 2000; i++) {
        int t = sample_token(logits.data(), 5, o, r);
        ASSERT_TRUE(t == 1 || t == 3);
        (t == 1 ? c1 : c3)++;
    }
    // p(1) = 1 / (1 + e^-0.1) = 0.525; 2000 draws: sd 0.011.
    EXPECT_NEAR(c1 / 2000.0, 0.525, 0.05);
    o.top_k = 0;
    o.top_p = 0.01f;  // only the most likely token
    for (int i = 0; i < 20; i++) EXPECT_EQ(sample_token(logits.data(), 5, o, r), 1);
    o.top_p = 1.f;
    Rng a(9), b(9);
    for (int i = 0; i < 50; i++)
        EXPECT_EQ(sample_token(logits.data(), 5, o, a), sample_token(logits.data(), 5, o, b));
}

TEST(Generate, GreedyEqualsArgmaxOfFullRecompute) {
    for (int moe_every : {0, 2}) {
        ModelConfig c = tiny_moe(11);
        c.moe_every = moe_every;
        c.moe.bias_update_rate = 0;
        Model model(c);
        model.init_params(11);
        auto tok =
            char_tokenizer_from_symbols({"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"});
        std::vector<int32_t> prompt = {1, 4, 2};
        SampleOptions o;
        o.temperature = 0;
        o.max_tokens = 30;  // block_size 8: slides many times
        std::string trace_path = "/tmp/moe_test_trace_" + std::to_string(getpid()) + ".jsonl";
        FILE* tf = std::fopen(trace_path.c_str(), "w");
        auto out = generate(model, *tok, prompt, o, nullptr, tf);
        std::fclose(tf);
        ASSERT_EQ(out.size(), 30u);
        std::vector<int32_t> ctx = prompt;
        int distinct = 0;
        for (size_t i = 0; i < out.size(); i++) {
            int n = std::min<int>((int)ctx.size(), c.block_size);
            const int32_t* w = ctx.data() + ctx.size() - n;
            model.forward(w, nullptr, 1, n, false);
            const float* lg = model.logits() + (size_t)(n - 1) * 11;
            int best = 0;
            for (int v = 1; v < 11; v++)
                if (lg[v] > lg[best]) best = v;
            EXPECT_EQ(out[i], best) << "step " << i << " moe_every " << moe_every;
            distinct += i > 0 && out[i] != out[i - 1];
            ctx.push_back(out[i]);
        }
        // Trace: one line per prompt and generated token.
        std::string tr = read_file(trace_path);
        int lines = (int)std::count(tr.begin(), tr.end(), '\n');
        EXPECT_EQ(lines, 3 + 30);
        auto first = nlohmann::json::parse(tr.substr(0, tr.find('\n')));
        EXPECT_EQ(first["pos"], 0);
        EXPECT_EQ(first["token"], 1);
        if (moe_every) {
            ASSERT_EQ(first["layers"].size(), 1u);
            EXPECT_EQ(first["layers"][0]["layer"], 1);
            EXPECT_EQ(first["layers"][0]["experts"].size(), 2u);
        }
        std::remove(trace_path.c_str());
    }
}

// ---- router stability metrics (docs/metrics.md) ----

// routing_change: the share of the fixed probe batch's tokens (the first validation batch) whose
// top-1 expert changed since the previous evaluation. lr 0 leaves every weight as it was (AdamW's
// decay is scaled by lr too), so the same probe routes the same: exactly 0; a large lr moves the
// router: > 0. router_logit_max is on every logged line of every MoE layer.
TEST(Trainer, RoutingChangeZeroWithoutUpdatesPositiveWith) {
    std::string dir = tmp_dir("routing_change");
    std::string text = dir + "/a.txt";
    write_file_atomic(text,
                      read_file(test::source_dir() + "/data/tinyshakespeare.txt").substr(0, 60000));
    auto run = [&](double lr, const std::string& name) {
        TrainOptions o;
        o.cfg = config_load(test::source_dir() + "/configs/tiny-test.json");
        o.cfg.data = text;
        o.cfg.max_steps = 9;
        o.cfg.eval_every = 3;
        o.cfg.eval_batches = 2;
        o.cfg.log_every = 3;
        o.cfg.threads = 1;
        o.cfg.lr = lr;
        o.cfg.min_lr = 0;
        o.out_dir = dir + "/" + name;
        o.progress = false;
        run_train(o);
        std::vector<nlohmann::json> lines;
        std::string m = read_file(o.out_dir + "/metrics.jsonl");
        for (size_t p = 0, e; p < m.size(); p = e + 1) {
            e = m.find('\n', p);
            if (e == std::string::npos) e = m.size();
            if (e > p) lines.push_back(nlohmann::json::parse(m.substr(p, e - p)));
        }
        return lines;
    };
    for (double lr : {0.0, 3e-2}) {
        auto lines = run(lr, lr == 0 ? "lr0" : "lr");
        ASSERT_EQ(lines.size(), 3u);  // steps 3, 6, 9: each logged and evaluated
        double max_change = 0;
        for (size_t i = 0; i < lines.size(); i++) {
            ASSERT_TRUE(lines[i].contains("val_loss"));
            ASSERT_FALSE(lines[i]["layers"].empty());
            for (auto& l : lines[i]["layers"]) {
                EXPECT_GT(l["router_logit_max"].get<double>(), 0.0);
                // The first evaluation has nothing to compare with.
                ASSERT_EQ(l.contains("routing_change"), i > 0) << "line " << i;
                if (i == 0) continue;
                double c = l["routing_change"].get<double>();
                EXPECT_GE(c, 0.0);
                EXPECT_LE(c, 1.0);
                if (lr == 0) {
                    EXPECT_EQ(c, 0.0) << "step " << lines[i]["step"];
                }
                max_change = std::max(max_change, c);
            }
        }
        if (lr > 0) {
            EXPECT_GT(max_change, 0.0);
        }
    }
    fs::remove_all(dir);
}
