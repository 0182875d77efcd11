// Fine-tuning (issue 12): freeze groups and globs, the skipped gradient work, trainable
// gradients unchanged by freezing others, --init-from (same weights at step 0, fresh optimizer,
// model keys from the checkpoint), frozen tensors bit-identical after training with no optimizer
// state, resume keeping the freeze, sparse upcycling (dense logits at step 0), unknown symbols,
// eval_also, and every bad input.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>

#include "moe/checkpoint.h"
#include "moe/config.h"
#include "moe/file_io.h"
#include "moe/finetune.h"
#include "moe/hf_model.h"
#include "moe/safetensors.h"
#include "moe/trainer.h"
#include "infer/hf_fixture.h"
#include "test_util.h"

using namespace moe;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string tmp_dir(const char* name) {
    std::string d = "/tmp/moe_test_finetune_" + std::to_string(getpid()) + "_" + name;
    fs::remove_all(d);
    make_dirs(d);
    return d;
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Two layers, layer 1 MoE (4 experts, one shared expert), untied head: every group is present.
ModelConfig tiny(int vocab) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.d_ff = 24;
    c.block_size = 8;
    c.moe_every = 2;
    c.tie_embeddings = false;
    c.init_std = 0.3f;
    c.moe.n_experts = 4;
    c.moe.top_k = 2;
    c.moe.d_ff = 12;
    c.moe.n_shared_experts = 1;
    c.moe.router = "topk";
    c.moe.w_switch = 0.01f;
    c.moe.w_zloss = 0.001f;
    return c;
}

std::vector<std::string> selected(const Model& m, const std::string& spec) {
    std::vector<uint8_t> f = resolve_freeze(m.params(), spec);
    std::vector<std::string> out;
    for (size_t i = 0; i < f.size(); i++)
        if (f[i]) out.push_back(m.params()[i].name);
    return out;
}

// A small training text (the Shakespeare corpus' first 60k bytes) in a run's folder.
std::string write_text(const std::string& dir, const std::string& name, size_t n,
                       size_t from = 0) {
    std::string text = read_file(test::source_dir() + "/data/tinyshakespeare.txt").substr(from, n);
    std::string p = dir + "/" + name;
    write_file_atomic(p, text);
    return p;
}

TrainConfig tiny_train(const std::string& data) {
    TrainConfig c = config_load(test::source_dir() + "/configs/tiny-test.json");
    c.data = data;
    c.max_steps = 6;
    c.eval_every = 3;
    c.eval_batches = 2;
    c.log_every = 3;
    c.threads = 1;
    return c;
}

std::vector<json> metrics_lines(const std::string& run) {
    std::vector<json> out;
    std::string text = read_file(run + "/metrics.jsonl");
    size_t p = 0;
    while (p < text.size()) {
        size_t e = text.find('\n', p);
        if (e == std::string::npos) e = text.size();
        if (e > p) out.push_back(json::parse(text.substr(p, e - p)));
        p = e + 1;
    }
    return out;
}

}  // namespace

// ---- freeze specs ----

TEST(Freeze, GroupsAndGlobsSelectTheRightTensors) {
    Model m(tiny(11));
    struct Case {
        std::string spec;
        std::function<bool(const std::string&)> want;
    };
    auto in = [](const char* p) {
        return [p](const std::string& n) { return n.find(p) != std::string::npos; };
    };
    auto ends = [](const char* e) {
        return [e](const std::string& n) {
            std::string s = e;
            return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
        };
    };
    auto expert = [](const std::string& n) {
        return n.find(".experts.") != std::string::npos ||
               n.find(".shared_experts.") != std::string::npos;
    };
    auto router = in(".block_sparse_moe.gate.");
    std::vector<Case> cases = {
        {"experts", expert},
        {"router", router},
        {"attention", in(".self_attn.")},
        {"embeddings",
         [](const std::string& n) { return n == "model.embed_tokens.weight" || n == "lm_head.weight"; }},
        {"norms", ends("norm.weight")},
        {"non-expert", [&](const std::string& n) { return !expert(n) && !router(n); }},
        {"moe", [&](const std::string& n) { return expert(n) || router(n); }},
        {"model.layers.*.self_attn.*", in(".self_attn.")},
        {"model.layers.0.*", in("model.layers.0.")},
        {"model.layers.1.block_sparse_moe.experts.?.w2.weight",
         [](const std::string& n) {
             return n.find(".block_sparse_moe.experts.") != std::string::npos &&
                    n.find(".w2.weight") != std::string::npos;
         }},
        {"router, model.norm.weight",
         [&](const std::string& n) { return router(n) || n == "model.norm.weight"; }},
    };
    for (auto& c : cases) {
        std::vector<std::string> got = selected(m, c.spec), want;
        for (auto& p : m.params())
            if (c.want(p.name)) want.push_back(p.name);
        EXPECT_FALSE(want.empty()) << c.spec;
        EXPECT_EQ(got, want) << c.spec;
    }
    // The router group takes the gate only; the shared expert counts as an expert.
    EXPECT_EQ(selected(m, "router"),
              std::vector<std::string>{"model.layers.1.block_sparse_moe.gate.weight"});
    EXPECT_TRUE(has(fmt::format("{}", fmt::join(selected(m, "experts"), " ")),
                    "shared_experts.0.w1"));
    EXPECT_TRUE(resolve_freeze(m.params(), "").size() == m.params().size());
    EXPECT_TRUE(glob_match("a*b?d", "axxbcd"));
    EXPECT_FALSE(glob_match("a*b?d", "axxbd"));
    EXPECT_TRUE(glob_match("*", ""));
}

TEST(Freeze, BadSpecsAreErrorsListingTheGroups) {
    Model m(tiny(11));
    std::string e = error_of([&] { resolve_freeze(m.params(), "expert"); });
    EXPECT_TRUE(has(e, "unknown group 'expert'") && has(e, "non-expert")) << e;
    e = error_of([&] { resolve_freeze(m.params(), "model.layers.9.*"); });
    EXPECT_TRUE(has(e, "matches no tensor") && has(e, "experts, router, attention")) << e;
    e = error_of([&] { resolve_freeze(m.params(), "non-expert,moe"); });
    EXPECT_TRUE(has(e, "freezes every tensor")) << e;
    ModelConfig dense = tiny(11);
    dense.moe_every = 0;
    Model d(dense);
    e = error_of([&] { resolve_freeze(d.params(), "router"); });  // a dense model has no router
    EXPECT_TRUE(has(e, "'router' matches no tensor")) << e;
    e = error_of([&] { resolve_freeze(d.params(), "non-expert"); });
    EXPECT_TRUE(has(e, "freezes every tensor")) << e;
}

// ---- backward with frozen tensors ----

TEST(Freeze, TrainableGradientsUnchangedAndFrozenWorkSkipped) {
    const ModelConfig cfg = tiny(11);
    const int B = 2, S = 8;
    std::vector<int32_t> x(B * S), y(B * S);
    for (int i = 0; i < B * S; i++) x[i] = (i * 7 + 3) % 11, y[i] = (i * 5 + 1) % 11;
    Model full(cfg);
    full.init_params(3);
    full.zero_grad();
    full.forward(x.data(), y.data(), B, S, true);
    full.backward();
    for (const char* spec : {"experts", "router", "attention", "embeddings", "norms",
                             "non-expert", "moe", "model.layers.*.self_attn.*"}) {
        Model m(cfg);
        m.init_params(3);
        std::vector<uint8_t> fz = resolve_freeze(m.params(), spec);
        m.set_frozen(fz);
        m.zero_grad();
        m.forward(x.data(), y.data(), B, S, true);
        m.backward();
        for (size_t i = 0; i < fz.size(); i++) {
            const ParamSpec& p = m.params()[i];
            const float* g = m.grad_data() + p.offset;
            const float* gf = full.grad_data() + p.offset;
            const size_t n = (size_t)p.shape.numel();
            if (!fz[i]) {
                // Same kernels on the same inputs: bit-identical, not merely close.
                EXPECT_EQ(std::memcmp(g, gf, n * 4), 0) << spec << ": " << p.name;
            } else {
                // Skipped work leaves the zeroed gradient untouched (no group here shares a
                // GEMM with a trainable tensor).
                bool zero = true;
                for (size_t k = 0; k < n; k++) zero = zero && g[k] == 0.f;
                EXPECT_TRUE(zero) << spec << ": frozen " << p.name << " got a gradient";
            }
        }
    }
}

// ---- the trainer: init-from, freeze, resume ----

struct RunFixture : ::testing::Test {
    std::string root, data, kjv;
    void SetUp() override {
        root = tmp_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
        data = write_text(root, "a.txt", 60000);
        kjv = root + "/kjv.txt";  // a second domain with symbols Shakespeare lacks
        std::string t = read_file(test::source_dir() + "/data/kjv.txt").substr(0, 60000);
        write_file_atomic(kjv, t);
        TrainOptions o;
        o.cfg = tiny_train(data);
        o.out_dir = root + "/base";
        o.progress = false;
        run_train(o);
    }
    void TearDown() override { fs::remove_all(root); }
    TrainOptions ft(const std::string& out, const std::string& freeze) {
        TrainOptions o;
        o.cfg = tiny_train(data);
        o.cfg.init_from = root + "/base";
        o.cfg.freeze = freeze;
        o.cfg.lr = 1e-2;  // large, so every trainable tensor moves visibly in a few steps
        o.out_dir = root + "/" + out;
        o.progress = false;
        return o;
    }
};

TEST_F(RunFixture, InitFromStartsAtTheCheckpointsLoss) {
    TrainResult base;
    auto st = load_trainer_state(root + "/base/best");
    TrainOptions o = ft("ft", "");
    run_train(o);
    std::vector<json> lines = metrics_lines(root + "/ft");
    ASSERT_FALSE(lines.empty());
    ASSERT_EQ(lines[0]["step"], 0);
    // Same weights, same fixed validation batches: the same loss, bit for bit.
    EXPECT_EQ(lines[0]["val_loss"].get<double>(), st["best_val_loss"].get<double>());
    // Fresh schedule: step 1 is warm-up again; the run records where it started.
    auto fz = json::parse(read_file(root + "/ft/frozen.json"));
    EXPECT_EQ(fz["init_from"], root + "/base/best");
    EXPECT_EQ(fz["trainable_params"], fz["n_params"]);
    auto tc = json::parse(read_file(root + "/ft/train_config.json"));
    EXPECT_EQ(tc["init_from"], root + "/base");
}

TEST_F(RunFixture, FrozenTensorsBitIdenticalWithoutOptimizerStateAndResumeKeepsFreeze) {
    TrainOptions o = ft("ft", "non-expert");
    o.cfg.stop_after = 3;
    run_train(o);
    TrainOptions r;
    r.resume_dir = root + "/ft";
    r.progress = false;
    run_train(r);  // steps 4..6, the freeze from the recorded config
    LoadedModel before = load_model(root + "/base/best");
    LoadedModel after = load_model(root + "/ft/latest");
    Model& after_m = *after.model;
    std::vector<uint8_t> fz = resolve_freeze(after_m.params(), "non-expert");
    SafetensorsReader opt(root + "/ft/latest/optimizer.safetensors");
    int n_frozen = 0, n_moved = 0;
    for (size_t i = 0; i < fz.size(); i++) {
        const ParamSpec& p = after_m.params()[i];
        const float* a = after_m.param_data() + p.offset;
        const float* b = before.model->param_data() + p.offset;
        bool same = std::memcmp(a, b, (size_t)p.shape.numel() * 4) == 0;
        if (fz[i]) {
            n_frozen++;
            EXPECT_TRUE(same) << "frozen " << p.name << " changed";
            EXPECT_FALSE(opt.has(p.name + ".exp_avg")) << p.name;
        } else {
            n_moved += !same;
            EXPECT_TRUE(opt.has(p.name + ".exp_avg")) << p.name;
        }
    }
    EXPECT_GT(n_frozen, 0);
    EXPECT_GT(n_moved, 0);
    auto rec = json::parse(read_file(root + "/ft/frozen.json"));
    EXPECT_EQ(rec["freeze"], "non-expert");
    EXPECT_EQ((int)rec["frozen_tensors"].size(), n_frozen);
    EXPECT_EQ(rec["optimizer_state_bytes_saved"].get<int64_t>(),
              8 * rec["frozen_params"].get<int64_t>());
    EXPECT_LT(rec["trainable_params"].get<int64_t>(), rec["n_params"].get<int64_t>());
    // The resumed run went on from step 3 with the same freeze.
    EXPECT_EQ(load_trainer_state(root + "/ft/latest")["step"], 6);
    // Changing the freeze on resume is an error.
    TrainOptions r2;
    r2.resume_dir = root + "/ft";
    r2.progress = false;
    r2.overrides = {{"freeze", "experts"}, {"max-steps", "8"}};
    std::string e = error_of([&] { run_train(r2); });
    EXPECT_TRUE(has(e, "keeps its freeze")) << e;
}

TEST_F(RunFixture, InitFromBadInputs) {
    // A shape key that disagrees with the checkpoint names the key.
    TrainOptions o = ft("x1", "");
    o.cfg.model.n_layers = 3;
    o.given_keys = {"n_layers"};
    std::string e = error_of([&] { run_train(o); });
    EXPECT_TRUE(has(e, "n_layers: 3") && has(e, "has 2")) << e;
    // A shape key not given comes from the checkpoint (no error), a routing key given stays.
    o = ft("x2", "");
    o.cfg.model.n_layers = 3;
    o.cfg.model.moe.w_switch = 0.05f;
    o.given_keys = {"w_switch"};
    o.cfg.max_steps = 1;
    run_train(o);
    auto tc = json::parse(read_file(root + "/x2/train_config.json"));
    EXPECT_EQ(tc["n_layers"], 2);
    EXPECT_NEAR(tc["w_switch"].get<double>(), 0.05, 1e-7);
    // Another tokenizer asked for.
    o = ft("x3", "");
    o.cfg.tokenizer = "sentencepiece";
    o.given_keys = {"tokenizer"};
    e = error_of([&] { run_train(o); });
    EXPECT_TRUE(has(e, "tokenizer: 'sentencepiece'") && has(e, "char tokenizer")) << e;
    // A checkpoint whose vocabulary does not match its model.
    fs::copy(root + "/base/best", root + "/badvocab", fs::copy_options::recursive);
    write_file_atomic(root + "/badvocab/vocab.json", "[\"a\",\"b\"]\n");
    o = ft("x4", "");
    o.cfg.init_from = root + "/badvocab";
    e = error_of([&] { run_train(o); });
    EXPECT_TRUE(has(e, "2 symbols") && has(e, "vocab_size=")) << e;
    // Symbols outside the char vocabulary: file, symbol, byte and line named...
    o = ft("x5", "");
    o.cfg.data = kjv;
    e = error_of([&] { run_train(o); });
    EXPECT_TRUE(has(e, kjv) && has(e, "'('") && has(e, "line ") && has(e, "--unknown-symbol"))
        << e;
    // ... or mapped, and the second corpus evaluated beside at every evaluation.
    o = ft("x6", "");
    o.cfg.data = kjv;
    o.cfg.unknown_symbol = ",";
    o.cfg.eval_also = data;
    run_train(o);
    std::vector<json> lines = metrics_lines(root + "/x6");
    int with_also = 0;
    for (auto& l : lines) {
        EXPECT_EQ(l.contains("val_loss"), l.contains("eval_also_loss")) << l.dump();
        with_also += l.contains("eval_also_loss");
    }
    EXPECT_GE(with_also, 3);  // steps 0, 3, 6
    // The first Shakespeare evaluation is the base model's own validation loss on its data.
    auto st = load_trainer_state(root + "/base/best");
    EXPECT_EQ(lines[0]["eval_also_loss"].get<double>(), st["best_val_loss"].get<double>());
    o = ft("x7", "");
    o.cfg.data = kjv;
    o.cfg.unknown_symbol = "(";
    e = error_of([&] { run_train(o); });
    EXPECT_TRUE(has(e, "unknown_symbol: '('") && has(e, "not in the character vocabulary")) << e;
    // Bad freeze through the trainer.
    o = ft("x8", "bogus");
    e = error_of([&] { run_train(o); });
    EXPECT_TRUE(has(e, "freeze: unknown group 'bogus'")) << e;
}

// ---- sparse upcycling ----

TEST(Upcycle, TopKRenormalisedGivesTheDenseLogitsAtStepZero) {
    std::string root = tmp_dir("upcycle");
    auto tok = build_char_tokenizer("abcdefghijk");
    ModelConfig dc = tiny(tok->vocab_size());
    dc.moe_every = 0;
    dc.d_ff = 12;
    Model dense(dc);
    dense.init_params(11);
    save_checkpoint(root + "/dense", dense, *tok, nullptr, nullptr, nullptr);

    ModelConfig mc = tiny(tok->vocab_size());
    mc.moe_every = 1;
    mc.moe.n_shared_experts = 0;
    mc.moe.n_experts = 4;
    mc.moe.top_k = 2;
    mc.moe.d_ff = 12;  // = the dense d_ff
    mc.moe.renormalize = true;
    mc.moe.dropless = true;
    Model moe(mc);
    moe.init_params(99);  // routers: fresh, and different from anything dense
    EXPECT_EQ(upcycle_params(moe, root + "/dense", 0.f, 1), 8);
    const int B = 2, S = 8;
    std::vector<int32_t> x(B * S);
    for (int i = 0; i < B * S; i++) x[i] = (i * 5 + 2) % tok->vocab_size();
    dense.forward(x.data(), nullptr, B, S, false);
    moe.forward(x.data(), nullptr, B, S, false);
    const size_t n = (size_t)B * S * tok->vocab_size();
    // Every expert is the dense FFN and the two weights sum to 1: the same function. Not
    // bit-identical (w1 + w2 rounds, and the GEMMs run on permuted rows), so a float tolerance.
    EXPECT_TRUE(test::all_close(moe.logits(), dense.logits(), n, 1e-5, 1e-5));
    // With noise the experts differ, so do the logits.
    Model noisy(mc);
    noisy.init_params(99);
    upcycle_params(noisy, root + "/dense", 0.05f, 1);
    noisy.forward(x.data(), nullptr, B, S, false);
    EXPECT_FALSE(test::all_close(noisy.logits(), dense.logits(), n, 1e-5, 1e-5));
    fs::remove_all(root);
}

TEST(Upcycle, ShapesThatDoNotFitNameTheTensorAndBothShapes) {
    std::string root = tmp_dir("upcycle_bad");
    auto tok = build_char_tokenizer("abcdefghijk");
    ModelConfig dc = tiny(tok->vocab_size());
    dc.moe_every = 0;
    Model dense(dc);
    save_checkpoint(root + "/dense", dense, *tok, nullptr, nullptr, nullptr);
    ModelConfig mc = tiny(tok->vocab_size());
    mc.moe_every = 1;
    mc.moe.n_shared_experts = 0;
    mc.moe.d_ff = 12;  // dense d_ff is 24
    {
        Model moe(mc);
        std::string e = error_of([&] { upcycle_params(moe, root + "/dense", 0.f, 1); });
        EXPECT_TRUE(has(e, "model.layers.0.mlp.gate_proj.weight is [24, 16]") &&
                    has(e, "experts.0.w1.weight is [12, 16]") && has(e, "expert_d_ff")) << e;
    }
    mc.moe.d_ff = 24;
    mc.d_model = 32;
    mc.n_heads = 2;
    {
        Model moe(mc);
        std::string e = error_of([&] { upcycle_params(moe, root + "/dense", 0.f, 1); });
        EXPECT_TRUE(has(e, "model.embed_tokens.weight is [11, 16]") && has(e, "[11, 32]")) << e;
    }
    {
        Model moe_src(mc);  // an MoE checkpoint is not a dense one
        save_checkpoint(root + "/moe", moe_src, *tok, nullptr, nullptr, nullptr);
        Model moe(mc);
        std::string e = error_of([&] { upcycle_params(moe, root + "/moe", 0.f, 1); });
        EXPECT_TRUE(has(e, "already an MoE layer")) << e;
    }
    fs::remove_all(root);
}

// ---- unknown symbols ----

TEST(UnknownSymbols, ErrorNamesFileSymbolOffsetAndLineOrMaps) {
    auto tok = build_char_tokenizer("ab\n ,");
    std::string e = error_of([&] { map_unknown_symbols("ab\nb(a)", *tok, "", "f.txt"); });
    EXPECT_TRUE(has(e, "f.txt: symbol '(' at byte 4 (line 2)") && has(e, "'(' ')'")) << e;
    int64_t n = 0;
    EXPECT_EQ(map_unknown_symbols("ab\nb(a)", *tok, ",", "f.txt", &n), "ab\nb,a,");
    EXPECT_EQ(n, 2);
    e = error_of([&] { map_unknown_symbols("ab", *tok, "z", "f.txt"); });
    EXPECT_TRUE(has(e, "unknown_symbol: 'z'")) << e;
}

// ---- a Hugging Face folder (issue 8) ----

namespace {

// Mean cross-entropy of the training model over the windows hf_eval_windows uses (consecutive
// windows of block + 1 tokens, each predicting its last block tokens).
double model_eval_windows(Model& m, const std::vector<int32_t>& ids, int block) {
    const size_t n_win = ids.size() / ((size_t)block + 1);
    double total = 0;
    for (size_t w = 0; w < n_win; w++) {
        const int32_t* x = ids.data() + w * (block + 1);
        total += m.forward(x, x + 1, 1, block, false);
    }
    return total / (double)n_win;
}

}  // namespace

// A downloaded-style qwen2_moe folder (BF16, two shards and an index, no moe_cpp; a char
// tokenizer saved beside it) fine-tuned with --init-from and a freeze: the loss goes down, the
// checkpoint is a qwen2_moe HF folder the engine runs (moe generate), and the engine's eval loss
// equals the training model's on the same windows.
TEST(HfFinetune, Qwen2MoeFolderTrainsAndItsCheckpointRunsInTheEngine) {
    std::string root = tmp_dir("hf_qwen2");
    const std::string text = read_file(test::source_dir() + "/data/tinyshakespeare.txt").substr(0, 30000);
    const std::string data = root + "/a.txt";
    write_file_atomic(data, text);
    auto tok = build_char_tokenizer(text);
    ModelConfig c;
    c.family = "qwen2_moe";
    c.vocab_size = tok->vocab_size();
    c.d_model = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_ff = 48;
    c.block_size = 32;
    c.tie_embeddings = false;
    c.init_std = 0.1f;
    c.qkv_bias = true;
    c.moe_layers = {0, 1};
    c.shared_ff = 24;
    c.moe.n_experts = 4;
    c.moe.top_k = 2;
    c.moe.d_ff = 16;
    c.moe.renormalize = false;
    Model m(c);
    {  // non-zero biases: a dropped bias would show in the losses compared below
        Rng r(5);
        for (const ParamSpec& p : m.params())
            if (p.name.find(".bias") != std::string::npos)
                r.fill_normal(m.param_data() + p.offset, p.shape.numel(), 0.f, 0.1f);
    }
    std::vector<test::HfTensor> ts;
    for (const ParamSpec& p : m.params())
        ts.push_back({p.name, p.shape.dims,
                      std::vector<float>(m.param_data() + p.offset,
                                         m.param_data() + p.offset + p.shape.numel())});
    json j = model_config_to_hf(c);
    j.erase("moe_cpp");
    const std::string hf = root + "/hf";
    make_dirs(hf);
    test::write_hf_dir(hf, j, ts, WType::bf16, 2);
    tok->save(hf);
    ASSERT_TRUE(is_hf_model_dir(hf));

    TrainOptions o;
    o.cfg = tiny_train(data);
    o.cfg.init_from = hf;
    o.cfg.model.block_size = 16;  // shorter windows than the folder's 32 positions: allowed
    o.given_keys = {"block_size"};
    o.cfg.freeze = "attention";  // the biases' frozen path too
    o.cfg.max_steps = 12;
    o.cfg.eval_every = 6;
    o.cfg.lr = 1e-2;
    o.out_dir = root + "/run";
    o.progress = false;
    o.cfg.stop_after = 6;
    run_train(o);
    TrainOptions r;  // a family run resumes (its config.json reads back to the same config)
    r.resume_dir = root + "/run";
    r.progress = false;
    run_train(r);
    EXPECT_EQ(12, load_trainer_state(root + "/run/latest")["step"]);
    std::vector<json> lines = metrics_lines(root + "/run");
    double first = NAN, last = NAN;
    for (auto& l : lines)
        if (l.contains("val_loss")) {
            if (std::isnan(first)) first = l["val_loss"].get<double>();
            last = l["val_loss"].get<double>();
        }
    EXPECT_LT(last, first) << "fine-tuning did not lower the validation loss";
    std::fprintf(stderr, "val_loss %.4f -> %.4f\n", first, last);

    const std::string ck = root + "/run/latest";
    ASSERT_TRUE(is_hf_model_dir(ck)) << read_file(ck + "/config.json");
    json cj = json::parse(read_file(ck + "/config.json"));
    EXPECT_EQ("qwen2_moe", cj["model_type"]);
    EXPECT_EQ(24, cj["shared_expert_intermediate_size"]);
    EXPECT_EQ(16, cj["max_position_embeddings"]);
    // The engine and the training model on the checkpoint: the same loss on the same windows.
    HfModel eng(ck);
    auto ids = tok->encode(text.substr(20000, 4000));
    const int block = 16;
    int64_t n_pred = 0;
    const double l_eng = hf_eval_windows(eng, ids, block, &n_pred);
    LoadedModel lm = load_model(ck);
    const double l_model = model_eval_windows(*lm.model, ids, block);
    EXPECT_NEAR(l_eng, l_model, 1e-5 * l_model);
    std::fprintf(stderr, "eval loss: engine %.8f, training model %.8f\n", l_eng, l_model);
    EXPECT_GT(n_pred, 1000);
    // The frozen attention did not move; the trained experts did.
    const float* P = lm.model->param_data();
    for (size_t k = 0; k < ts.size(); k++) {
        const ParamSpec& p = lm.model->params()[k];
        ASSERT_EQ(p.name, ts[k].name);
        double moved = 0;
        for (size_t i = 0; i < ts[k].data.size(); i++)
            moved = std::max(moved, (double)std::fabs(P[p.offset + i] -
                                                      bf16_to_f32(f32_to_bf16(ts[k].data[i]))));
        if (p.name.find(".self_attn.") != std::string::npos) {
            EXPECT_EQ(0.0, moved) << p.name;
        }
        if (p.name.find(".mlp.experts.0.") != std::string::npos) {
            EXPECT_GT(moved, 0.0) << p.name;
        }
    }
    // moe generate sends the checkpoint to the engine.
    if (!test::moe_bin().empty()) {
        auto r = test::run_moe_cmd("generate " + ck + " --prompt-ids 1,2,3 --max-tokens 5 --json");
        EXPECT_EQ(0, r.rc) << r.out;
        EXPECT_TRUE(has(r.out, "token_ids")) << r.out;
    }
    fs::remove_all(root);
}
