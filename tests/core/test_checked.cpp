// The checked-number readers (include/moe/checked.h): integers exact and in range, floats finite
// and in range, enums from their list, the same answer from JSON and from flag text; the model
// layout computed without allocating matches the built model; non-finite scan.
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "moe/checked.h"
#include "moe/config.h"
#include "moe/error.h"
#include "moe/model.h"
#include "test_util.h"

using namespace moe;
using json = nlohmann::json;

static std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST(Checked, IntegersExactAndInRange) {
    const Range r = Range::in(1, 1 << 16);
    EXPECT_EQ(checked_int(json(32), "k", r), 32);
    EXPECT_EQ(checked_int(json(32.0), "k", r), 32);  // an integral double is an integer
    for (json bad : {json(40.5), json(4294967328LL), json(0), json(-1), json("32"), json(nullptr),
                     json(std::numeric_limits<uint64_t>::max()), json(1e300)}) {
        std::string e = error_of([&] { checked_int(bad, "f.json: key 'k'", r); });
        EXPECT_NE(e.find("f.json: key 'k'"), std::string::npos) << bad.dump();
        EXPECT_NE(e.find("; "), std::string::npos) << e;  // says what to do
    }
    // the same from flag text
    EXPECT_EQ(parse_int("32", "--k", r), 32);
    for (const char* bad :
         {"40.5", "4294967328", "2147483648", "0", "-5", "x", "", "1e3", " 3", "3 "})
        EXPECT_NE(error_of([&] { parse_int(bad, "--k", r); }).find("--k"), std::string::npos)
            << bad;
    EXPECT_EQ(check_int_text("2147483647", Range::in(0, 2147483647)), "");
    EXPECT_NE(check_int_text("2147483648", Range::in(0, 2147483647)), "");
}

TEST(Checked, FloatsFiniteAndInRange) {
    const Range r = Range::in_open(0, 1);
    EXPECT_DOUBLE_EQ(checked_num(json(0.5), "x", r), 0.5);
    for (json bad : {json(0), json(1), json(-0.5), json(NAN), json(INFINITY), json("0.5")})
        EXPECT_FALSE(error_of([&] { checked_num(bad, "x", r); }).empty()) << bad.dump();
    for (const char* bad : {"nan", "inf", "-inf", "1e999", "0", "1", "x", "0.5x"})
        EXPECT_NE(error_of([&] { parse_num(bad, "--p", r); }).find("--p"), std::string::npos)
            << bad;
    EXPECT_DOUBLE_EQ(parse_num("2.5e-1", "--p", r), 0.25);
    EXPECT_EQ(Range::in_open(0, 1).describe(false), "finite number in (0, 1)");
    EXPECT_EQ(Range::in(1, 65536).describe(true), "integer in [1, 65536]");
    EXPECT_EQ(Range::at_least(0).describe(true), "integer >= 0");
}

TEST(Checked, EnumsAndBools) {
    const Range r = Range::one_of("topk|switch|expert-choice");
    EXPECT_EQ(checked_str(json("switch"), "k", r), "switch");
    EXPECT_NE(error_of([&] { checked_str(json("swi"), "k", r); }).find("topk | switch"),
              std::string::npos);
    EXPECT_FALSE(error_of([&] { checked_str(json(1), "k", r); }).empty());
    EXPECT_TRUE(parse_bool("true", "--b"));
    EXPECT_FALSE(error_of([&] { parse_bool("yes", "--b"); }).empty());
    EXPECT_FALSE(error_of([&] { checked_bool(json(1), "b"); }).empty());
    EXPECT_FALSE(error_of([&] { checked_u64(json(-1), "s"); }).empty());
    EXPECT_FALSE(error_of([&] { parse_u64("-1", "--s"); }).empty());
    EXPECT_EQ(parse_u64("18446744073709551615", "--s"), std::numeric_limits<uint64_t>::max());
}

TEST(Checked, JsonTextNamesTheKeyOfAHugeNumber) {
    std::string e = error_of([] { parse_json_text(R"({"a": 1, "lr": 1e400})", "c.json", "x"); });
    EXPECT_NE(e.find("key 'lr'"), std::string::npos) << e;
    e = error_of([] { parse_json_text("{\"a\": ", "c.json", "x"); });
    EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;
}

TEST(Checked, EveryConfigDefaultIsInsideItsRange) {
    TrainConfig c;
    TrainConfig back;
    EXPECT_EQ(error_of([&] { config_apply_json(back, config_to_json(c), "defaults"); }), "");
    // and every key of the table has its range in the help text
    std::string help = config_keys_help();
    for (auto& f : config_fields(c)) EXPECT_NE(help.find(f.name), std::string::npos) << f.name;
}

TEST(Checked, FirstNonFinite) {
    std::vector<float> v(10007, 1.f);
    EXPECT_EQ(first_non_finite(v.data(), v.size()), -1);
    for (size_t at : {0ul, 4095ul, 4096ul, 10006ul}) {
        for (float bad : {NAN, INFINITY, -INFINITY}) {
            std::vector<float> w = v;
            w[at] = bad;
            EXPECT_EQ(first_non_finite(w.data(), w.size()), (int64_t)at);
        }
    }
}

TEST(Checked, LayoutWithoutAllocationMatchesTheModel) {
    for (const char* router : {"topk", "noisy-topk", "hierarchical"}) {
        ModelConfig m;
        m.vocab_size = 37;
        m.d_model = 16;
        m.n_layers = 3;
        m.n_heads = 2;
        m.n_kv_heads = 1;
        m.d_ff = 24;
        m.block_size = 8;
        m.moe_every = 2;
        m.tie_embeddings = false;
        m.moe.n_experts = 4;
        m.moe.top_k = 2;
        m.moe.d_ff = 8;
        m.moe.router = router;
        m.moe.n_groups = 2;
        m.moe.n_shared_experts = 1;
        size_t n = 0;
        auto specs = Model::layout(m, &n);
        Model model(m, /*trainable=*/false);
        ASSERT_EQ(n, model.n_params()) << router;
        ASSERT_EQ(specs.size(), model.params().size());
        for (size_t i = 0; i < specs.size(); i++) {
            EXPECT_EQ(specs[i].name, model.params()[i].name);
            EXPECT_EQ(specs[i].shape, model.params()[i].shape);
            EXPECT_EQ(specs[i].offset, model.params()[i].offset);
        }
        EXPECT_EQ(model.grad_data(), nullptr);  // inference: no gradient buffer
        std::vector<int32_t> tok(8, 1);
        model.forward(tok.data(), tok.data(), 1, 8, false);  // runs without gradient memory
        EXPECT_FALSE(error_of([&] { model.backward(); }).empty());
    }
}
