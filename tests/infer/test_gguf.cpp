// GGUF (src/io/gguf.cpp, src/infer/gguf_model.cpp, gguf_export.cpp): the writer and reader round
// trip every metadata type and tensor type bit for bit; every truncation and corruption of a file
// is refused with moe::Error (never a crash); the Q8_0 reference quantiser's error bound; llama.cpp's
// q/k row order and its inverse; and each family's folder exported to GGUF runs in the engine
// with exactly the folder's logits. llama.cpp itself: ctest gguf_vs_llamacpp (bench/peers/).
#include <cstring>
#include <filesystem>
#include <fstream>

#include "hf_fixture.h"
#include "infer/gguf_model.h"
#include "io/file_map.h"
#include "kernels/q8_gemm.h"
#include "moe/error.h"
#include "moe/gguf.h"
#include "moe/hf_export.h"
#include "moe/hf_model.h"
#include "moe/tokenizer.h"

namespace moe {
namespace {

using json = nlohmann::json;

// The call throws moe::Error whose message contains `frag`.
#define EXPECT_THROW_MSG(call, frag)                                              \
    do {                                                                          \
        try {                                                                     \
            call;                                                                 \
            ADD_FAILURE() << "no error from " #call;                              \
        } catch (const Error& e) {                                                \
            EXPECT_NE(std::string(e.what()).find(frag), std::string::npos) << e.what(); \
        }                                                                         \
    } while (0)

std::string slurp(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

// A file with every value type, arrays of each kind, and tensors of the four types (odd shapes).
GgufWriter sample_writer(std::vector<std::vector<uint8_t>>* datas) {
    GgufWriter w;
    GgufValue v;
    for (uint32_t t : {0u, 1u, 2u, 3u, 4u, 5u, 6u, 10u, 11u, 12u}) {
        v = GgufValue();
        v.type = (GgufType)t;
        v.bits = 0x8123456789abcdefULL >> (64 - 8 * (t == 0 || t == 1 ? 1 : t <= 3 ? 2 : t <= 6 ? 4 : 8));
        w.set("k.scalar." + std::to_string(t), v);
    }
    w.set("k.bool", GgufValue::boolean(true));
    w.set("k.str", GgufValue::string(std::string("h\xc3\xa9llo\0x", 8)));
    w.set("k.strs", GgufValue::strings({"a", "", "\xe2\x96\x81" "b"}));
    w.set("k.f32s", GgufValue::f32s({1.5f, -0.f, 3e38f}));
    w.set("k.i32s", GgufValue::i32s({-1, 0, 7}));
    GgufValue u8s;
    u8s.type = GgufType::arr;
    u8s.arr_type = GgufType::u8;
    u8s.arr = {0, 255, 17};
    w.set("k.u8s", u8s);
    struct T {
        const char* name;
        std::vector<int64_t> ne;
        GgmlType type;
    };
    const T ts[] = {{"a", {3, 5}, GgmlType::f32},
                    {"b", {7}, GgmlType::f16},
                    {"c", {5, 3, 2}, GgmlType::bf16},
                    {"d", {64, 3}, GgmlType::q8_0},
                    {"e", {96, 2}, GgmlType::q4_0}};
    uint64_t seed = 1;
    for (const T& t : ts) {
        uint64_t rows = 1;
        for (size_t i = 1; i < t.ne.size(); i++) rows *= (uint64_t)t.ne[i];
        std::vector<uint8_t> d((size_t)(ggml_row_bytes(t.type, (uint64_t)t.ne[0]) * rows));
        for (auto& b : d) b = (uint8_t)(test::randn(1, ++seed)[0] * 100);
        datas->push_back(d);
        const std::vector<uint8_t>* dp = &datas->back();
        w.add_tensor(t.name, t.ne, t.type, [dp](uint8_t* dst) { std::memcpy(dst, dp->data(), dp->size()); });
    }
    return w;
}

TEST(Gguf, WriteReadRoundTripsEveryTypeBitForBit) {
    const std::string dir = test::temp_model_dir("gguf_rt");
    std::vector<std::vector<uint8_t>> datas;
    datas.reserve(8);
    GgufWriter w = sample_writer(&datas);
    w.write(dir + "/a.gguf");
    const GgufFile f = GgufFile::open(dir + "/a.gguf");
    EXPECT_EQ(f.version(), 3u);
    ASSERT_EQ(f.tensors().size(), 5u);
    for (size_t i = 0; i < 5; i++) {
        const GgufTensor& t = f.tensors()[i];
        ASSERT_EQ(t.bytes, datas[i].size()) << t.name;
        EXPECT_EQ(std::memcmp(t.data, datas[i].data(), t.bytes), 0) << t.name;
        EXPECT_EQ(t.offset % f.alignment(), 0u);
    }
    EXPECT_EQ(f.get_str("k.str"), std::string("h\xc3\xa9llo\0x", 8));
    EXPECT_EQ(f.find("k.scalar.5")->as_int(), (int32_t)0x81234567);
    EXPECT_EQ(f.find("k.f32s")->arr_double(2), (double)3e38f);
    EXPECT_EQ(f.find("k.i32s")->arr_int(0), -1);
    // Everything read, written again: the same bytes.
    GgufWriter w2;
    for (auto& [k, v] : f.kv()) w2.set(k, v);
    for (const GgufTensor& t : f.tensors()) {
        const GgufTensor* tp = &t;
        w2.add_tensor(t.name, t.ne, t.type,
                      [tp](uint8_t* dst) { std::memcpy(dst, tp->data, tp->bytes); });
    }
    w2.write(dir + "/b.gguf");
    EXPECT_EQ(slurp(dir + "/a.gguf"), slurp(dir + "/b.gguf"));
    const GgufFile g = GgufFile::open(dir + "/b.gguf");
    ASSERT_EQ(g.kv().size(), f.kv().size());
    for (size_t i = 0; i < f.kv().size(); i++) {
        EXPECT_EQ(g.kv()[i].first, f.kv()[i].first);
        EXPECT_TRUE(g.kv()[i].second == f.kv()[i].second) << f.kv()[i].first;
    }
    std::filesystem::remove_all(dir);
}

TEST(Gguf, EveryTruncationAndCorruptionIsAnErrorNotACrash) {
    const std::string dir = test::temp_model_dir("gguf_bad");
    std::vector<std::vector<uint8_t>> datas;
    datas.reserve(8);
    sample_writer(&datas).write(dir + "/a.gguf");
    const std::string good = slurp(dir + "/a.gguf");
    size_t refused = 0;
    for (size_t n = 0; n < good.size(); n++) {  // every prefix
        try {
            GgufFile::parse((const uint8_t*)good.data(), n, "cut");
        } catch (const Error&) {
            refused++;
        }
    }
    // Only the cut at the very end of the last tensor's padding could still parse.
    EXPECT_GE(refused, good.size() - 32);
    // Every byte of the header flipped: parsed or refused, never anything else.
    const GgufFile f = GgufFile::parse((const uint8_t*)good.data(), good.size(), "ok");
    for (size_t i = 0; i < f.data_offset(); i++)
        for (uint8_t x : {0x01, 0x80, 0xff}) {
            std::string bad = good;
            bad[i] = (char)(bad[i] ^ x);
            try {
                GgufFile::parse((const uint8_t*)bad.data(), bad.size(), "flip");
            } catch (const Error&) {
            }
        }
    // The messages name what is wrong.
    std::string bad = good;
    bad[0] = 'X';
    EXPECT_THROW_MSG(GgufFile::parse((const uint8_t*)bad.data(), bad.size(), "m"), "GGUF magic");
    bad = good;
    bad[4] = 9;
    EXPECT_THROW_MSG(GgufFile::parse((const uint8_t*)bad.data(), bad.size(), "v"),
                     "GGUF version 9 is not supported");
    std::filesystem::remove_all(dir);
}

TEST(Gguf, QkRowOrderIsLlamaCppsAndInverts) {
    // One head of 8 rows: GGUF row 2i + s holds HF row s * 4 + i.
    std::vector<uint8_t> hf(16), g(16), back(16);
    for (int r = 0; r < 8; r++) hf[2 * r] = (uint8_t)r, hf[2 * r + 1] = 0xaa;
    gguf_permute_rows(hf.data(), g.data(), 8, 2, 1, true);
    const int expect[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    for (int r = 0; r < 8; r++) EXPECT_EQ(g[2 * r], expect[r]) << r;
    for (int heads : {1, 2, 3}) {
        const int rows = heads * 6;
        std::vector<uint8_t> a(rows * 3), b(rows * 3), c(rows * 3);
        for (size_t i = 0; i < a.size(); i++) a[i] = (uint8_t)i;
        gguf_permute_rows(a.data(), b.data(), rows, 3, heads, true);
        gguf_permute_rows(b.data(), c.data(), rows, 3, heads, false);
        EXPECT_EQ(a, c) << heads;
    }
}

// A char vocabulary of V symbols (printable ASCII from the space on, then U+0100...).
void write_char_vocab(const std::string& dir, int V) {
    json vocab = json::array();
    for (int i = 0; i < V; i++) {
        const int cp = i < 95 ? 32 + i : 0x100 + i;
        std::string s = cp < 0x80 ? std::string(1, (char)cp)
                                  : std::string{(char)(0xc0 | (cp >> 6)), (char)(0x80 | (cp & 0x3f))};
        vocab.push_back(s);
    }
    write_file_atomic(dir + "/vocab.json", vocab.dump());
}

class GgufFamily : public ::testing::TestWithParam<std::string> {};

// Each family's folder exported to GGUF: the engine on the file gives exactly the folder's logits
// (the same stored values, the same kernels), for F32 and BF16 files.
TEST_P(GgufFamily, ExportedFileHasTheFoldersLogits) {
    const std::string fam = GetParam();
    const json j = test::tiny_hf_config(fam);
    const auto ts = test::tiny_hf_tensors(j, 11);
    for (WType wt : {WType::f32, WType::bf16}) {
        const std::string dir = test::temp_model_dir("gguf_" + fam);
        test::write_hf_dir(dir, j, ts, wt);
        write_char_vocab(dir, (int)j["vocab_size"]);
        const std::string out = dir + "/m.gguf";
        write_gguf_model(dir, wt == WType::f32 ? GgmlType::f32 : GgmlType::bf16, out);
        HfModel a(dir), b(out);
        EXPECT_EQ(b.config().model_type, fam);
        EXPECT_EQ(b.config().moe_layer, a.config().moe_layer);
        std::vector<int32_t> ids = {3, 9, 27, 81, 5, 44, 96, 0};
        const int V = a.config().vocab_size;
        const float* pa = a.cache_feed(ids.data(), 8, true);
        std::vector<float> va(pa, pa + 8 * V);
        const float* pb = b.cache_feed(ids.data(), 8, true);
        std::vector<float> vb(pb, pb + 8 * V);
        for (size_t i = 0; i < va.size(); i++)
            ASSERT_NEAR(vb[i], va[i], 1e-6 * std::max(1.f, std::fabs(va[i])))
                << fam << " " << wtype_name(wt) << " at " << i;
        // And the tokenizer travels: the char vocabulary back from the metadata.
        auto tok = load_tokenizer(out);
        EXPECT_EQ(tok->kind(), "char");
        EXPECT_EQ(tok->decode(tok->encode("a b")), "a b");
        std::filesystem::remove_all(dir);
    }
}

// MOE_HUGEPAGES for one scope (restored, or unset, when it ends, also when a check throws).
struct HugePagesEnv {
    std::string old;
    bool had = false;
    explicit HugePagesEnv(const char* v) {
        if (const char* e = std::getenv("MOE_HUGEPAGES")) had = true, old = e;
        setenv("MOE_HUGEPAGES", v, 1);
    }
    ~HugePagesEnv() {
        if (had) setenv("MOE_HUGEPAGES", old.c_str(), 1);
        else unsetenv("MOE_HUGEPAGES");
    }
};

// MOE_HUGEPAGES=1 (io/file_map.h): the files copied into huge-page memory instead of mapped give
// the same bits, for a GGUF file (BF16, and Q8_0, whose copy is rewritten into the split layout)
// and a safetensors folder, prompt and decode; the model holds them as copies while it lives,
// and a GGUF opened only to be read (a tokenizer, a conversion) stays mapped.
TEST(GgufHugePages, CopyGivesTheMappedModelsBits) {
    json j = test::tiny_hf_config("mixtral");
    j["intermediate_size"] = 256;  // Q8_0 rows; the down products' 8 blocks run the 512-bit loop
    const std::string dir = test::temp_model_dir("gguf_huge");
    test::write_hf_dir(dir, j, test::tiny_hf_tensors(j, 12), WType::bf16);
    write_char_vocab(dir, (int)j["vocab_size"]);
    const std::string out = dir + "/m.gguf", out_q8 = dir + "/m.q8_0.gguf";
    write_gguf_model(dir, GgmlType::bf16, out);
    write_gguf_model(dir, GgmlType::q8_0, out_q8);
    std::vector<int32_t> ids = {3, 9, 27, 81, 5, 44, 96, 0};
    const int V = j["vocab_size"];
    const FileMapTotals before = file_map_totals();
    auto logits = [&](const std::string& path, bool huge) {
        HfModel m(path);
        const FileMapTotals now = file_map_totals();
        EXPECT_EQ(huge, now.huge > before.huge) << path;
        EXPECT_EQ(!huge, now.mapped > before.mapped) << path;
        if (path == out_q8) {
            // a copy's Q8_0 matrices are rewritten into the split layout (scales apart), a mapped
            // file's stay GGML blocks; the attention q/k (permuted into memory of the store's
            // own for arch llama) are split either way
            const HfConfig& c = m.config();
            const WeightView e = m.weights().get(c.expert_name(0, 1, 0), {c.expert_ff, c.hidden_size});
            EXPECT_EQ(huge, e.scales != nullptr) << path;
            const WeightView q = m.weights().get(
                "model.layers.0.self_attn.q_proj.weight", {c.n_heads * c.head_dim, c.hidden_size});
            EXPECT_NE(nullptr, q.scales) << path;
        }
        const float* p = m.cache_feed(ids.data(), 8, true);
        std::vector<float> all(p, p + 8 * V);
        const float* t = m.cache_feed(&ids[0], 1);  // one decoded token (the decode loops)
        all.insert(all.end(), t, t + V);
        return all;
    };
    for (const std::string& path : {out, out_q8, dir}) {
        std::vector<float> mapped, copied;
        {
            HugePagesEnv env("0");
            mapped = logits(path, false);
        }
        {
            HugePagesEnv env("1");
            copied = logits(path, true);
        }
        EXPECT_EQ(0, std::memcmp(mapped.data(), copied.data(), mapped.size() * 4)) << path;
    }
    {
        HugePagesEnv env("1");
        GgufFile f = GgufFile::open(out);  // read once: mapped whatever MOE_HUGEPAGES says
        EXPECT_EQ(file_map_totals().huge, before.huge);
        auto tok = load_tokenizer(out);
        EXPECT_EQ(file_map_totals().huge, before.huge);
    }
    EXPECT_EQ(file_map_totals().huge, before.huge);  // the copies went with their models
    EXPECT_EQ(file_map_totals().mapped, before.mapped);
    std::filesystem::remove_all(dir);
}

// The automatic choice (MOE_HUGEPAGES unset): small files are mapped (a copy gains nothing
// below 32 MiB), and so is a file larger than half the available memory; a bad value is refused
// with a message naming the variable.
TEST(GgufHugePages, AutoRuleAndBadValues) {
    {
        HugePagesEnv env("");
        EXPECT_FALSE(hugepage_copy_wanted(1 << 20));
        EXPECT_FALSE(hugepage_copy_wanted((size_t)1 << 50));  // 1 PiB: never fits
    }
    {
        HugePagesEnv env("1");
        EXPECT_TRUE(hugepage_copy_wanted(1 << 20));
    }
    {
        HugePagesEnv env("0");
        EXPECT_FALSE(hugepage_copy_wanted((size_t)64 << 20));
    }
    for (const char* bad : {"yes", "2", "on", " 1"}) {
        HugePagesEnv env(bad);
        try {
            hugepage_copy_wanted((size_t)64 << 20);
            ADD_FAILURE() << "MOE_HUGEPAGES=" << bad << " was accepted";
        } catch (const std::exception& e) {
            EXPECT_NE(std::string(e.what()).find("MOE_HUGEPAGES"), std::string::npos) << e.what();
        }
    }
}

// `moe quantize --type int4` (U8 nibbles + F16 scales, the split layout) and `moe convert --to
// gguf --type q4_0` (GGML's blocks) quantise the same values the same way: each family's int4
// folder gives the Q4_0 file's logits bit for bit, the file mapped (GGML blocks) or copied into
// huge pages (rewritten into the split layout), prompt and one decoded token.
TEST_P(GgufFamily, Int4FolderRunsAsTheQ4File) {
    const std::string fam = GetParam();
    json j = test::tiny_hf_config(fam);  // every matrix in whole blocks of 32
    if (j.contains("moe_intermediate_size")) j["moe_intermediate_size"] = 64;
    j["intermediate_size"] = 64;
    if (j.contains("shared_expert_intermediate_size")) j["shared_expert_intermediate_size"] = 32;
    if (j.contains("head_dim")) j["head_dim"] = 16;
    const std::string dir = test::temp_model_dir("gguf_int4_" + fam);
    test::write_hf_dir(dir, j, test::tiny_hf_tensors(j, 13), WType::f32);
    write_char_vocab(dir, (int)j["vocab_size"]);
    const std::string q4 = dir + "/q4.gguf", int4 = dir + "/int4";
    write_gguf_model(dir, GgmlType::q4_0, q4);
    HfExportOptions o;
    o.type = "int4";
    const HfExportResult r = export_hf_folder(dir, int4, o);
    EXPECT_GT(r.n_quantized, 0);
    std::vector<int32_t> ids = {3, 9, 27, 81, 5, 44, 96, 0};
    const int V = j["vocab_size"];
    auto logits = [&](const std::string& path, const char* huge) {
        HugePagesEnv env(huge);
        HfModel m(path);
        const float* p = m.cache_feed(ids.data(), 8, true);
        std::vector<float> v(p, p + 8 * V);
        const float* t = m.cache_feed(&ids[1], 1);
        v.insert(v.end(), t, t + V);
        return v;
    };
    const std::vector<float> want = logits(q4, "0");
    for (const auto& [path, huge] : {std::pair<std::string, const char*>{q4, "1"},
                                     {int4, "0"}, {int4, "1"}}) {
        const std::vector<float> got = logits(path, huge);
        EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * 4))
            << fam << ": " << path << " MOE_HUGEPAGES=" << huge;
    }
    std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Gguf, GgufFamily,
                         ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"));

// Q8_0 GGUF (every matrix in whole blocks of 32): the engine runs the GGML blocks in place. Its
// logits are those of an f32 folder holding the same dequantised values, up to the activation
// quantisation of q8's small-M path (an expert with fewer than 4 tokens: q8_gemm.h), 2e-2 of
// the largest logit; a wrong block or row layout would be off by the logits' own size.
// Q4_0 likewise (the same activation quantisation; the weights' own rounding is in both sides).
class GgufQuant : public ::testing::TestWithParam<GgmlType> {};

TEST_P(GgufQuant, FileRunsInTheEngine) {
    const GgmlType gt = GetParam();
    const bool q4 = gt == GgmlType::q4_0;
    json j = test::tiny_hf_config("mixtral");
    j["intermediate_size"] = 32;
    const std::string dir = test::temp_model_dir(q4 ? "gguf_q4" : "gguf_q8"), deq = dir + "/deq";
    std::vector<test::HfTensor> ts = test::tiny_hf_tensors(j, 5);
    test::write_hf_dir(dir, j, ts, WType::f32);
    write_char_vocab(dir, (int)j["vocab_size"]);
    write_gguf_model(dir, gt, dir + "/q.gguf");
    for (auto& t : ts) {  // what the file holds, as f32
        const bool router = t.name.size() > 12 && t.name.compare(t.name.size() - 12, 12, ".gate.weight") == 0;
        if (t.shape.size() != 2 || router) continue;
        std::vector<uint8_t> q((size_t)ggml_row_bytes(gt, (uint64_t)t.shape[1]));
        for (int64_t r = 0; r < t.shape[0]; r++) {
            float* row = &t.data[(size_t)(r * t.shape[1])];
            if (q4) {
                quantize_row_q4_0(row, t.shape[1], q.data());
                dequantize_row_q4_0(q.data(), t.shape[1], row);
            } else {
                quantize_row_q8_0(row, t.shape[1], q.data());
                dequantize_row_q8_0(q.data(), t.shape[1], row);
            }
        }
    }
    std::filesystem::create_directories(deq);
    test::write_hf_dir(deq, j, ts, WType::f32);
    const GgufFile f = GgufFile::open(dir + "/q.gguf");
    EXPECT_EQ(f.tensor("blk.0.ffn_up_exps.weight")->type, gt);
    EXPECT_EQ(f.tensor("token_embd.weight")->type, gt);
    EXPECT_EQ(f.tensor("blk.0.ffn_gate_inp.weight")->type, GgmlType::f32);
    HfModel a(deq), b(dir + "/q.gguf");
    const std::vector<int32_t> ids = {3, 9, 27, 81, 5, 44};
    const int V = a.config().vocab_size, n = (int)ids.size();
    const float* pa = a.cache_feed(ids.data(), n, true);
    std::vector<float> va(pa, pa + n * V);
    const float* pb = b.cache_feed(ids.data(), n, true);
    double mx = 0;
    for (float v : va) mx = std::max(mx, (double)std::fabs(v));
    for (int i = 0; i < n * V; i++) ASSERT_NEAR(pb[i], va[i], 2e-2 * mx) << "at " << i;
    std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Gguf, GgufQuant, ::testing::Values(GgmlType::q8_0, GgmlType::q4_0),
                         [](const auto& info) { return std::string(ggml_type_name(info.param)); });

TEST(Gguf, RefusesWhatItCannotHoldOrRead) {
    const json j = test::tiny_hf_config("mixtral");  // expert width 24: not whole Q8_0 blocks
    const std::string dir = test::temp_model_dir("gguf_refuse");
    test::write_hf_dir(dir, j, test::tiny_hf_tensors(j, 3), WType::f32);
    write_char_vocab(dir, (int)j["vocab_size"]);
    EXPECT_THROW_MSG(write_gguf_model(dir, GgmlType::q8_0, dir + "/q.gguf"),
                     "not a multiple of 32");
    EXPECT_THROW_MSG(write_gguf_model(dir, GgmlType::q4_0, dir + "/q.gguf"),
                     "--type q4_0: tensor");
    EXPECT_FALSE(file_exists(dir + "/q.gguf"));
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
