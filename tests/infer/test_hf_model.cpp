// The Hugging Face engine (src/infer/) on tiny random folders of every family: KV-cache decode
// equals a full forward, shards equal one file, BF16 files equal F32 files holding the same
// values, Mixtral equals moe.cpp's own training model on the same weights (an independent
// forward), and every malformed folder is refused with a message naming the problem.
// The PyTorch peer (bench/peers/, test hf_families_vs_torch) checks the families' equations.
#include <fstream>

#include "hf_fixture.h"
#include "moe/config.h"
#include "moe/error.h"
#include "moe/hf_model.h"
#include "moe/model.h"

namespace moe {
namespace {

using test::HfTensor;
using json = nlohmann::json;

std::vector<int32_t> some_ids(int n, int V, uint64_t seed) {
    Rng r(seed);
    std::vector<int32_t> ids(n);
    for (auto& t : ids) t = (int32_t)(r.next_u64() % V);
    return ids;
}

std::vector<float> full_logits(HfModel& m, const std::vector<int32_t>& ids) {
    m.cache_reset();
    const float* p = m.cache_feed(ids.data(), (int)ids.size(), true);
    return std::vector<float>(p, p + ids.size() * m.config().vocab_size);
}

// |a - b| <= tol * max|b| (logits are compared relative to their scale)
::testing::AssertionResult close_scaled(const float* a, const float* b, size_t n, double tol) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = std::max(mx, (double)std::fabs(b[i]));
    return test::all_close(a, b, n, 0, tol * std::max(mx, 1e-6));
}

class Family : public ::testing::TestWithParam<std::string> {};

TEST_P(Family, DecodeWithCacheEqualsFullForward) {
    for (WType t : {WType::f32, WType::bf16}) {
        const std::string dir = test::temp_model_dir("decode_" + GetParam());
        json j = test::tiny_hf_config(GetParam());
        test::write_hf_dir(dir, j, test::tiny_hf_tensors(j, 11), t);
        HfModel m(dir);
        const int V = m.config().vocab_size, n = 21;
        auto ids = some_ids(n, V, 3);
        std::vector<float> full = full_logits(m, ids);
        // One token at a time, then a prefill of 8 followed by chunks of 5 and 1s.
        m.cache_reset();
        for (int i = 0; i < n; i++) {
            const float* p = m.cache_feed(&ids[i], 1);
            ASSERT_TRUE(close_scaled(p, &full[(size_t)i * V], V, 1e-5))
                << wtype_name(t) << " position " << i;
        }
        m.cache_reset();
        m.cache_feed(ids.data(), 8);
        const float* p = m.cache_feed(ids.data() + 8, 5);
        EXPECT_TRUE(close_scaled(p, &full[(size_t)12 * V], V, 1e-5));
        for (int i = 13; i < n; i++) p = m.cache_feed(&ids[i], 1);
        EXPECT_TRUE(close_scaled(p, &full[(size_t)(n - 1) * V], V, 1e-5));
        EXPECT_EQ(n, m.cache_pos());
        std::filesystem::remove_all(dir);
    }
}

TEST_P(Family, ShardsAndTypesGiveTheSameModel) {
    json j = test::tiny_hf_config(GetParam());
    std::vector<HfTensor> ts = test::tiny_hf_tensors(j, 5);
    // Round every value to bf16 first: then F32, BF16 and 3 shards all hold the same numbers.
    for (auto& t : ts)
        for (auto& v : t.data) v = bf16_to_f32(f32_to_bf16(v));
    const std::string d1 = test::temp_model_dir("one_" + GetParam()),
                      d3 = test::temp_model_dir("three_" + GetParam()),
                      db = test::temp_model_dir("bf16_" + GetParam());
    test::write_hf_dir(d1, j, ts, WType::f32, 1);
    test::write_hf_dir(d3, j, ts, WType::f32, 3);
    test::write_hf_dir(db, j, ts, WType::bf16, 2);
    HfModel m1(d1), m3(d3), mb(db);
    EXPECT_EQ(3u, m3.weights().n_files());
    auto ids = some_ids(9, m1.config().vocab_size, 4);
    auto a = full_logits(m1, ids), b = full_logits(m3, ids), c = full_logits(mb, ids);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << "shards change the numbers";
    EXPECT_TRUE(close_scaled(c.data(), a.data(), a.size(), 1e-6));
    for (auto& d : {d1, d3, db}) std::filesystem::remove_all(d);
}

TEST_P(Family, UsageCountsEveryTokensExperts) {
    const std::string dir = test::temp_model_dir("usage_" + GetParam());
    json j = test::tiny_hf_config(GetParam());
    test::write_hf_dir(dir, j, test::tiny_hf_tensors(j, 2), WType::f32);
    HfModel m(dir);
    auto ids = some_ids(10, m.config().vocab_size, 9);
    full_logits(m, ids);
    const HfConfig& c = m.config();
    EXPECT_EQ(10, m.usage().tokens);
    int sparse = 0;
    for (int l = 0; l < c.n_layers; l++) {
        int64_t sum = 0;
        for (int64_t v : m.usage().count[l]) sum += v;
        EXPECT_EQ(c.moe_layer[l] ? 10 * c.top_k : 0, sum) << "layer " << l;
        sparse += c.moe_layer[l];
        if (!c.moe_layer[l]) continue;
        // each token's experts are distinct and its weights positive (sum 1 when renormalised)
        const auto& ex = m.last_experts()[l];
        const auto& w = m.last_weights()[l];
        for (int t = 0; t < 10; t++) {
            EXPECT_NE(ex[t * 2], ex[t * 2 + 1]);
            // gtest's EXPECT_* expand to an if/else: braces keep the else where it belongs
            if (c.norm_topk_prob) {
                EXPECT_NEAR(1.0, w[t * 2] + w[t * 2 + 1], 1e-6);
            } else {
                EXPECT_LT(w[t * 2] + w[t * 2 + 1], 1.0);
            }
        }
    }
    EXPECT_EQ(GetParam() == "mixtral" || GetParam() == "olmoe" ? 3 : GetParam() == "qwen2_moe" ? 2 : 1,
              sparse);
    std::filesystem::remove_all(dir);
}

TEST(HfModel, LongInputsGoInChunksWithTheSameNumbers) {
    json j = test::tiny_hf_config("qwen3_moe");
    j["max_position_embeddings"] = 700;
    const std::string dir = test::temp_model_dir("chunks");
    test::write_hf_dir(dir, j, test::tiny_hf_tensors(j, 4), WType::bf16);
    HfModel m(dir);
    const int V = m.config().vocab_size, n = 600;  // three chunks of at most 256
    auto ids = some_ids(n, V, 12);
    std::vector<float> full = full_logits(m, ids);
    m.cache_reset();
    const float* last = m.cache_feed(ids.data(), n - 1);  // chunked, last row only
    EXPECT_TRUE(close_scaled(last, &full[(size_t)(n - 2) * V], V, 1e-5));
    last = m.cache_feed(&ids[n - 1], 1);
    EXPECT_TRUE(close_scaled(last, &full[(size_t)(n - 1) * V], V, 1e-5));
    m.cache_reset();
    for (int i = 0; i < 300; i++) {
        const float* p = m.cache_feed(&ids[i], 1);
        if (i == 255 || i == 256 || i == 299) {
            EXPECT_TRUE(close_scaled(p, &full[(size_t)i * V], V, 1e-5)) << "position " << i;
        }
    }
    std::filesystem::remove_all(dir);
}

// hf_tensor_shapes (what benchmarks and converters lay out) is exactly what the loader reads.
TEST_P(Family, TensorTableMatchesTheLoader) {
    json j = test::tiny_hf_config(GetParam());
    HfConfig c = hf_config_from_json(j, "test");
    auto shapes = hf_tensor_shapes(c);
    auto ts = test::tiny_hf_tensors(j, 1);
    ASSERT_EQ(ts.size(), shapes.size());
    std::map<std::string, std::vector<int64_t>> want;
    for (auto& t : ts) want[t.name] = t.shape;
    for (auto& [name, shape] : shapes) EXPECT_EQ(want[name], shape) << name;
    HfModel m(c, WeightStore::random(c, WType::bf16, 3), "random");  // refuses unused tensors
    int32_t id = 5;
    const float* p = m.cache_feed(&id, 1);
    EXPECT_TRUE(std::isfinite(p[0]));
}

INSTANTIATE_TEST_SUITE_P(Hf, Family,
                         ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"));

// moe.cpp's training model (src/model/, its own attention, RoPE, MoE layer with the topk router)
// is Mixtral when every layer is MoE with renormalised top-k: the same weights must give the same
// logits through both.
TEST(HfModel, MixtralEqualsTheTrainingModel) {
    ModelConfig c;
    c.vocab_size = 61;
    c.d_model = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.block_size = 32;
    c.moe_every = 1;
    c.tie_embeddings = false;
    c.init_std = 0.2f;
    c.rope_theta = 1e6f;
    c.moe.n_experts = 4;
    c.moe.top_k = 2;
    c.moe.d_ff = 20;
    c.moe.router = "topk";
    c.moe.renormalize = true;
    Model model(c);
    json j = model_config_to_hf(c);
    j.erase("moe_cpp");
    std::vector<HfTensor> ts;
    for (const ParamSpec& p : model.params())
        ts.push_back({p.name, p.shape.dims,
                      std::vector<float>(model.param_data() + p.offset,
                                         model.param_data() + p.offset + p.shape.numel())});
    const std::string dir = test::temp_model_dir("vs_model");
    test::write_hf_dir(dir, j, ts, WType::f32);
    HfModel hf(dir);
    auto ids = some_ids(17, c.vocab_size, 8);
    auto got = full_logits(hf, ids);
    model.forward(ids.data(), nullptr, 1, (int)ids.size(), false);
    EXPECT_TRUE(close_scaled(got.data(), model.logits(), got.size(), 1e-5));
    std::filesystem::remove_all(dir);
}

// ---- bad folders ------------------------------------------------------------------------------

std::string error_of(const std::string& dir) {
    try {
        HfModel m(dir);
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

struct BadCase {
    const char* name;
    std::function<void(json&, std::vector<HfTensor>&)> edit;
    const char* fragment;
};

TEST(HfModel, RefusesBadConfigsAndTensors) {
    const std::vector<BadCase> cases = {
        {"unknown family", [](json& j, auto&) { j["model_type"] = "deepseek_v4"; }, "'model_type'"},
        {"missing key", [](json& j, auto&) { j.erase("num_key_value_heads"); },
         "'num_key_value_heads'"},
        {"out of range", [](json& j, auto&) { j["num_experts_per_tok"] = 9; },
         "'num_experts_per_tok'"},
        {"fractional", [](json& j, auto&) { j["hidden_size"] = 32.5; }, "'hidden_size'"},
        {"rope scaling", [](json& j, auto&) { j["rope_scaling"] = {{"type", "yarn"}}; },
         "'rope_scaling'"},
        {"short window", [](json& j, auto&) { j["sliding_window"] = 16; }, "'sliding_window'"},
        {"activation", [](json& j, auto&) { j["hidden_act"] = "gelu"; }, "'hidden_act'"},
        {"missing tensor",
         [](json&, std::vector<HfTensor>& t) { t.erase(t.begin() + 5); }, "is missing"},
        {"wrong shape",
         [](json&, std::vector<HfTensor>& t) {
             t[0].shape = {96, 32};
             t[0].data.resize(96 * 32);
         },
         "shape [96, 32]"},
        {"extra tensor",
         [](json&, std::vector<HfTensor>& t) {
             t.push_back({"model.layers.0.self_attn.o_proj.bias", {32}, std::vector<float>(32)});
         },
         "is not part of a mixtral model"},
        {"nan in a norm",
         [](json&, std::vector<HfTensor>& t) { t[1].data[3] = NAN; }, "non-finite"},
    };
    for (const BadCase& bc : cases) {
        json j = test::tiny_hf_config("mixtral");
        auto ts = test::tiny_hf_tensors(j, 1);
        bc.edit(j, ts);
        const std::string dir = test::temp_model_dir("bad");
        test::write_hf_dir(dir, j, ts, WType::f32);
        const std::string e = error_of(dir);
        EXPECT_NE(std::string::npos, e.find(bc.fragment)) << bc.name << ": " << e;
        std::filesystem::remove_all(dir);
    }
}

TEST(HfModel, RefusesBrokenShardsAndIndexes) {
    json j = test::tiny_hf_config("olmoe");
    auto ts = test::tiny_hf_tensors(j, 1);
    auto fresh = [&]() {
        const std::string dir = test::temp_model_dir("shards");
        test::write_hf_dir(dir, j, ts, WType::bf16, 3);
        return dir;
    };
    const std::string shard2 = "/model-00002-of-00003.safetensors";
    {  // truncated shard
        std::string dir = fresh();
        std::filesystem::resize_file(dir + shard2, std::filesystem::file_size(dir + shard2) - 100);
        EXPECT_NE(std::string::npos, error_of(dir).find("truncated")) << error_of(dir);
        std::filesystem::remove_all(dir);
    }
    {  // a shard missing
        std::string dir = fresh();
        std::filesystem::remove(dir + shard2);
        EXPECT_NE(std::string::npos, error_of(dir).find("which is missing")) << error_of(dir);
        std::filesystem::remove_all(dir);
    }
    {  // the index names a tensor no shard has
        std::string dir = fresh();
        json idx = json::parse(read_file(dir + "/model.safetensors.index.json"));
        idx["weight_map"]["model.layers.9.mlp.gate.weight"] = shard2.substr(1);
        write_file_atomic(dir + "/model.safetensors.index.json", idx.dump());
        EXPECT_NE(std::string::npos, error_of(dir).find("does not hold it")) << error_of(dir);
        std::filesystem::remove_all(dir);
    }
    {  // the index is not JSON / has no weight_map / names a path outside the folder
        std::string dir = fresh();
        write_file_atomic(dir + "/model.safetensors.index.json", std::string("{\"weight_map\": ["));
        EXPECT_NE(std::string::npos, error_of(dir).find("not valid JSON")) << error_of(dir);
        write_file_atomic(dir + "/model.safetensors.index.json", std::string("{}"));
        EXPECT_NE(std::string::npos, error_of(dir).find("weight_map")) << error_of(dir);
        write_file_atomic(dir + "/model.safetensors.index.json",
                          std::string("{\"weight_map\": {\"a\": \"../x.safetensors\"}}"));
        EXPECT_NE(std::string::npos, error_of(dir).find("not a file name")) << error_of(dir);
        std::filesystem::remove_all(dir);
    }
    {  // an integer tensor where a weight belongs
        std::string dir = test::temp_model_dir("i64");
        auto t2 = ts;
        const HfTensor emb = t2[0];
        t2.erase(t2.begin());
        test::write_hf_dir(dir, j, t2, WType::f32);
        SafetensorsReader r(dir + "/model.safetensors");
        SafetensorsWriter w;
        for (auto& n : r.names()) w.add(n, r.get(n).shape, r.get(n).data.data());
        std::vector<int64_t> ints(emb.data.size(), 1);
        w.add_i64(emb.name, Shape(emb.shape), ints.data());
        w.save(dir + "/model.safetensors");
        EXPECT_NE(std::string::npos, error_of(dir).find("dtype I64")) << error_of(dir);
        std::filesystem::remove_all(dir);
    }
    {  // no weights at all
        std::string dir = test::temp_model_dir("empty");
        write_file_atomic(dir + "/config.json", j.dump());
        EXPECT_NE(std::string::npos, error_of(dir).find("neither model.safetensors")) << error_of(dir);
        std::filesystem::remove_all(dir);
    }
}

TEST(HfModel, RefusesIdsOutsideTheVocabularyAndTheContext) {
    json j = test::tiny_hf_config("qwen2_moe");
    const std::string dir = test::temp_model_dir("ids");
    test::write_hf_dir(dir, j, test::tiny_hf_tensors(j, 1), WType::f32);
    HfModel m(dir);
    int32_t bad = 97;
    EXPECT_THROW(m.cache_feed(&bad, 1), Error);
    std::vector<int32_t> many(65, 3);
    try {
        m.cache_reset();
        m.cache_feed(many.data(), 65);
        ADD_FAILURE() << "65 positions accepted in a context of 64";
    } catch (const Error& e) {
        EXPECT_NE(std::string::npos, std::string(e.what()).find("max_position_embeddings"));
    }
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
