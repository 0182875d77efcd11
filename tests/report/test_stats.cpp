// The numbers behind every figure of the report and inspect, against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "moe/error.h"
#include "moe/report.h"
#include "moe/stats.h"

using namespace moe;

TEST(Stats, Entropy) {
    EXPECT_NEAR(entropy({1, 1}), std::log(2.0), 1e-12);
    EXPECT_NEAR(entropy({1, 0, 0, 0}), 0.0, 1e-12);
    // p = (1/4, 1/2, 1/4): H = 2 * (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2.
    EXPECT_NEAR(entropy({1, 2, 1}), 1.5 * std::log(2.0), 1e-12);
    EXPECT_NEAR(entropy({0.25, 0.25, 0.25, 0.25}), std::log(4.0), 1e-12);
    EXPECT_THROW(entropy({}), Error);
    EXPECT_THROW(entropy({0, 0}), Error);
    EXPECT_THROW(entropy({1, -0.5}), Error);
    EXPECT_THROW(entropy({1, NAN}), Error);
}

TEST(Stats, Cv) {
    EXPECT_NEAR(cv({1, 1, 1, 1}), 0.0, 1e-12);
    // mean 5, population std 2.
    EXPECT_NEAR(cv({2, 4, 4, 4, 5, 5, 7, 9}), 0.4, 1e-12);
    EXPECT_NEAR(cv({0, 8}), 1.0, 1e-12);
    // Everything on one of E experts: CV = sqrt(E - 1) (the report's caption says so).
    EXPECT_NEAR(cv({4, 0, 0, 0}), std::sqrt(3.0), 1e-12);
    EXPECT_EQ(cv({0, 0, 0}), 0.0);
    EXPECT_THROW(cv({}), Error);
}

TEST(Stats, LoadShare) {
    auto s = load_share({1, 3, 0, 4});
    ASSERT_EQ(s.size(), 4u);
    EXPECT_DOUBLE_EQ(s[0], 0.125);
    EXPECT_DOUBLE_EQ(s[1], 0.375);
    EXPECT_DOUBLE_EQ(s[2], 0.0);
    EXPECT_DOUBLE_EQ(s[3], 0.5);
    auto z = load_share({0, 0});
    EXPECT_EQ(z, std::vector<double>({0.0, 0.0}));
    EXPECT_THROW(load_share({1, -1}), Error);
}

TEST(Stats, Collapse) {
    std::vector<int64_t> steps = {10, 20, 30, 40, 50, 60, 70, 80};
    std::vector<double> e1 = {0.5, 0.01, 0.0, 0.02, 0.3, 0.0, 0.0, 0.0};
    std::vector<std::vector<double>> shares;
    for (double v : e1) shares.push_back({1 - v, v});
    auto ev = find_collapses(steps, shares, 0.05, 3);
    ASSERT_EQ(ev.size(), 2u);
    EXPECT_EQ(ev[0].expert, 1);
    EXPECT_EQ(ev[0].first_step, 20);
    EXPECT_EQ(ev[0].last_step, 40);
    EXPECT_EQ(ev[0].n_steps, 3);
    EXPECT_NEAR(ev[0].mean_share, 0.01, 1e-12);
    EXPECT_EQ(ev[1].first_step, 60);
    EXPECT_EQ(ev[1].last_step, 80);
    EXPECT_EQ(ev[1].n_steps, 3);
    EXPECT_TRUE(find_collapses(steps, shares, 0.05, 4).empty());
    // Expert 0 is never near zero; with threshold 0 nothing is "below 0".
    EXPECT_TRUE(find_collapses(steps, shares, 0.0, 1).empty());
    // Ragged rows are an error, not a silent misread.
    shares[3].push_back(0);
    EXPECT_THROW(find_collapses(steps, shares, 0.05, 3), Error);
}

TEST(Stats, Dominance) {
    std::vector<int64_t> steps = {1, 2, 3, 4, 5};
    std::vector<std::vector<double>> shares = {
        {0.25, 0.25, 0.5}, {0.1, 0.1, 0.8}, {0.05, 0.05, 0.9}, {0.3, 0.3, 0.4}, {0.05, 0.9, 0.05}};
    auto ev = find_dominance(steps, shares, 0.6, 2);
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0].expert, 2);
    EXPECT_EQ(ev[0].first_step, 2);
    EXPECT_EQ(ev[0].last_step, 3);
    EXPECT_NEAR(ev[0].mean_share, 0.85, 1e-12);
    auto ev1 = find_dominance(steps, shares, 0.6, 1);
    ASSERT_EQ(ev1.size(), 2u);  // expert 1 at step 5 counts with min_steps 1
    EXPECT_EQ(ev1[0].expert, 1);
    EXPECT_EQ(ev1[0].first_step, 5);
}

TEST(Stats, CosineAndRedundantPairs) {
    const float rows[] = {1, 0, 0, 1, 1, 1, -2, 0, 0, 0};  // 5 rows of 2
    auto m = cosine_similarity_matrix(rows, 5, 2);
    auto at = [&](int i, int j) { return m[i * 5 + j]; };
    EXPECT_NEAR(at(0, 0), 1.0, 1e-12);
    EXPECT_NEAR(at(0, 1), 0.0, 1e-12);
    EXPECT_NEAR(at(0, 2), 1 / std::sqrt(2.0), 1e-12);
    EXPECT_NEAR(at(2, 0), 1 / std::sqrt(2.0), 1e-12);
    EXPECT_NEAR(at(0, 3), -1.0, 1e-12);
    EXPECT_NEAR(at(1, 2), 1 / std::sqrt(2.0), 1e-12);
    EXPECT_EQ(at(4, 4), 0.0);  // a zero row has no direction
    EXPECT_EQ(at(4, 0), 0.0);
    auto p = redundant_pairs(m, 5, 0.5);
    ASSERT_EQ(p.size(), 2u);
    EXPECT_EQ(p[0].a, 0);
    EXPECT_EQ(p[0].b, 2);
    EXPECT_EQ(p[1].a, 1);
    EXPECT_EQ(p[1].b, 2);
    EXPECT_TRUE(redundant_pairs(m, 5, 0.8).empty());
    EXPECT_THROW(redundant_pairs(m, 4, 0.5), Error);
    // Most similar first.
    std::vector<double> s = {1, 0.85, 0.95, 0.85, 1, 0.1, 0.95, 0.1, 1};
    auto q = redundant_pairs(s, 3, 0.8);
    ASSERT_EQ(q.size(), 2u);
    EXPECT_EQ(q[0].a, 0);
    EXPECT_EQ(q[0].b, 2);
    EXPECT_NEAR(q[0].sim, 0.95, 1e-12);
}

TEST(Stats, SpeakerLines) {
    EXPECT_TRUE(is_speaker_line("ROMEO:"));
    EXPECT_TRUE(is_speaker_line("First Citizen:"));
    EXPECT_TRUE(is_speaker_line("KING RICHARD III:"));
    EXPECT_TRUE(is_speaker_line("LADY CAPULET:"));
    EXPECT_FALSE(is_speaker_line("Thus saith he:"));
    EXPECT_FALSE(is_speaker_line("ROMEO: hi"));
    EXPECT_FALSE(is_speaker_line("romeo:"));
    EXPECT_FALSE(is_speaker_line(":"));
    EXPECT_FALSE(is_speaker_line("ROMEO :"));
    EXPECT_FALSE(is_speaker_line("LADY  CAPULET:"));
    EXPECT_FALSE(is_speaker_line("ROMEO"));
}

TEST(Stats, ClassifyPieces) {
    std::string text = "ROMEO:\nHi, 3 you.\n";
    std::vector<std::string> pieces;
    for (char c : text) pieces.push_back(std::string(1, c));
    auto c = classify_pieces(pieces);
    using C = CharClass;
    std::vector<C> want = {C::speaker, C::speaker, C::speaker, C::speaker, C::speaker, C::speaker,
                           C::newline, C::upper,   C::lower,   C::punct,   C::space,   C::digit,
                           C::space,   C::lower,   C::lower,   C::lower,   C::punct,   C::newline};
    ASSERT_EQ(c.size(), want.size());
    for (size_t i = 0; i < want.size(); i++)
        EXPECT_EQ((int)c[i], (int)want[i]) << "piece " << i << " '" << pieces[i] << "'";
    // A speaker tag is only known at its newline: "Hi:" at the end of a text line is not one
    // when more text follows on the line.
    auto d = classify_pieces({"A", "B", ":", " ", "x"});
    EXPECT_EQ(d[0], C::upper);
    // SentencePiece pieces: the word marker is skipped; a lone marker is a space.
    auto s = classify_pieces({"\xE2\x96\x81the", "\xE2\x96\x81", "Dog", "\xC3\xA9"});
    EXPECT_EQ(s[0], C::lower);
    EXPECT_EQ(s[1], C::space);
    EXPECT_EQ(s[2], C::upper);
    EXPECT_EQ(s[3], C::other);
}

TEST(Stats, ClassSharesAndProfile) {
    // E=2, C=3: e0 = [2, 0, 1], e1 = [2, 4, 0]; a 4th class never seen.
    std::vector<double> counts = {2, 0, 1, 0, 2, 4, 0, 0};
    auto s = class_shares(counts, 2, 4);
    std::vector<double> want_s = {0.5, 0, 1, 0, 0.5, 1, 0, 0};
    for (size_t i = 0; i < want_s.size(); i++) EXPECT_NEAR(s[i], want_s[i], 1e-12) << i;
    auto p = expert_class_profile(counts, 2, 4);
    std::vector<double> want_p = {2.0 / 3, 0, 1.0 / 3, 0, 1.0 / 3, 2.0 / 3, 0, 0};
    for (size_t i = 0; i < want_p.size(); i++) EXPECT_NEAR(p[i], want_p[i], 1e-12) << i;
    EXPECT_THROW(class_shares(counts, 3, 3), Error);
    EXPECT_THROW(class_shares({1, -1}, 1, 2), Error);
}

TEST(Stats, TopTokens) {
    // E=2, V=4: e0 = [5, 0, 3, 3], e1 = [1, 2, 0, 0].
    std::vector<double> counts = {5, 0, 3, 3, 1, 2, 0, 0};
    auto t = top_tokens_per_expert(counts, 2, 4, 2);
    ASSERT_EQ(t.size(), 2u);
    ASSERT_EQ(t[0].size(), 2u);
    EXPECT_EQ(t[0][0].token, 0);
    EXPECT_DOUBLE_EQ(t[0][0].count, 5);
    EXPECT_NEAR(t[0][0].of_token, 5.0 / 6, 1e-12);
    EXPECT_EQ(t[0][1].token, 2);  // tie with token 3: lower id first
    EXPECT_NEAR(t[0][1].of_token, 1.0, 1e-12);
    ASSERT_EQ(t[1].size(), 2u);
    EXPECT_EQ(t[1][0].token, 1);
    EXPECT_EQ(t[1][1].token, 0);
    EXPECT_NEAR(t[1][1].of_token, 1.0 / 6, 1e-12);
    auto all = top_tokens_per_expert(counts, 2, 4, 10);
    EXPECT_EQ(all[0].size(), 3u);  // zero counts are left out
    EXPECT_EQ(all[1].size(), 2u);
}

// ---- metrics.jsonl ---------------------------------------------------------------------------

static const char* kLine1 =
    R"({"step":10,"lr":0.001,"train_loss":3.5,"tokens_per_s":1000,"elapsed_s":1.5,"aux_switch":1.02,"layers":[{"layer":0,"tokens_per_expert":[3,1,0,4],"dropped":2,"routed":10,"load_cv":0.6,"router_entropy":1.2,"mean_top1_weight":0.7}]})";
static const char* kLine2 = R"({"step":20,"val_loss":3.1})";

TEST(Metrics, ParsesLinesAndFields) {
    std::string text = std::string(kLine1) + "\n\n" + kLine2 + "\n";
    MetricsLog log = parse_metrics(text, "m.jsonl");
    ASSERT_EQ(log.rows.size(), 2u);
    EXPECT_EQ(log.lines_used, 2);
    EXPECT_EQ(log.lines_skipped, 0);
    const MetricsRow& r = log.rows[0];
    EXPECT_EQ(r.step, 10);
    EXPECT_DOUBLE_EQ(r.lr, 0.001);
    EXPECT_DOUBLE_EQ(r.train_loss, 3.5);
    EXPECT_TRUE(std::isnan(r.val_loss));
    EXPECT_DOUBLE_EQ(r.scalars.at("aux_switch"), 1.02);
    ASSERT_EQ(r.layers.size(), 1u);
    EXPECT_EQ(r.layers[0].tokens_per_expert, std::vector<int64_t>({3, 1, 0, 4}));
    EXPECT_EQ(r.layers[0].dropped, 2);
    EXPECT_EQ(r.layers[0].routed, 10);
    EXPECT_DOUBLE_EQ(r.layers[0].router_entropy, 1.2);
    EXPECT_DOUBLE_EQ(log.rows[1].val_loss, 3.1);
    EXPECT_TRUE(std::isnan(log.rows[1].train_loss));
    EXPECT_EQ(log.moe_layers(), std::vector<int>({0}));
}

TEST(Metrics, TruncatedLastLineIsSkippedAndCounted) {
    std::string l1 = kLine1;
    std::string text = l1 + "\n" + kLine2 + "\n" + l1.substr(0, l1.size() / 2);  // killed mid-write
    MetricsLog log = parse_metrics(text, "m.jsonl");
    EXPECT_EQ(log.lines_used, 2);
    EXPECT_EQ(log.lines_skipped, 1);
    ASSERT_EQ(log.skipped.size(), 1u);
    EXPECT_NE(log.skipped[0].find("line 3"), std::string::npos) << log.skipped[0];
    EXPECT_NE(log.skipped[0].find("truncated"), std::string::npos) << log.skipped[0];
}

TEST(Metrics, CorruptLinesAreSkipped) {
    std::string text = std::string(kLine1) + "\n{garbage\n[1,2]\n{\"lr\":1}\n" + kLine2 + "\n";
    MetricsLog log = parse_metrics(text, "m.jsonl");
    EXPECT_EQ(log.lines_used, 2);
    EXPECT_EQ(log.lines_skipped, 3);
    EXPECT_NE(log.skipped[2].find("step"), std::string::npos);
}

TEST(Metrics, NothingUsableIsAnError) {
    try {
        parse_metrics("{\"step\": 1", "run/metrics.jsonl");
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("run/metrics.jsonl"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("no usable metrics line"), std::string::npos);
    }
    EXPECT_THROW(parse_metrics("", "x"), Error);
}

TEST(Metrics, MissingFileOrFolder) {
    std::string dir = ::testing::TempDir() + "/report_no_metrics";
    std::filesystem::create_directories(dir);
    try {
        read_metrics(dir);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("metrics.jsonl"), std::string::npos) << e.what();
    }
    EXPECT_THROW(read_metrics(dir + "/does_not_exist"), Error);
}

// ---- traces ----------------------------------------------------------------------------------

TEST(Trace, ParsesAndSortsByWeight) {
    std::string text =
        R"({"pos":0,"token":5,"text":"a","layers":[{"layer":0,"experts":[1,3],"weights":[0.2,0.8]},{"layer":1,"experts":[2],"weights":[1.0]}]})"
        "\n"
        R"({"pos":1,"token":6,"text":"\n","layers":[{"layer":0,"experts":[0,1],"weights":[0.6,0.4]},{"layer":1,"experts":[2],"weights":[1.0]}]})"
        "\n"
        R"({"pos":2,"token":7,"te)";
    int skipped = -1;
    auto tr = parse_trace(text, "t.jsonl", &skipped);
    EXPECT_EQ(skipped, 1);
    ASSERT_EQ(tr.size(), 2u);
    EXPECT_EQ(tr[0].token, 5);
    EXPECT_EQ(tr[0].text, "a");
    EXPECT_EQ(tr[1].text, "\n");
    ASSERT_EQ(tr[0].layers.size(), 2u);
    EXPECT_EQ(tr[0].layers[0].experts, std::vector<int>({3, 1}));
    EXPECT_FLOAT_EQ(tr[0].layers[0].weights[0], 0.8f);
    EXPECT_EQ(tr[0].layers[1].layer, 1);
    EXPECT_THROW(parse_trace("nope\n", "t.jsonl"), Error);
    EXPECT_THROW(read_trace("/nonexistent/t.jsonl"), Error);
}

// ---- aggregation and renderers ----------------------------------------------------------------

// "AB:\nab 1" routed by hand over E=2 experts, one layer, top-1 (plus a dropped slot).
static std::vector<TokenRouting> toy_routing() {
    std::string text = "AB:\nab 1";
    std::vector<TokenRouting> r;
    for (size_t i = 0; i < text.size(); i++) {
        TokenRouting t;
        t.pos = (int)i;
        t.text = std::string(1, text[i]);
        t.token = (int32_t)i;  // toy ids: one per position
        LayerChoice c;
        c.layer = 3;
        int e = (text[i] >= 'a' && text[i] <= 'z') ? 1 : 0;
        c.experts = {e};
        c.weights = {0.75f};
        c.kept = {1};
        if (i == 0) {  // a dropped second slot counts nowhere
            c.experts.push_back(1);
            c.weights.push_back(0.25f);
            c.kept.push_back(0);
        }
        t.layers.push_back(c);
        r.push_back(t);
    }
    return r;
}

TEST(Inspect, AggregateByCharClass) {
    auto r = toy_routing();
    RoutingAggregate a = aggregate_routing(r, {}, 2, "char-class");
    ASSERT_EQ(a.layers.size(), 1u);
    EXPECT_EQ(a.layers[0].layer, 3);
    const int C = kNumCharClasses;
    ASSERT_EQ((int)a.classes.size(), C);
    auto cnt = [&](int e, CharClass c) { return a.layers[0].counts[e * C + (int)c]; };
    EXPECT_EQ(cnt(0, CharClass::speaker), 3);  // A B :
    EXPECT_EQ(cnt(1, CharClass::speaker), 0);  // the dropped slot does not count
    EXPECT_EQ(cnt(0, CharClass::newline), 1);
    EXPECT_EQ(cnt(1, CharClass::lower), 2);
    EXPECT_EQ(cnt(0, CharClass::space), 1);
    EXPECT_EQ(cnt(0, CharClass::digit), 1);
    EXPECT_DOUBLE_EQ(a.layers[0].shares[1 * C + (int)CharClass::lower], 1.0);
    EXPECT_THROW(aggregate_routing(r, {}, 2, "words"), Error);

    nlohmann::json j = nlohmann::json::parse(aggregate_json(a, -1, 3));
    EXPECT_EQ(j["n_tokens"], 8);
    EXPECT_EQ(j["layers"][0]["layer"], 3);
    bool found = false;
    for (auto& c : j["layers"][0]["classes"])
        if (c["class"] == "lowercase") {
            found = true;
            EXPECT_DOUBLE_EQ(c["expert_shares"][1].get<double>(), 1.0);
        }
    EXPECT_TRUE(found);
    std::string txt = aggregate_text(a, 3, 3);
    EXPECT_NE(txt.find("speaker name"), std::string::npos);
    std::string html = aggregate_html(a, -1, 3, "t");
    EXPECT_NE(html.find("id=\"shares-layer-3\""), std::string::npos);
    EXPECT_THROW(aggregate_text(a, 0, 3), Error);  // layer 0 is not in the routing
}

// Experts per token by class: 'b' gets a second kept slot, 'A' a dropped one. Lowercase: tokens
// a, b with 3 kept slots -> 1.5; speaker name: A, B, : with 3 kept slots -> 1.0. The layer: 9
// kept slots over 8 tokens.
TEST(Inspect, ExpertsPerTokenByCharClass) {
    auto r = toy_routing();
    LayerChoice& b = r[5].layers[0];
    ASSERT_EQ(r[5].text, "b");
    b.experts.push_back(0);
    b.weights.push_back(0.25f);
    b.kept.push_back(1);
    RoutingAggregate a = aggregate_routing(r, {}, 2, "char-class");
    const auto& L = a.layers[0];
    EXPECT_EQ(L.class_tokens[(int)CharClass::lower], 2);
    EXPECT_EQ(L.class_tokens[(int)CharClass::speaker], 3);
    nlohmann::json j = nlohmann::json::parse(aggregate_json(a, -1, 3));
    EXPECT_DOUBLE_EQ(j["layers"][0]["experts_per_token"].get<double>(), 9.0 / 8);
    int seen = 0;
    for (auto& c : j["layers"][0]["classes"]) {
        if (c["class"] == "lowercase") {
            EXPECT_DOUBLE_EQ(c["experts_per_token"].get<double>(), 1.5);
            EXPECT_EQ(c["tokens"].get<double>(), 2);
            seen++;
        }
        if (c["class"] == "speaker name") {
            EXPECT_DOUBLE_EQ(c["experts_per_token"].get<double>(), 1.0);
            seen++;
        }
    }
    EXPECT_EQ(seen, 2);
    std::string txt = aggregate_text(a, -1, 3);
    EXPECT_NE(txt.find("mean experts per token 1.125"), std::string::npos) << txt;
    EXPECT_NE(aggregate_html(a, -1, 3, "t").find("<th>exp/tok</th>"), std::string::npos);
}

TEST(Inspect, AggregateByToken) {
    auto r = toy_routing();
    RoutingAggregate a = aggregate_routing(r, {}, 2, "token");
    const int C = (int)a.classes.size();
    int id_a = 4;  // position of 'a'
    EXPECT_EQ(a.classes[id_a], "a");
    EXPECT_EQ(a.layers[0].counts[1 * C + id_a], 1);
    auto top = top_tokens_per_expert(a.layers[0].token_counts, 2, a.vocab, 5);
    EXPECT_EQ(top[1].size(), 2u);  // 'a' and 'b'
}

TEST(Inspect, Renderers) {
    auto r = toy_routing();
    std::string plain = routing_terminal(r, -1, false);
    EXPECT_EQ(plain.find("\x1b["), std::string::npos);  // no escape codes when not a tty
    EXPECT_NE(plain.find("0:0.75 1:0.25x"), std::string::npos) << plain;
    EXPECT_NE(plain.find("layer 3"), std::string::npos);
    std::string col = routing_terminal(r, 3, true);
    EXPECT_NE(col.find("\x1b[48;5;"), std::string::npos);
    EXPECT_THROW(routing_terminal(r, 1, false), Error);
    std::string html = routing_html(r, -1, "toy");
    EXPECT_NE(html.find("id=\"strip-layer-3\""), std::string::npos);
    EXPECT_NE(html.find("<table"), std::string::npos);
    EXPECT_EQ(html.find("<script"), std::string::npos);
    EXPECT_NE(html.find("line-through"), std::string::npos);  // the dropped slot
}
