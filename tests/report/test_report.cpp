// `moe report` on synthetic run folders (gnuplot draws the figures: the test command installs
// gnuplot-nox), and the expert-output computation behind the similarity figures against the
// MoE layer itself.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/model.h"
#include "moe/moe_layer.h"
#include "moe/report.h"
#include "moe/stats.h"
#include "moe/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace moe;

namespace {

bool have_gnuplot() {
    try {
        find_gnuplot();
        return true;
    } catch (const Error&) {
        return false;
    }
}

std::string fresh_dir(const std::string& name) {
    std::string d = ::testing::TempDir() + "/moe_report_" + name;
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

// 60 logged steps, 2 MoE layers of 4 experts; in layer 1 expert 3 starves from step 300 on and
// expert 0 takes most; an evaluation every 100 steps; the last line cut mid-write.
std::string synthetic_metrics() {
    std::string out;
    for (int i = 1; i <= 60; i++) {
        int step = i * 10;
        double loss = 4.2 * std::exp(-step / 300.0) + 1.5;
        std::string layers;
        for (int l = 0; l < 2; l++) {
            std::vector<int64_t> tpe = {250, 260, 240, 250};
            if (l == 1 && step >= 300) tpe = {700, 200, 100, 0};
            std::vector<double> d(tpe.begin(), tpe.end());
            layers += fmt::format(
                "{}{{\"layer\":{},\"tokens_per_expert\":[{},{},{},{}],\"dropped\":{},"
                "\"routed\":1000,\"load_cv\":{:.4f},\"router_entropy\":{:.4f},"
                "\"mean_top1_weight\":{:.4f}}}",
                l ? "," : "", l, tpe[0], tpe[1], tpe[2], tpe[3], l == 1 ? 40 : 0, cv(d),
                1.38 - step / 1000.0, 0.55 + step / 3000.0);
        }
        out += fmt::format(
            "{{\"step\":{},\"lr\":{:.6f},\"train_loss\":{:.4f},\"tokens_per_s\":{},"
            "\"elapsed_s\":{:.2f},\"grad_norm\":{:.3f},\"aux_importance\":{:.4f},"
            "\"aux_switch\":{:.4f},\"aux_z\":{:.4f},\"aux_total\":{:.4f},\"layers\":[{}]",
            step, 1e-3 * std::min(1.0, step / 100.0), loss, 9000 + (i % 7) * 100, step * 0.05,
            1.0 / std::sqrt((double)step), 0.02, 1.0 + 0.1 * (step >= 300), 0.5, 0.01, layers);
        if (step % 100 == 0) out += fmt::format(",\"val_loss\":{:.4f}", loss + 0.1);
        out += "}\n";
    }
    out += "{\"step\":610,\"lr\":0.001,\"train_lo";  // killed mid-write
    return out;
}

const char* kTrace =
    R"({"pos":0,"token":1,"text":"R","layers":[{"layer":0,"experts":[2,0],"weights":[0.7,0.3]},{"layer":1,"experts":[0,1],"weights":[0.9,0.1]}]})"
    "\n"
    R"({"pos":1,"token":2,"text":"O","layers":[{"layer":0,"experts":[1,3],"weights":[0.6,0.4]},{"layer":1,"experts":[0,2],"weights":[0.8,0.2]}]})"
    "\n";

bool is_png(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    char sig[8] = {};
    f.read(sig, 8);
    return f.gcount() == 8 && std::string(sig + 1, 3) == "PNG";
}

}  // namespace

TEST(Report, SyntheticRun) {
    if (!have_gnuplot()) GTEST_SKIP() << "gnuplot not installed (apt-get install gnuplot-nox)";
    std::string run = fresh_dir("synthetic");
    write_file_atomic(run + "/metrics.jsonl", synthetic_metrics());
    write_file_atomic(run + "/gen.trace.jsonl", std::string(kTrace));
    ReportOptions opt;
    opt.run_dir = run;
    ReportResult r = run_report(opt);

    EXPECT_EQ(r.html, run + "/report/report.html");
    EXPECT_EQ(r.lines_used, 60);
    EXPECT_EQ(r.lines_skipped, 1);
    EXPECT_EQ(r.n_traces, 1);
    EXPECT_TRUE(r.checkpoint.empty());
    EXPECT_NE(r.similarity_note.find("no checkpoint"), std::string::npos) << r.similarity_note;

    // Warnings: the starved and the dominant expert of layer 1, nothing in layer 0.
    bool collapsed = false, dominated = false;
    for (auto& w : r.warnings) {
        if (w.find("layer 1: expert 3 collapsed") != std::string::npos) collapsed = true;
        if (w.find("layer 1: expert 0 dominated") != std::string::npos) dominated = true;
        EXPECT_EQ(w.find("layer 0:"), std::string::npos) << w;
    }
    EXPECT_TRUE(collapsed);
    EXPECT_TRUE(dominated);

    // Every figure: an inline SVG in the page and a non-trivial PNG beside it.
    std::string html = read_file(r.html);
    const char* ids[] = {"loss",    "aux-importance", "aux-switch", "aux-z",       "aux-total",
                         "lr",      "tokens-per-s",   "grad-norm",  "layer0-load", "layer1-load",
                         "dropped", "load-cv",        "entropy",    "top1"};
    EXPECT_EQ(r.pngs.size(), std::size(ids));
    for (const char* id : ids) {
        std::string tag = fmt::format("<figure class=\"fig\" id=\"fig-{}\"", id);
        size_t p = html.find(tag);
        ASSERT_NE(p, std::string::npos) << "figure " << id << " missing";
        size_t svg = html.find("<svg", p), end = html.find("</figure>", p);
        EXPECT_LT(svg, end) << "figure " << id << " has no inline svg";
        EXPECT_GT(end - svg, 2000u) << "figure " << id << " svg is tiny";
        std::string png = run + "/report/" + id + ".png";
        ASSERT_TRUE(file_exists(png)) << png;
        EXPECT_TRUE(is_png(png)) << png;
        EXPECT_GT(fs::file_size(png), 5000u) << png;
    }
    // Self-contained: no script, nothing fetched from elsewhere.
    EXPECT_EQ(html.find("<script"), std::string::npos);
    EXPECT_EQ(html.find("src=\"http"), std::string::npos);
    EXPECT_EQ(html.find("href=\"http"), std::string::npos);
    EXPECT_EQ(html.find("@import"), std::string::npos);
    EXPECT_EQ(html.find("@@FIG"), std::string::npos);
    EXPECT_NE(html.find("Skipped 1 incomplete"), std::string::npos);
    EXPECT_NE(html.find("id=\"strip-layer-1\""), std::string::npos);  // the trace section
    EXPECT_NE(html.find("expert 3 collapsed"), std::string::npos);

    // --out elsewhere; thresholds that flag nothing.
    ReportOptions o2 = opt;
    o2.out = run + "/elsewhere/r.html";
    o2.collapse_steps = 1000;
    o2.dominance_steps = 1000;
    ReportResult r2 = run_report(o2);
    EXPECT_TRUE(file_exists(run + "/elsewhere/r.html"));
    EXPECT_TRUE(file_exists(run + "/elsewhere/layer1-load.png"));
    for (auto& w : r2.warnings) EXPECT_EQ(w.find("collapsed"), std::string::npos) << w;
}

TEST(Report, OneLoggedStepAndNoEvaluation) {
    if (!have_gnuplot()) GTEST_SKIP() << "gnuplot not installed (apt-get install gnuplot-nox)";
    std::string run = fresh_dir("one_line");
    write_file_atomic(run + "/metrics.jsonl",
                      std::string(R"({"step":1,"lr":0.0,"train_loss":4.1,"layers":[{"layer":0,)"
                                  R"("tokens_per_expert":[5,3],"dropped":0,"routed":8}]})") +
                          "\n");
    ReportOptions opt;
    opt.run_dir = run;
    ReportResult r = run_report(opt);
    EXPECT_EQ(r.lines_used, 1);
    for (auto& p : r.pngs) EXPECT_GT(fs::file_size(p), 1000u) << p;
}

// Experts per token: a top-p-like run (the count varies) gets the mean and histogram figures; a
// fixed top-2 run gets one sentence; a log without the key gets neither.
TEST(Report, ExpertsPerToken) {
    if (!have_gnuplot()) GTEST_SKIP() << "gnuplot not installed (apt-get install gnuplot-nox)";
    auto metrics = [](bool dynamic, bool with_key) {
        std::string out;
        for (int step = 10; step <= 200; step += 10) {
            std::string layers;
            for (int l = 0; l < 2; l++) {
                // 100 tokens; dynamic: the share on 1 expert grows over training.
                int one = dynamic ? step / 4 : 0, two = 100 - one - (dynamic ? 10 : 0);
                int three = dynamic ? 10 : 0;
                double mean = (one + 2.0 * two + 3.0 * three) / 100;
                std::string ept = with_key ? fmt::format(
                    R"(,"experts_per_token":{{"mean":{},"histogram":[0,{},{},{}]}})", mean, one,
                    two, three) : "";
                layers += fmt::format(
                    R"({}{{"layer":{},"tokens_per_expert":[50,50,50,50],"dropped":0,"routed":200{}}})",
                    l ? "," : "", l, ept);
            }
            out += fmt::format(R"({{"step":{},"train_loss":2.0,"layers":[{}]}})", step, layers) +
                   "\n";
        }
        return out;
    };
    std::string run = fresh_dir("experts_per_token");
    ReportOptions opt;
    opt.run_dir = run;
    opt.similarity = false;
    write_file_atomic(run + "/metrics.jsonl", metrics(true, true));
    ReportResult r = run_report(opt);
    std::string html = read_file(r.html);
    for (const char* id : {"experts-per-token", "experts-per-token-hist"}) {
        EXPECT_NE(html.find(fmt::format("id=\"fig-{}\"", id)), std::string::npos) << id;
        EXPECT_TRUE(is_png(run + "/report/" + id + ".png")) << id;
    }
    // Mean over steps and layers: (210 - one)/100 with one = floor(step/4), whose mean is 26.
    EXPECT_NE(html.find("layers: 1.840."), std::string::npos);

    write_file_atomic(run + "/metrics.jsonl", metrics(false, true));
    html = read_file(run_report(opt).html);
    EXPECT_EQ(html.find("id=\"fig-experts-per-token"), std::string::npos);
    EXPECT_NE(html.find("Experts per token: 2 on every token"), std::string::npos);

    write_file_atomic(run + "/metrics.jsonl", metrics(false, false));
    html = read_file(run_report(opt).html);
    EXPECT_EQ(html.find("experts-per-token"), std::string::npos);
}

// Router stability: router_logit_max on every line and routing_change on evaluation lines are
// read back per layer and drawn as two figures (a line per layer); a log without them (the
// synthetic run above) has neither figure.
TEST(Report, RouterStability) {
    std::string out;
    for (int step = 10; step <= 200; step += 10) {
        std::string layers;
        for (int l = 0; l < 2; l++) {
            std::string change =
                step % 50 == 0 && step > 50 ? fmt::format(R"(,"routing_change":{})", 5.0 / step) : "";
            layers += fmt::format(
                R"({}{{"layer":{},"tokens_per_expert":[50,50],"dropped":0,"routed":100,)"
                R"("router_logit_max":{}{}}})",
                l ? "," : "", l, 1 + step / 50.0 + l, change);
        }
        out += fmt::format(R"({{"step":{},"train_loss":2.0,"layers":[{}]{}}})", step, layers,
                           step % 50 == 0 ? R"(,"val_loss":2.1)" : "") +
               "\n";
    }
    MetricsLog log = parse_metrics(out, "synthetic");
    ASSERT_EQ(log.rows.size(), 20u);
    EXPECT_DOUBLE_EQ(log.rows[9].layers[1].router_logit_max, 1 + 100 / 50.0 + 1);  // step 100
    EXPECT_DOUBLE_EQ(log.rows[9].layers[0].routing_change, 0.05);
    EXPECT_TRUE(std::isnan(log.rows[8].layers[0].routing_change));  // step 90: no evaluation
    EXPECT_TRUE(std::isnan(log.rows[4].layers[0].routing_change));  // step 50: the first one

    if (!have_gnuplot()) GTEST_SKIP() << "gnuplot not installed (apt-get install gnuplot-nox)";
    std::string run = fresh_dir("router_stability");
    write_file_atomic(run + "/metrics.jsonl", out);
    ReportOptions opt;
    opt.run_dir = run;
    opt.similarity = false;
    std::string html = read_file(run_report(opt).html);
    for (const char* id : {"router-logit-max", "routing-change"}) {
        size_t p = html.find(fmt::format("<figure class=\"fig\" id=\"fig-{}\"", id));
        ASSERT_NE(p, std::string::npos) << id;
        std::string fig = html.substr(p, html.find("</figure>", p) - p);
        EXPECT_NE(fig.find("layer 0"), std::string::npos) << id;
        EXPECT_NE(fig.find("layer 1"), std::string::npos) << id;
        EXPECT_TRUE(is_png(run + "/report/" + id + ".png")) << id;
    }
    // Beside the loss: in the training part, before the routing section.
    EXPECT_LT(html.find("id=\"fig-router-logit-max\""), html.find("id=\"routing\""));

    std::string plain = fresh_dir("router_stability_absent");
    write_file_atomic(plain + "/metrics.jsonl", synthetic_metrics());
    opt.run_dir = plain;
    html = read_file(run_report(opt).html);
    EXPECT_EQ(html.find("router-stability"), std::string::npos);
}

TEST(Report, BadInput) {
    std::string run = fresh_dir("bad");
    ReportOptions opt;
    opt.run_dir = run;
    try {
        run_report(opt);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("metrics.jsonl"), std::string::npos) << e.what();
    }
    opt.run_dir = run + "/missing";
    EXPECT_THROW(run_report(opt), Error);

    // gnuplot missing: the error says what to install.
    write_file_atomic(run + "/metrics.jsonl", std::string("{\"step\":1,\"train_loss\":2}\n"));
    opt.run_dir = run;
    setenv("MOE_GNUPLOT", "/nonexistent/gnuplot", 1);
    try {
        run_report(opt);
        unsetenv("MOE_GNUPLOT");
        FAIL() << "expected an error";
    } catch (const Error& e) {
        unsetenv("MOE_GNUPLOT");
        EXPECT_NE(std::string(e.what()).find("gnuplot-nox"), std::string::npos) << e.what();
    }
}

// ---- expert outputs and similarity against the layer -----------------------------------------

static MoeConfig small_layer(Activation act) {
    MoeConfig c;
    c.d_model = 16;
    c.d_ff = 24;
    c.n_experts = 4;
    c.top_k = 2;
    c.router = "topk";
    c.activation = act;
    return c;
}

// The layer's output is sum_j w_j E_j(x); rebuilding it from expert_outputs and the layer's own
// assignments checks our independent expert computation (each activation) against the layer.
TEST(Similarity, ExpertOutputsMatchTheLayer) {
    for (Activation act : {Activation::swiglu, Activation::gelu, Activation::relu}) {
        MoeLayer layer(small_layer(act));
        layer.init_params(7);
        const int T = 7, d = 16;
        std::vector<float> x = test::randn((size_t)T * d, 3), y((size_t)T * d);
        layer.forward(ConstTensorView(x.data(), {T, d}), TensorView(y.data(), {T, d}), false);
        std::vector<float> eo = expert_outputs(layer, x.data(), T);
        std::vector<float> rebuilt((size_t)T * d, 0.f);
        for (auto& a : layer.last_assignments()) {
            if (a.expert < 0 || !a.kept) continue;
            for (int i = 0; i < d; i++)
                rebuilt[(size_t)a.token * d + i] +=
                    a.weight * eo[((size_t)a.expert * T + a.token) * d + i];
        }
        EXPECT_TRUE(test::all_close(rebuilt, y, 1e-4, 1e-5)) << activation_name(act);
    }
}

TEST(Similarity, IdenticalExpertsAreRedundant) {
    ModelConfig mc;
    mc.vocab_size = 11;
    mc.d_model = 16;
    mc.n_layers = 2;
    mc.n_heads = 2;
    mc.n_kv_heads = 2;
    mc.block_size = 8;
    mc.moe = small_layer(Activation::swiglu);
    mc.moe.d_model = 16;
    Model m(mc);
    m.init_params(5);
    // Make expert 2 of layer 1 a copy of expert 0, and expert 3 its negation.
    MoeLayer* l1 = m.moe_layer(1);
    ASSERT_NE(l1, nullptr);
    float* p = l1->param_data();
    for (const char* w : {"w1", "w3", "w2"}) {
        const ParamSpec& s0 = l1->param(std::string("experts.0.") + w);
        const ParamSpec& s2 = l1->param(std::string("experts.2.") + w);
        const ParamSpec& s3 = l1->param(std::string("experts.3.") + w);
        for (int64_t i = 0; i < s0.shape.numel(); i++) {
            p[s2.offset + i] = p[s0.offset + i];
            // w2 negated: output = -E_0(x); w1/w3 kept so the hidden activations are equal.
            p[s3.offset + i] = std::string(w) == "w2" ? -p[s0.offset + i] : p[s0.offset + i];
        }
    }
    std::vector<int32_t> tokens(21);
    for (size_t i = 0; i < tokens.size(); i++) tokens[i] = (int32_t)((i * 7 + 3) % 11);
    auto sims = expert_similarity(m, tokens);
    ASSERT_EQ(sims.size(), 2u);
    const LayerSimilarity& s = sims[1];
    EXPECT_EQ(s.layer, 1);
    EXPECT_EQ(s.probe_rows, 21);
    auto at = [&](const std::vector<double>& v, int i, int j) { return v[i * 4 + j]; };
    EXPECT_NEAR(at(s.weight_sim, 0, 2), 1.0, 1e-6);
    EXPECT_NEAR(at(s.output_sim, 0, 2), 1.0, 1e-6);
    EXPECT_NEAR(at(s.output_sim, 0, 3), -1.0, 1e-6);
    EXPECT_LT(std::fabs(at(s.weight_sim, 0, 1)), 0.5);  // independent random inits
    auto pairs = redundant_pairs(s.output_sim, 4, 0.8);
    ASSERT_EQ(pairs.size(), 1u);
    EXPECT_EQ(pairs[0].a, 0);
    EXPECT_EQ(pairs[0].b, 2);
    // Layer 0 was left alone: nothing redundant there.
    EXPECT_TRUE(redundant_pairs(sims[0].output_sim, 4, 0.8).empty());
}

// A run folder with a checkpoint: the similarity section appears with both matrices per layer,
// and inspect's routing of a text covers every token and layer.
TEST(Similarity, ReportWithCheckpointAndInspect) {
    if (!have_gnuplot()) GTEST_SKIP() << "gnuplot not installed (apt-get install gnuplot-nox)";
    std::string run = fresh_dir("ckpt");
    std::string corpus = "ROMEO:\nBut soft, what light through yonder window breaks?\n";
    auto tok = build_char_tokenizer(corpus);
    ModelConfig mc;
    mc.vocab_size = tok->vocab_size();
    mc.d_model = 16;
    mc.n_layers = 2;
    mc.n_heads = 2;
    mc.n_kv_heads = 2;
    mc.block_size = 16;
    mc.moe = small_layer(Activation::swiglu);
    mc.moe.d_model = 16;
    Model m(mc);
    m.init_params(9);
    save_checkpoint(run + "/best", m, *tok, nullptr, nullptr, nullptr);
    write_file_atomic(run + "/metrics.jsonl", synthetic_metrics());
    std::string probe = run + "/probe.txt";
    write_file_atomic(probe, corpus + corpus);

    ReportOptions opt;
    opt.run_dir = run;
    opt.probe_text = probe;
    ReportResult r = run_report(opt);
    EXPECT_EQ(r.checkpoint, run + "/best");
    EXPECT_TRUE(r.similarity_note.empty()) << r.similarity_note;
    std::string html = read_file(r.html);
    for (const char* id :
         {"layer0-weight-sim", "layer0-output-sim", "layer1-weight-sim", "layer1-output-sim"}) {
        EXPECT_NE(html.find(fmt::format("id=\"fig-{}\"", id)), std::string::npos) << id;
        EXPECT_GT(fs::file_size(run + "/report/" + id + ".png"), 5000u) << id;
    }

    LoadedModel lm = load_model(run);
    auto routing = route_text(*lm.model, *lm.tokenizer, corpus, -1);
    ASSERT_EQ(routing.size(), corpus.size());  // 54 chars: 4 chunks of block 16
    for (auto& t : routing) {
        ASSERT_EQ(t.layers.size(), 2u);
        for (auto& c : t.layers) {
            ASSERT_EQ(c.experts.size(), 2u) << "pos " << t.pos;  // top-2, dropless
            EXPECT_GE(c.weights[0], c.weights[1]);
            EXPECT_NEAR(c.weights[0] + c.weights[1], 1.0, 1e-5);  // renormalised top-k
        }
    }
    EXPECT_EQ(routing[0].text, "R");
    // Batched chunks (2 per forward, then the short tail) route every token the same way.
    auto batched = route_text(*lm.model, *lm.tokenizer, corpus, -1, 2);
    ASSERT_EQ(batched.size(), routing.size());
    for (size_t i = 0; i < routing.size(); i++)
        for (size_t l = 0; l < 2; l++) {
            EXPECT_EQ(batched[i].layers[l].experts, routing[i].layers[l].experts) << "pos " << i;
            for (size_t j = 0; j < 2; j++)
                EXPECT_NEAR(batched[i].layers[l].weights[j], routing[i].layers[l].weights[j], 1e-5);
        }
    // A symbol the tokenizer does not know: a clear error naming the tokenizer.
    try {
        route_text(*lm.model, *lm.tokenizer, "ROMEO: Zounds!", -1);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("tokenizer"), std::string::npos) << e.what();
    }
    auto agg = aggregate_routing(routing, {}, 4, "char-class");
    double slots = 0;
    for (double v : agg.layers[0].counts) slots += v;
    EXPECT_EQ(slots, 2.0 * corpus.size());

    // A truncated checkpoint: the report is still written, the section says why it is missing.
    std::string st = read_file(run + "/best/model.safetensors");
    write_file_atomic(run + "/best/model.safetensors", st.substr(0, st.size() / 2));
    ReportResult broken = run_report(opt);
    EXPECT_TRUE(broken.checkpoint.empty());
    EXPECT_NE(broken.similarity_note.find("could not be loaded"), std::string::npos)
        << broken.similarity_note;
    EXPECT_TRUE(file_exists(broken.html));
}
