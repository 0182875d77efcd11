// Int8 (Q8_0) checkpoints in the engine, for every family: the int8 folder against the F32
// folder of the same dequantised values (only the activation quantisation of the decode kernel
// separates them) and against the original F32 weights (the weights' rounding too), KV-cache
// decode against full recomputation at int8, random q8_0 weights, and every malformed int8 or
// int4 folder refused with a message naming the tensor (int4's numbers: test_gguf.cpp, against
// the Q4_0 GGUF of the same weights).
#include <fstream>

#include "hf_fixture.h"
#include "moe/error.h"
#include "moe/hf_model.h"
#include "kernels/q8_gemm.h"

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

// max |a - b| / max |b|
double rel_err(const float* a, const float* b, size_t n) {
    double e = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        e = std::max(e, (double)std::fabs(a[i] - b[i]));
        mx = std::max(mx, (double)std::fabs(b[i]));
    }
    return e / std::max(mx, 1e-30);
}

// The fixture's config with every matrix's rows a whole number of 32-blocks (so that every
// matrix but the router is int8): expert and dense widths 64, qwen3_moe's head_dim 16.
json q8_config(const std::string& family) {
    json j = test::tiny_hf_config(family);
    if (j.contains("moe_intermediate_size")) j["moe_intermediate_size"] = 64;
    j["intermediate_size"] = 64;
    if (j.contains("shared_expert_intermediate_size")) j["shared_expert_intermediate_size"] = 32;
    if (j.contains("head_dim")) j["head_dim"] = 16;
    return j;
}

class Q8Family : public ::testing::TestWithParam<std::string> {};

// Tolerances (relative to the largest logit). Every int8 product, prefill and decode alike,
// multiplies the inputs quantised per 32-block (error <= max|x| / 254 per value), as llama.cpp's
// Q8_0 does: against the F32 folder of the same int8 weight values that moved these tiny random
// models' logits by 3.3e-2 to 7.9e-2 (measured on the four families; they are that sensitive:
// rounding the weights themselves moves them by 4e-2 to 1.9e-1). The trained main-job model
// keeps its validation loss within 1% (e2e_quantize, docs/formats.md).
constexpr double kActTol = 0.15;  // int8 folder vs F32 folder of the same int8 values
constexpr double kWeightTol = 0.3;

TEST_P(Q8Family, Int8FolderMatchesF32WithinTheStatedTolerance) {
    json j = q8_config(GetParam());
    std::vector<HfTensor> ts = test::tiny_hf_tensors(j, 21);
    const std::string df = test::temp_model_dir("q8f_" + GetParam()),
                      dr = test::temp_model_dir("q8r_" + GetParam()),
                      dq = test::temp_model_dir("q8q_" + GetParam());
    test::write_hf_dir(df, j, ts, WType::f32);
    test::write_hf_dir(dr, j, test::q8_rounded(ts), WType::f32);
    test::write_hf_dir(dq, j, ts, WType::q8_0, 2);
    HfModel mf(df), mr(dr), mq(dq);
    EXPECT_EQ("int8", mq.config().quantization);
    auto ids = some_ids(21, mf.config().vocab_size, 4);
    auto f = full_logits(mf, ids), r = full_logits(mr, ids), q = full_logits(mq, ids);
    const double act = rel_err(q.data(), r.data(), q.size());
    const double wt = rel_err(q.data(), f.data(), q.size());
    const double round_only = rel_err(r.data(), f.data(), r.size());
    RecordProperty("act_err", std::to_string(act));
    RecordProperty("weight_err", std::to_string(wt));
    RecordProperty("round_err", std::to_string(round_only));
    EXPECT_LT(act, kActTol);
    // Against the unrounded weights the engine adds no more than its activation error to what
    // rounding the weights costs (the F32 folder of rounded values: same engine, exact path).
    EXPECT_LT(wt, round_only + kActTol);
    EXPECT_GT(round_only, 1e-4);  // and int8 is really in use
    // Greedy choices survive at nearly every position.
    const int V = mf.config().vocab_size;
    int same = 0;
    for (size_t t = 0; t < ids.size(); t++) {
        auto am = [&](const std::vector<float>& v) {
            return std::max_element(v.begin() + t * V, v.begin() + (t + 1) * V) - v.begin();
        };
        same += am(q) == am(f);
    }
    RecordProperty("greedy_same", same);
    EXPECT_GE(same, 15) << "of 21 greedy tokens";
    for (auto& d : {df, dr, dq}) std::filesystem::remove_all(d);
}

TEST_P(Q8Family, KvCacheDecodeEqualsFullRecomputation) {
    json j = q8_config(GetParam());
    const std::string dir = test::temp_model_dir("q8kv_" + GetParam());
    test::write_hf_dir(dir, j, test::tiny_hf_tensors(j, 11), WType::q8_0);
    HfModel m(dir);
    const int V = m.config().vocab_size, n = 21;
    auto ids = some_ids(n, V, 3);
    std::vector<float> full = full_logits(m, ids);
    // One token at a time (every product by the decode kernel's integer dots) against the full
    // forward (the prefill path: the same quantised inputs, widened weights, fp32 FMAs): the
    // same products summed in another order, so fp32 rounding apart (measured: worst position
    // at most 7.7e-7 of the logits' scale on the four families, 1e-5 allowed).
    m.cache_reset();
    std::vector<float> one((size_t)n * V);
    for (int i = 0; i < n; i++) {
        const float* p = m.cache_feed(&ids[i], 1);
        std::copy(p, p + V, &one[(size_t)i * V]);
        EXPECT_LT(rel_err(p, &full[(size_t)i * V], V), 1e-5) << "position " << i;
    }
    // The cache itself is exact: chunks of 2 and 3 tokens (the same decode kernel, rows
    // independent) give the one-at-a-time logits up to fp32 rounding in attention.
    m.cache_reset();
    for (int i = 0; i < n;) {
        const int k = std::min(i % 2 ? 3 : 2, n - i);
        const float* p = m.cache_feed(&ids[i], k, true);
        for (int r = 0; r < k; r++)
            EXPECT_LT(rel_err(p + (size_t)r * V, &one[(size_t)(i + r) * V], V), 1e-5)
                << "position " << i + r;
        i += k;
    }
    // Decode is deterministic: the same tokens again give the same bits.
    m.cache_reset();
    std::vector<float> a, b;
    for (int i = 0; i < n; i++) {
        const float* p = m.cache_feed(&ids[i], 1);
        if (i == n - 1) a.assign(p, p + V);
    }
    m.cache_reset();
    for (int i = 0; i < n; i++) {
        const float* p = m.cache_feed(&ids[i], 1);
        if (i == n - 1) b.assign(p, p + V);
    }
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
    std::filesystem::remove_all(dir);
}

// Random q8_0 weights (moe bench generate --type q8_0) are the random F32 weights rounded.
TEST_P(Q8Family, RandomQ8WeightsAreTheRandomF32Rounded) {
    json j = q8_config(GetParam());
    HfConfig c = hf_config_from_json(j, "test");
    HfModel mf(c, WeightStore::random(c, WType::f32, 3), "random f32");
    HfModel mq(c, WeightStore::random(c, WType::q8_0, 3), "random q8_0");
    auto ids = some_ids(9, c.vocab_size, 2);
    auto f = full_logits(mf, ids), q = full_logits(mq, ids);
    EXPECT_LT(rel_err(q.data(), f.data(), q.size()), kWeightTol);
    EXPECT_GT(rel_err(q.data(), f.data(), q.size()), 0.0);  // q8_0 is in use
    EXPECT_LT(mq.weights().mapped_bytes(), mf.weights().mapped_bytes() / 3);
}

INSTANTIATE_TEST_SUITE_P(Hf, Q8Family,
                         ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"));

// ---- bad int8 folders -------------------------------------------------------------------------

std::string error_of(const std::string& dir) {
    try {
        HfModel m(dir);
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

// The int4 encoding of an eligible tensor: U8 nibbles [rows, cols / 2] and F16 scales.
void q4_split(const HfTensor& t, std::vector<uint8_t>* q, std::vector<uint16_t>* d) {
    const int64_t rows = t.shape[0], cols = t.shape[1], nb = cols / 32;
    std::vector<uint8_t> blocks((size_t)(rows * nb) * kQ4BlockBytes);
    for (int64_t r = 0; r < rows; r++)
        quantize_row_q4_0(&t.data[(size_t)(r * cols)], cols, &blocks[(size_t)(r * nb) * kQ4BlockBytes]);
    ggml_blocks_to_split(WType::q4_0, blocks.data(), rows, cols);
    q->assign(blocks.begin(), blocks.begin() + rows * cols / 2);
    d->resize((size_t)(rows * nb));
    std::memcpy(d->data(), blocks.data() + rows * cols / 2, d->size() * 2);
}

// An int8 (int4: int4 = true) mixtral folder written tensor by tensor; `edit` may replace what
// one tensor becomes.
using Edit = std::function<bool(SafetensorsWriter&, const HfTensor&)>;
void write_q8_custom(const std::string& dir, json j, const std::vector<HfTensor>& ts,
                     const Edit& edit, bool int4 = false) {
    write_file_atomic(dir + "/config.json", j.dump(2));
    SafetensorsWriter w;
    for (const HfTensor& t : ts) {
        if (edit(w, t)) continue;
        if (hf_q8_eligible(t.name, t.shape)) {
            std::vector<int8_t> q;
            std::vector<uint8_t> u;
            std::vector<uint16_t> d;
            if (int4) {
                q4_split(t, &u, &d);
                w.add_raw(t.name, "U8", Shape({t.shape[0], t.shape[1] / 2}), u.data(), u.size());
            } else {
                test::q8_split(t, &q, &d);
                w.add_raw(t.name, "I8", Shape(t.shape), q.data(), q.size());
            }
            w.add_raw(hf_q8_scale_name(t.name), "F16", Shape({t.shape[0], t.shape[1] / 32}),
                      d.data(), d.size() * 2);
        } else {
            w.add(t.name, Shape(t.shape), t.data.data());
        }
    }
    w.save(dir + "/model.safetensors");
}

// A folder that `edit` / `cfg` damage, refused with a message holding `fragment`.
struct Case {
    const char* name;
    std::function<void(json&)> cfg;
    Edit edit;
    const char* fragment;
};

// Every case written on `base` (int8 or int4) is refused as it says; and the folder written the
// same way undamaged loads.
void expect_refused(const json& base, bool int4, const std::vector<Case>& cases) {
    for (const Case& c : cases) {
        json j = base;
        if (c.cfg) c.cfg(j);
        auto ts = test::tiny_hf_tensors(j, 1);
        const std::string dir = test::temp_model_dir("qbad");
        write_q8_custom(dir, j, ts, c.edit, int4);
        const std::string e = error_of(dir);
        EXPECT_NE(std::string::npos, e.find(c.fragment)) << c.name << ": " << e;
        std::filesystem::remove_all(dir);
    }
    const std::string dir = test::temp_model_dir("qgood");
    write_q8_custom(dir, base, test::tiny_hf_tensors(base, 1),
                    [](SafetensorsWriter&, const HfTensor&) { return false; }, int4);
    EXPECT_EQ("(no error)", error_of(dir));
    std::filesystem::remove_all(dir);
}

TEST(HfQ8, RefusesMalformedInt8Folders) {
    const std::string wq = "model.layers.0.self_attn.q_proj.weight";
    json quant = {{"type", "int8"}, {"format", "q8_0"}, {"block_size", 32}, {"scale_dtype", "F16"}};
    auto scales_as = [&](const char* dtype, std::vector<int64_t> shape) {
        return [=](SafetensorsWriter& w, const HfTensor& t) {
            if (t.name != wq) return false;
            std::vector<int8_t> q(t.data.size(), 1);
            w.add_raw(t.name, "I8", Shape(t.shape), q.data(), q.size());
            int64_t n = 1;
            for (auto v : shape) n *= v;
            std::vector<uint8_t> bytes((size_t)n * (std::string(dtype) == "F32" ? 4 : 2), 0);
            w.add_raw(hf_q8_scale_name(t.name), dtype, Shape(shape), bytes.data(), bytes.size());
            return true;
        };
    };
    const std::vector<Case> cases = {
        {"missing scales", nullptr,
         [&](SafetensorsWriter& w, const HfTensor& t) {
             if (t.name != wq) return false;
             std::vector<int8_t> q(t.data.size(), 1);
             w.add_raw(t.name, "I8", Shape(t.shape), q.data(), q.size());
             return true;
         },
         "q_proj.weight_scale are missing"},
        {"scales of the wrong shape", nullptr, scales_as("F16", {32, 2}), "F16 [32, 1] is needed"},
        {"scales of the wrong dtype", nullptr, scales_as("F32", {32, 1}), "F32 [32, 1]"},
        {"int8 rows not whole blocks", nullptr,
         [&](SafetensorsWriter& w, const HfTensor& t) {
             if (t.name.find("experts.0.w2.weight") == std::string::npos) return false;
             std::vector<int8_t> q(t.data.size(), 1);  // [32, 24]: 24 columns
             w.add_raw(t.name, "I8", Shape(t.shape), q.data(), q.size());
             return true;
         },
         "not a multiple of the block size 32"},
        {"int8 without the config block", [](json& j) { j.erase("moe_cpp_quantization"); },
         [](SafetensorsWriter&, const HfTensor&) { return false; }, "moe_cpp_quantization"},
        {"unknown quantisation type", [](json& j) { j["moe_cpp_quantization"]["type"] = "int3"; },
         [](SafetensorsWriter&, const HfTensor&) { return false; }, "key 'type'"},
        {"int4 type with q8_0's format", [](json& j) { j["moe_cpp_quantization"]["type"] = "int4"; },
         [](SafetensorsWriter&, const HfTensor&) { return false; }, "key 'format'"},
        {"int4 block over int8 tensors",
         [](json& j) {
             j["moe_cpp_quantization"]["type"] = "int4";
             j["moe_cpp_quantization"]["format"] = "q4_0";
         },
         [](SafetensorsWriter&, const HfTensor&) { return false; },
         "holds int8 (I8) matrices but config.json has 'moe_cpp_quantization' of type int4"},
        {"another block size", [](json& j) { j["moe_cpp_quantization"]["block_size"] = 64; },
         [](SafetensorsWriter&, const HfTensor&) { return false; }, "key 'block_size'"},
        {"an int8 norm", nullptr,
         [&](SafetensorsWriter& w, const HfTensor& t) {
             if (t.name != "model.norm.weight") return false;
             std::vector<int8_t> q(t.data.size(), 1);
             w.add_raw(t.name, "I8", Shape(t.shape), q.data(), q.size());
             return true;
         },
         "it is a vector"},
    };
    json base = test::tiny_hf_config("mixtral");
    base["moe_cpp_quantization"] = quant;
    expect_refused(base, false, cases);
}

// ---- bad int4 folders (moe quantize --type int4) ---------------------------------------------

TEST(HfQ4, RefusesMalformedInt4Folders) {
    const std::string wq = "model.layers.0.self_attn.q_proj.weight";
    json quant = {{"type", "int4"}, {"format", "q4_0"}, {"block_size", 32}, {"scale_dtype", "F16"}};
    const std::vector<Case> cases = {
        {"scales missing", nullptr,
         [&](SafetensorsWriter& w, const HfTensor& t) {
             if (t.name != wq) return false;
             std::vector<uint8_t> q;
             std::vector<uint16_t> d;
             q4_split(t, &q, &d);
             w.add_raw(t.name, "U8", Shape({t.shape[0], t.shape[1] / 2}), q.data(), q.size());
             return true;
         },
         "is int4 (U8) but its scales model.layers.0.self_attn.q_proj.weight_scale are missing"},
        {"values one byte a value", nullptr,
         [&](SafetensorsWriter& w, const HfTensor& t) {
             if (t.name != wq) return false;
             std::vector<uint8_t> q(t.data.size(), 0x88);
             w.add_raw(t.name, "U8", Shape(t.shape), q.data(), q.size());
             return true;
         },
         "(int4: [rows, cols / 2])"},
        {"scales of another shape", nullptr,
         [&](SafetensorsWriter& w, const HfTensor& t) {
             if (t.name != wq) return false;
             std::vector<uint8_t> q;
             std::vector<uint16_t> d;
             q4_split(t, &q, &d);
             w.add_raw(t.name, "U8", Shape({t.shape[0], t.shape[1] / 2}), q.data(), q.size());
             w.add_raw(hf_q8_scale_name(t.name), "F16", Shape({t.shape[0] * t.shape[1] / 32}),
                       d.data(), d.size() * 2);
             return true;
         },
         "of int4 tensor"},
        {"int4 without the config block", [](json& j) { j.erase("moe_cpp_quantization"); },
         [](SafetensorsWriter&, const HfTensor&) { return false; },
         "holds int4 (U8) matrices but config.json has no 'moe_cpp_quantization' block"},
        {"an int8 block over int4 tensors",
         [](json& j) {
             j["moe_cpp_quantization"]["type"] = "int8";
             j["moe_cpp_quantization"]["format"] = "q8_0";
         },
         [](SafetensorsWriter&, const HfTensor&) { return false; },
         "holds int4 (U8) matrices but config.json has 'moe_cpp_quantization' of type int8"},
        {"int4 norm (a vector)", nullptr,
         [](SafetensorsWriter& w, const HfTensor& t) {
             if (t.name != "model.norm.weight") return false;
             std::vector<uint8_t> q(t.data.size() / 2, 0x88);
             w.add_raw(t.name, "U8", Shape({(int64_t)q.size()}), q.data(), q.size());
             return true;
         },
         "it is a vector"},
    };
    json base = q8_config("mixtral");
    base["moe_cpp_quantization"] = quant;
    expect_refused(base, true, cases);
}

}  // namespace
}  // namespace moe
