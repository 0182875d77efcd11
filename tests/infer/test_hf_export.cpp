// export_hf_folder (moe quantize, moe convert --to hf) on tiny folders of every family: F32
// shards give bitwise the source's logits; bf16 holds exactly the rounded matrices with router
// and vectors untouched; int8 holds exactly the Q8_0 blocks (the engine's logits equal those of
// an int8 folder written independently by the test fixture); a moe.cpp checkpoint exports as the
// model the training code computes; what cannot be exported is refused by name.
#include "hf_fixture.h"
#include "moe/config.h"
#include "moe/error.h"
#include "moe/hf_export.h"
#include "moe/hf_model.h"
#include "moe/model.h"

namespace moe {
namespace {

using test::HfTensor;
using json = nlohmann::json;

std::vector<float> logits_of(const std::string& dir, int n = 11) {
    HfModel m(dir);
    std::vector<int32_t> ids(n);
    for (int i = 0; i < n; i++) ids[i] = (i * 7 + 3) % m.config().vocab_size;
    const float* p = m.cache_feed(ids.data(), n, true);
    return std::vector<float>(p, p + (size_t)n * m.config().vocab_size);
}

// Every tensor of a folder (shards included): name -> (dtype, values as float).
std::map<std::string, std::pair<std::string, std::vector<float>>> tensors_of(
    const std::string& dir) {
    std::map<std::string, std::pair<std::string, std::vector<float>>> out;
    for (auto& e : std::filesystem::directory_iterator(dir)) {
        const std::string p = e.path().string();
        if (p.size() < 12 || p.substr(p.size() - 12) != ".safetensors") continue;
        SafetensorsReader r(p);
        for (auto& n : r.names()) out[n] = {r.get(n).dtype, r.get(n).data};
    }
    return out;
}

json q8_config(const std::string& family) {  // every matrix's rows whole 32-blocks
    json j = test::tiny_hf_config(family);
    if (j.contains("moe_intermediate_size")) j["moe_intermediate_size"] = 64;
    j["intermediate_size"] = 64;
    if (j.contains("shared_expert_intermediate_size")) j["shared_expert_intermediate_size"] = 32;
    if (j.contains("head_dim")) j["head_dim"] = 16;
    return j;
}

bool is_router(const std::string& n) {
    return n.find(".gate.weight") != std::string::npos ||
           n.find("shared_expert_gate") != std::string::npos;
}

class Export : public ::testing::TestWithParam<std::string> {};

TEST_P(Export, F32ShardsGiveTheSameModel) {
    json j = test::tiny_hf_config(GetParam());
    const std::string src = test::temp_model_dir("exs_" + GetParam()),
                      dst = test::temp_model_dir("exd_" + GetParam());
    std::filesystem::remove_all(dst);
    test::write_hf_dir(src, j, test::tiny_hf_tensors(j, 3), WType::bf16, 2);
    HfExportOptions o;
    o.type = "f32";
    o.shard_bytes = 20000;
    const HfExportResult r = export_hf_folder(src, dst, o);
    EXPECT_GT(r.n_files, 2);
    EXPECT_TRUE(file_exists(dst + "/model.safetensors.index.json"));
    EXPECT_FALSE(std::filesystem::exists(dst + ".tmp-" + std::to_string(getpid())));
    auto a = logits_of(src), b = logits_of(dst);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << "bf16 widened to f32 exactly";
    EXPECT_EQ("float32", json::parse(read_file(dst + "/config.json"))["torch_dtype"]);
    for (auto& [name, t] : tensors_of(dst)) EXPECT_EQ("F32", t.first) << name;
    std::filesystem::remove_all(src);
    std::filesystem::remove_all(dst);
}

TEST_P(Export, Bf16RoundsTheMatricesAndKeepsRouterAndVectors) {
    json j = test::tiny_hf_config(GetParam());
    auto ts = test::tiny_hf_tensors(j, 4);
    const std::string src = test::temp_model_dir("bfs_" + GetParam()),
                      dst = test::temp_model_dir("bfd_" + GetParam());
    std::filesystem::remove_all(dst);
    test::write_hf_dir(src, j, ts, WType::f32);
    HfExportOptions o;
    o.type = "bf16";
    export_hf_folder(src, dst, o);
    auto got = tensors_of(dst);
    ASSERT_EQ(ts.size(), got.size());
    for (const HfTensor& t : ts) {
        const auto& [dtype, v] = got.at(t.name);
        const bool keep = t.shape.size() == 1 || is_router(t.name);
        EXPECT_EQ(keep ? "F32" : "BF16", dtype) << t.name;
        for (size_t i = 0; i < v.size(); i++)
            ASSERT_EQ(keep ? t.data[i] : bf16_to_f32(f32_to_bf16(t.data[i])), v[i]) << t.name;
    }
    std::filesystem::remove_all(src);
    std::filesystem::remove_all(dst);
}

TEST_P(Export, Int8HoldsTheQ8BlocksAndRunsAsTheFixturesInt8Folder) {
    json j = q8_config(GetParam());
    auto ts = test::tiny_hf_tensors(j, 5);
    const std::string src = test::temp_model_dir("q8s_" + GetParam()),
                      dst = test::temp_model_dir("q8d_" + GetParam()),
                      ref = test::temp_model_dir("q8ref_" + GetParam());
    std::filesystem::remove_all(dst);
    test::write_hf_dir(src, j, ts, WType::f32, 3);
    test::write_hf_dir(ref, j, ts, WType::q8_0);
    HfExportOptions o;
    o.type = "int8";
    const HfExportResult r = export_hf_folder(src, dst, o);
    auto got = tensors_of(dst);
    int n_int8 = 0;
    for (const HfTensor& t : ts) {
        if (!hf_q8_eligible(t.name, t.shape)) {
            EXPECT_EQ("F32", got.at(t.name).first) << t.name;
            continue;
        }
        n_int8++;
        std::vector<int8_t> q;
        std::vector<uint16_t> d;
        test::q8_split(t, &q, &d);
        const auto& [qt, qv] = got.at(t.name);
        const auto& [st, sv] = got.at(hf_q8_scale_name(t.name));
        ASSERT_EQ("I8", qt);
        ASSERT_EQ("F16", st);
        ASSERT_EQ(q.size(), qv.size());
        ASSERT_EQ(d.size(), sv.size());
        for (size_t i = 0; i < q.size(); i++) ASSERT_EQ((float)q[i], qv[i]) << t.name << " " << i;
        for (size_t i = 0; i < d.size(); i++) ASSERT_EQ(f16_to_f32(d[i]), sv[i]) << t.name;
    }
    EXPECT_EQ(n_int8, r.n_quantized);
    EXPECT_GT(n_int8, 10);
    EXPECT_EQ("int8", json::parse(read_file(dst + "/config.json"))["moe_cpp_quantization"]["type"]);
    auto a = logits_of(dst), b = logits_of(ref);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
    // Converting the int8 folder back to f32 widens exactly: the same logits at prefill.
    const std::string back = dst + "_f32";
    std::filesystem::remove_all(back);
    o.type = "f32";
    export_hf_folder(dst, back, o);
    EXPECT_FALSE(json::parse(read_file(back + "/config.json")).contains("moe_cpp_quantization"));
    auto rr = tensors_of(back);
    for (const HfTensor& t : test::q8_rounded(ts))
        EXPECT_EQ(t.data, rr.at(t.name).second) << t.name;
    for (auto& d : {src, dst, ref, back}) std::filesystem::remove_all(d);
}

INSTANTIATE_TEST_SUITE_P(Hf, Export,
                         ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"));

// A moe.cpp checkpoint (config.json with the moe_cpp block) of the Mixtral family exports as the
// model the training code computes; one it would compute differently is refused by key.
TEST(Export, MoeCppCheckpointAsTheTrainingModelComputesIt) {
    ModelConfig c;
    c.vocab_size = 61;
    c.d_model = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.block_size = 32;
    c.moe_every = 1;
    c.tie_embeddings = true;
    c.init_std = 0.2f;
    c.moe.n_experts = 4;
    c.moe.top_k = 2;
    c.moe.d_ff = 64;
    c.moe.router = "topk";
    c.moe.renormalize = true;
    Model model(c);
    json j = model_config_to_hf(c);
    ASSERT_TRUE(j.contains("moe_cpp"));
    std::vector<HfTensor> ts;
    for (const ParamSpec& p : model.params())
        ts.push_back({p.name, p.shape.dims,
                      std::vector<float>(model.param_data() + p.offset,
                                         model.param_data() + p.offset + p.shape.numel())});
    const std::string src = test::temp_model_dir("ck"), dst = test::temp_model_dir("ckd");
    std::filesystem::remove_all(dst);
    test::write_hf_dir(src, j, ts, WType::f32);
    HfExportOptions o;
    o.type = "f32";
    export_hf_folder(src, dst, o);
    EXPECT_FALSE(json::parse(read_file(dst + "/config.json")).contains("moe_cpp"));
    EXPECT_TRUE(is_hf_model_dir(dst));
    std::vector<int32_t> ids(11);
    for (int i = 0; i < 11; i++) ids[i] = (i * 7 + 3) % c.vocab_size;
    auto got = logits_of(dst);
    model.forward(ids.data(), nullptr, 1, 11, false);
    double mx = 0, e = 0;
    for (size_t i = 0; i < got.size(); i++) {
        mx = std::max(mx, (double)std::fabs(model.logits()[i]));
        e = std::max(e, (double)std::fabs(got[i] - model.logits()[i]));
    }
    EXPECT_LT(e, 1e-5 * mx);
    std::filesystem::remove_all(dst);
    for (const char* key : {"router", "score"}) {
        json bad = j;
        bad["moe_cpp"][key] = std::string(key) == "router" ? "switch" : "sigmoid";
        write_file_atomic(src + "/config.json", bad.dump());
        try {
            export_hf_folder(src, dst, o);
            ADD_FAILURE() << key << " accepted";
        } catch (const Error& err) {
            EXPECT_NE(std::string::npos,
                      std::string(err.what()).find(std::string("moe_cpp '") + key))
                << err.what();
        }
        EXPECT_FALSE(std::filesystem::exists(dst));
    }
    std::filesystem::remove_all(src);
}

TEST(Export, RefusesWhatItCannotWrite) {
    json j = test::tiny_hf_config("mixtral");
    auto ts = test::tiny_hf_tensors(j, 6);
    const std::string src = test::temp_model_dir("rs"), dst = test::temp_model_dir("rd");
    auto error_of = [&](const std::string& type, const std::string& to) {
        HfExportOptions o;
        o.type = type;
        try {
            export_hf_folder(src, to, o);
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("(no error)");
    };
    test::write_hf_dir(src, j, ts, WType::f32);
    EXPECT_NE(std::string::npos, error_of("int8", dst).find("already exists"));  // dst made above
    std::filesystem::remove_all(dst);
    EXPECT_NE(std::string::npos, error_of("int3", dst).find("--type"));
    // A value F16 cannot hold, a NaN in a matrix: named, and nothing left behind.
    ts[2].data[40] = 1e6f;  // lm_head
    test::write_hf_dir(src, j, ts, WType::f32);
    std::string e = error_of("f16", dst);
    EXPECT_NE(std::string::npos, e.find("lm_head.weight")) << e;
    EXPECT_NE(std::string::npos, e.find("too large for F16")) << e;
    EXPECT_FALSE(std::filesystem::exists(dst));
    e = error_of("int4", dst);  // Q4_0's scale would be 1e6 / 8, past F16's 65504
    EXPECT_NE(std::string::npos, e.find("too large for int4's fp16 scales")) << e;
    EXPECT_FALSE(std::filesystem::exists(dst));
    EXPECT_EQ("(no error)", error_of("int8", dst));  // int8's scales hold 1e6 / 127
    std::filesystem::remove_all(dst);
    ts[2].data[40] = NAN;
    test::write_hf_dir(src, j, ts, WType::f32);
    e = error_of("bf16", dst);
    EXPECT_NE(std::string::npos, e.find("non-finite")) << e;
    EXPECT_NE(std::string::npos, e.find("lm_head.weight")) << e;
    EXPECT_FALSE(std::filesystem::exists(dst));
    std::filesystem::remove_all(src);
}

// config.json written from a GGUF's metadata (hf_config_to_json): read back, every family's
// tiny config gives the same model (dense layers, biases, clip_qkv, head_dim, special ids);
// what the family's keys cannot say is refused naming the file and the field.
TEST(Export, ConfigJsonFromAConfigReadsBackTheSame) {
    for (const char* fam : {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}) {
        json src = test::tiny_hf_config(fam);
        if (std::string(fam) == "qwen3_moe") src["attention_bias"] = true;
        const HfConfig c = hf_config_from_json(src, "src");
        const json j = hf_config_to_json(c, "x.gguf");
        const HfConfig b = hf_config_from_json(j, "back");
        EXPECT_EQ(c.moe_layer, b.moe_layer) << fam;
        EXPECT_EQ(c.head_dim, b.head_dim) << fam;
        EXPECT_EQ(c.clip_qkv, b.clip_qkv) << fam;
        EXPECT_EQ(c.rms_eps, b.rms_eps) << fam;
        EXPECT_EQ(c.o_bias, b.o_bias) << fam;
        EXPECT_EQ(c.norm_topk_prob, b.norm_topk_prob) << fam;
        EXPECT_EQ(c.eos_token_ids, b.eos_token_ids) << fam;
        EXPECT_EQ(hf_tensor_shapes(c), hf_tensor_shapes(b)) << fam;
    }
    auto refused = [](HfConfig c, const char* field) {
        try {
            hf_config_to_json(c, "x.gguf");
            ADD_FAILURE() << field << " accepted";
        } catch (const Error& e) {
            const std::string m = e.what();
            EXPECT_EQ(0u, m.find("x.gguf: ")) << m;
            EXPECT_NE(std::string::npos, m.find(field)) << m;
        }
    };
    HfConfig mix = hf_config_from_json(test::tiny_hf_config("mixtral"), "m");
    mix.norm_topk_prob = false;
    refused(mix, "norm_topk_prob");
    HfConfig olmoe = hf_config_from_json(test::tiny_hf_config("olmoe"), "o");
    olmoe.moe_layer[1] = 0;
    olmoe.dense_ff = 40;
    refused(olmoe, "which layers are MoE");
    HfConfig qwen2 = hf_config_from_json(test::tiny_hf_config("qwen2_moe"), "q");
    qwen2.o_bias = true;
    refused(qwen2, "o_proj bias");
}

TEST(Export, ByteSizes) {
    EXPECT_EQ(2000000000u, parse_byte_size("2GB", "--shard-size"));
    EXPECT_EQ(500000000u, parse_byte_size("500mb", "--shard-size"));
    EXPECT_EQ((uint64_t)(1.5 * 1024 * 1024 * 1024), parse_byte_size("1.5GiB", "--shard-size"));
    EXPECT_EQ(123456u, parse_byte_size("123456", "--shard-size"));
    for (const char* bad : {"", "GB", "2XB", "-1GB", "0", "1e400", "nanGB", "20TB", "2 GB"})
        EXPECT_THROW(parse_byte_size(bad, "--shard-size"), UsageError) << bad;
}

}  // namespace
}  // namespace moe
