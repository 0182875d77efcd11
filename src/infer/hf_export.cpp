// A model -> a Hugging Face folder in a chosen precision (moe quantize, moe convert --to hf).
// The source is loaded by the engine first (every tensor's name, shape and dtype checked), then
// each shard is streamed to disk tensor by tensor in row chunks: memory stays a few MB whatever
// the model's size, and nothing is written before the source has been checked. A .gguf source is
// read by the engine's own GGUF reader (WeightStore::from_gguf), its metadata written back as
// config.json and its vocabulary as tokenizer files (save_gguf_tokenizer).
#include "moe/hf_export.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "kernels/q8_gemm.h"
#include "kernels/typed_gemm.h"
#include "moe/checked.h"
#include "moe/checkpoint.h"
#include "moe/config.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/gguf.h"
#include "moe/hf_model.h"
#include "moe/tokenizer.h"

namespace moe {

using json = nlohmann::json;

uint64_t parse_byte_size(const std::string& s, const std::string& what) {
    size_t i = 0;
    while (i < s.size() && (std::isdigit((unsigned char)s[i]) || s[i] == '.')) i++;
    std::string num = s.substr(0, i), unit = s.substr(i);
    for (auto& ch : unit) ch = (char)std::tolower((unsigned char)ch);
    double mult = 0;
    if (unit.empty() || unit == "b") mult = 1;
    if (unit == "kb") mult = 1e3;
    if (unit == "mb") mult = 1e6;
    if (unit == "gb") mult = 1e9;
    if (unit == "tb") mult = 1e12;
    if (unit == "kib") mult = 1024.0;
    if (unit == "mib") mult = 1024.0 * 1024;
    if (unit == "gib") mult = 1024.0 * 1024 * 1024;
    char* end = nullptr;
    const double n = num.empty() ? 0 : std::strtod(num.c_str(), &end);
    if (num.empty() || *end != '\0' || mult == 0)
        usage_fail("{}: '{}' is not a size; give e.g. 2GB, 500MB, 1.5GiB or a number of bytes",
                   what, s);
    const double v = n * mult;
    if (!(v >= 1000 && v <= 1e13))
        usage_fail("{}: {} is outside [1KB, 10TB]; give e.g. 2GB", what, s);
    return (uint64_t)v;
}

namespace {

// A moe.cpp checkpoint of the Mixtral family runs in the engine only if it computes what
// Mixtral computes: softmax top-k renormalised, SwiGLU experts in every layer, no shared expert.
void check_engine_runs(const json& j, const std::string& where) {
    const json& o = j["moe_cpp"];
    if (!o.is_object()) fail("{}: key 'moe_cpp' must be an object; restore config.json", where);
    auto bad = [&](const char* key, const std::string& val, const char* need) {
        fail(
            "{}: moe_cpp '{}' is {}; a Hugging Face Mixtral folder holds only {} (train with "
            "those settings to export)",
            where, key, val, need);
    };
    auto str = [&](const char* k, const char* def) {
        return o.contains(k) && o[k].is_string() ? o[k].get<std::string>() : std::string(def);
    };
    auto num = [&](const char* k, double def) {
        return o.contains(k) && o[k].is_number() ? o[k].get<double>() : def;
    };
    if (str("router", "topk") != "topk") bad("router", str("router", ""), "top-k routing");
    if (str("activation", "swiglu") != "swiglu")
        bad("activation", str("activation", ""), "SwiGLU experts");
    if (num("moe_every", 1) != 1)
        bad("moe_every", o["moe_every"].dump(), "an MoE block in every layer");
    if (num("n_shared_experts", 0) != 0)
        bad("n_shared_experts", o["n_shared_experts"].dump(), "routed experts only");
    if (o.contains("renormalize") && o["renormalize"].is_boolean() && !o["renormalize"])
        bad("renormalize", "false", "renormalised top-k weights");
    if (str("score", "softmax") != "softmax") bad("score", str("score", ""), "softmax scores");
    if (num("router_temperature", 1) != 1)
        bad("router_temperature", o["router_temperature"].dump(), "router temperature 1");
}

bool is_router(const std::string& name) {
    auto ends = [&](const char* s) {
        const size_t n = std::strlen(s);
        return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
    };
    return ends(".gate.weight") || ends("shared_expert_gate.weight");
}

const char* dtype_of(WType t) {
    return t == WType::q8_0 ? "I8" : t == WType::q4_0 ? "U8" : wtype_name(t);
}

struct OutTensor {
    std::string name;  // in the file
    std::vector<int64_t> shape;
    WType type;           // f32 / bf16 / f16, or q8_0: the I8 values (q4_0: the U8 nibbles)
    bool scales = false;  // the F16 scales of the q8_0 (q4_0) tensor `of`
    WeightView src;
    uint64_t bytes = 0;
    int shard = 0;
    size_t elem() const { return scales ? 2 : type == WType::q4_0 ? 1 : wtype_size(type); }
    // Bytes of one row in the file (int4: two values a byte; scales: one fp16 per 32 values).
    size_t row_bytes() const {
        const size_t K = (size_t)src.cols;
        return scales ? K / 32 * 2 : type == WType::q4_0 ? K / 2 : K * wtype_size(type);
    }
    bool quantized() const { return type == WType::q8_0 || type == WType::q4_0; }
};

// Rows r0 .. r0 + n - 1 of t in its output encoding, appended to out.
void encode_rows(const OutTensor& t, int64_t r0, int64_t n, std::string& out) {
    const int64_t K = t.src.cols;
    std::vector<float> rows((size_t)(n * K));
    widen_rows(rows.data(), t.src, r0, n);
    const int64_t bad = first_non_finite(rows.data(), rows.size());
    if (bad >= 0)
        fail(
            "tensor {}: a non-finite value at row {}, column {}; the source weights are "
            "damaged",
            t.name, r0 + bad / K, bad % K);
    const size_t at = out.size();
    const size_t per_row = t.row_bytes();
    out.resize(at + per_row * (size_t)n);
    uint8_t* o = (uint8_t*)&out[at];
#pragma omp parallel for schedule(static) if (n * K >= (1 << 16))
    for (int64_t r = 0; r < n; r++) {
        const float* x = &rows[(size_t)(r * K)];
        uint8_t* dst = o + per_row * (size_t)r;
        if (t.type == WType::q8_0) {
            int8_t q[32];
            for (int64_t b = 0; b < K / 32; b++) {
                const uint16_t d =
                    quantize_block_q8_0(x + b * 32, t.scales ? q : (int8_t*)dst + b * 32);
                if (t.scales) std::memcpy(dst + 2 * b, &d, 2);
            }
        } else if (t.type == WType::q4_0) {  // a block's 16 bytes of nibbles, as GGML's block_q4_0
            uint8_t qs[16];
            for (int64_t b = 0; b < K / 32; b++) {
                const uint16_t d = quantize_block_q4_0(x + b * 32, t.scales ? qs : dst + b * 16);
                if (t.scales) std::memcpy(dst + 2 * b, &d, 2);
            }
        } else if (t.type == WType::f32) {
            std::memcpy(dst, x, (size_t)K * 4);
        } else {
            for (int64_t k = 0; k < K; k++) {
                const uint16_t h = t.type == WType::bf16 ? f32_to_bf16(x[k]) : f32_to_f16(x[k]);
                std::memcpy(dst + 2 * k, &h, 2);
            }
        }
    }
    // Values an F16 (or a scale: Q8_0's max|x| / 127, Q4_0's max|x| / 8) cannot hold are
    // refused, not made inf.
    const float limit = !t.scales ? 65504.f : t.type == WType::q4_0 ? 65504.f * 8 : 65504.f * 127;
    if (t.type == WType::f16 || t.scales)
        for (int64_t i = 0; i < n * K; i++)
            if (std::fabs(rows[(size_t)i]) > limit)
                fail(
                    "tensor {}: |value| {} at row {} is too large for {}; use --type/--dtype "
                    "bf16 or f32",
                    t.name, std::fabs(rows[(size_t)i]), r0 + i / K,
                    !t.scales ? "F16" : t.type == WType::q4_0 ? "int4's fp16 scales" : "int8's fp16 scales");
}

struct File {
    std::FILE* f = nullptr;
    std::string path;
    void write(const void* p, size_t n) {
        if (n && std::fwrite(p, 1, n, f) != n)
            fail("{}: cannot write: {}; check the free disk space", path, std::strerror(errno));
    }
};

// One shard: header (data widest element first, so each tensor stays aligned), then the data
// streamed in chunks of rows.
void write_shard(const std::string& path, std::vector<const OutTensor*> ts) {
    std::stable_sort(ts.begin(), ts.end(),
                     [](const OutTensor* a, const OutTensor* b) { return a->elem() > b->elem(); });
    json header = json::object();
    header["__metadata__"] = {{"format", "pt"}};
    uint64_t off = 0;
    for (const OutTensor* t : ts) {
        header[t->name] = {{"dtype", t->scales ? "F16" : dtype_of(t->type)},
                           {"shape", t->shape},
                           {"data_offsets", {off, off + t->bytes}}};
        off += t->bytes;
    }
    std::string h = header.dump();
    while ((8 + h.size()) % 8) h += ' ';
    File f{std::fopen(path.c_str(), "wb"), path};
    if (!f.f) fail("{}: cannot create: {}; check the folder", path, std::strerror(errno));
    const uint64_t hlen = h.size();
    f.write(&hlen, 8);
    f.write(h.data(), h.size());
    std::string buf;
    for (const OutTensor* t : ts) {
        const int64_t K = t->src.cols, rows = t->src.rows;
        const int64_t chunk = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(1, K));
        for (int64_t r = 0; r < rows; r += chunk) {
            buf.clear();
            encode_rows(*t, r, std::min(chunk, rows - r), buf);
            f.write(buf.data(), buf.size());
        }
    }
    const bool ok = std::fflush(f.f) == 0 && ::fsync(fileno(f.f)) == 0;
    std::fclose(f.f);
    if (!ok) fail("{}: cannot write: {}; check the free disk space", path, std::strerror(errno));
}

}  // namespace

HfExportResult export_hf_folder(const std::string& src, const std::string& dst,
                                const HfExportOptions& o) {
    if (o.type != "f32" && o.type != "bf16" && o.type != "f16" && o.type != "int8" &&
        o.type != "int4")
        usage_fail("--type: '{}' is not allowed (expected one of: f32 | bf16 | f16 | int8 | int4)",
                   o.type);
    std::string dir = src;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    const bool gguf = is_gguf_file(dir);
    if (!gguf && !dir_exists(dir))
        fail("{}: no such folder or .gguf file; give a Hugging Face model folder, a moe.cpp "
             "checkpoint or a .gguf",
             src);
    if (!gguf && !file_exists(dir + "/config.json")) dir = resolve_checkpoint_dir(dir);  // best/
    std::string out = dst;
    while (out.size() > 1 && out.back() == '/') out.pop_back();
    if (std::filesystem::exists(out))
        fail("{}: already exists; give a new folder (an existing model is never overwritten)", dst);

    // The source, checked whole by the engine before anything is written. A .gguf: the model
    // the engine reads from it (HF tensor names, q/k rows back in HF order), config.json made
    // from its metadata.
    HfConfig c;
    json j;
    std::unique_ptr<WeightStore> source;
    std::shared_ptr<const GgufFile> gf;
    if (gguf) {
        gf = std::make_shared<const GgufFile>(GgufFile::open(dir));
        source = WeightStore::from_gguf(gf, &c);
        j = hf_config_to_json(c, dir);
    } else {
        const std::string cfg_path = dir + "/config.json";
        j = read_json_file(cfg_path, "a model config");
        if (j.is_object() && j.contains("moe_cpp") && j.value("model_type", "") == "mixtral")
            check_engine_runs(j, cfg_path);
        c = hf_config_from_json(j, cfg_path);
        source = std::make_unique<WeightStore>(dir);
    }
    HfModel model(c, std::move(source), dir);
    WeightStore& store = model.weights();

    const WType want = o.type == "f32"    ? WType::f32
                       : o.type == "bf16" ? WType::bf16
                       : o.type == "f16"  ? WType::f16
                       : o.type == "int8" ? WType::q8_0
                                          : WType::q4_0;
    const bool quantize = want == WType::q8_0 || want == WType::q4_0;
    std::vector<OutTensor> ts;
    HfExportResult res;
    res.bytes_in = store.mapped_bytes();
    for (auto& [name, shape] : hf_tensor_shapes(c)) {
        const WeightView v = store.get(name, shape);
        // Vectors and the router are never narrowed: they stay as stored (int8 ones widen to F32).
        const WType kept = v.type == WType::q8_0 || v.type == WType::q4_0 ? WType::f32 : v.type;
        const bool small = shape.size() == 1 || is_router(name);
        OutTensor t{name, shape, want, false, v};
        if (small) t.type = want == WType::f32 ? WType::f32 : kept;
        if (quantize && !small && !hf_q8_eligible(name, shape)) t.type = kept;
        const int64_t rows = shape.size() == 1 ? 1 : shape[0], K = shape.back();
        t.bytes = (uint64_t)rows * t.row_bytes();
        if (t.type == WType::q4_0) t.shape = {rows, K / 2};  // as stored
        ts.push_back(t);
        res.n_tensors++;
        if (t.quantized()) {
            OutTensor s{hf_q8_scale_name(name), {rows, K / 32}, t.type, true, v};
            s.bytes = (uint64_t)rows * s.row_bytes();
            ts.push_back(s);
            res.n_quantized++;
        }
    }
    // Shards: tensors in order, a new file when the next would pass the size (a tensor larger
    // than the size gets a file of its own); scales stay with their values.
    int shard = 0;
    uint64_t in_shard = 0;
    for (size_t i = 0; i < ts.size(); i++) {
        uint64_t b = ts[i].bytes;
        const bool pair = ts[i].quantized() && !ts[i].scales;
        if (pair) b += ts[i + 1].bytes;
        if (o.shard_bytes && in_shard > 0 && in_shard + b > o.shard_bytes) {
            shard++;
            in_shard = 0;
        }
        in_shard += b;
        ts[i].shard = shard;
        if (pair) ts[++i].shard = shard;
    }
    const int n_files = shard + 1;
    res.n_files = n_files;

    const std::string tmp = out + ".tmp-" + std::to_string(getpid());
    std::filesystem::remove_all(tmp);
    make_dirs(tmp);
    try {
        // A .gguf's vocabulary first: one the folder cannot hold is refused before the weights
        // are written.
        if (gf) save_gguf_tokenizer(*gf, tmp);
        json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
        uint64_t total = 0;
        for (int s = 0; s < n_files; s++) {
            const std::string file =
                n_files == 1 ? "model.safetensors"
                             : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, n_files);
            std::vector<const OutTensor*> mine;
            for (auto& t : ts)
                if (t.shard == s) {
                    mine.push_back(&t);
                    index["weight_map"][t.name] = file;
                    total += t.bytes;
                }
            write_shard(tmp + "/" + file, mine);
        }
        res.bytes_out = total;
        if (n_files > 1) {
            index["metadata"]["total_size"] = total;
            write_file_atomic(tmp + "/model.safetensors.index.json", index.dump(2));
        }
        // config.json: the model as the engine runs it (moe.cpp's training block dropped).
        j.erase("moe_cpp");
        j.erase("moe_cpp_quantization");
        if (want == WType::q8_0)
            j["moe_cpp_quantization"] = {
                {"type", "int8"},
                {"format", "q8_0"},
                {"block_size", 32},
                {"scale_dtype", "F16"},
                {"scale_suffix", "_scale"},
                {"layout",
                 "<name> I8 [rows, cols] and <name>_scale F16 [rows, cols/32]; "
                 "value = scale * int8 per block of 32 along a row"}};
        else if (want == WType::q4_0)
            j["moe_cpp_quantization"] = {
                {"type", "int4"},
                {"format", "q4_0"},
                {"block_size", 32},
                {"scale_dtype", "F16"},
                {"scale_suffix", "_scale"},
                {"layout",
                 "<name> U8 [rows, cols/2] and <name>_scale F16 [rows, cols/32]; block b of a "
                 "row is bytes 16b..16b+15, byte j = q_j | q_(j+16) << 4 (GGML's block_q4_0 "
                 "nibbles); value = scale * (q - 8)"}};
        else
            j["torch_dtype"] = o.type == "f32"    ? "float32"
                               : o.type == "bf16" ? "bfloat16"
                                                  : "float16";
        write_file_atomic(tmp + "/config.json", j.dump(2));
        for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                              "special_tokens_map.json", "generation_config.json", "vocab.json",
                              "merges.txt", "added_tokens.json"})
            if (!gf && file_exists(dir + "/" + f))
                write_file_atomic(tmp + "/" + f, read_file(dir + "/" + f));
        fsync_dir(tmp);
        if (std::rename(tmp.c_str(), out.c_str()) != 0)
            fail("{}: cannot rename {} into place: {}", out, tmp, std::strerror(errno));
        const auto parent = std::filesystem::path(out).parent_path().string();
        fsync_dir(parent.empty() ? "." : parent);
    } catch (...) {
        std::error_code ec;
        std::filesystem::remove_all(tmp, ec);
        throw;
    }
    return res;
}

}  // namespace moe
