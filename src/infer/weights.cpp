// The mapped tensor files of a Hugging Face model directory. Each shard is mmap'ed read-only
// once; a tensor is a pointer into its mapping. Headers are checked with the same reader as
// moe.cpp's checkpoints (read_safetensors_header: offsets inside the file, sizes matching shapes),
// so a truncated shard is an error at start-up rather than a SIGBUS in the middle of a token.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "kernels/q8_gemm.h"
#include "kernels/typed_gemm.h"
#include "moe/checked.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/hf_model.h"
#include "moe/safetensors.h"
#include "infer/weight_store_impl.h"

namespace moe {

using json = nlohmann::json;

std::map<std::string, std::string> parse_safetensors_index(const std::string& text,
                                                           const std::string& where) {
    const json j = parse_json_text(text, where, "a safetensors index");
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        fail("{}: has no 'weight_map' object; give the index written with the shards", where);
    std::map<std::string, std::string> out;
    std::set<std::string> files;
    for (auto& [name, v] : j["weight_map"].items()) {
        const std::string f = checked_str(v, where + ": weight_map '" + name + "'");
        if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..")
            fail("{}: weight_map '{}': '{}' is not a file name in the folder; fix the index", where,
                 name, f);
        out[name] = f;
        files.insert(f);
        if (files.size() > 100000) fail("{}: names more than 100000 shards; fix the index", where);
    }
    if (out.empty()) fail("{}: 'weight_map' is empty; give the index of the shards", where);
    return out;
}

// A file's size in bytes, 0 where it cannot be read (map_file reports that case itself).
static size_t file_bytes(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && st.st_size > 0 ? (size_t)st.st_size : 0;
}

WeightStore::WeightStore(const std::string& dir, bool model_weights)
    : impl_(std::make_unique<Impl>()) {
    impl_->dir = dir;
    const std::string single = dir + "/model.safetensors";
    const std::string index = dir + "/model.safetensors.index.json";
    if (file_exists(index)) {
        const std::map<std::string, std::string> where =
            parse_safetensors_index(read_file(index), index);
        std::set<std::string> files;  // each shard once, in name order
        for (auto& [name, f] : where) files.insert(f);
        size_t model_bytes = 0;  // the shards together decide mapped or copied (io/file_map.h)
        for (auto& f : files) {
            const std::string p = dir + "/" + f;
            if (!file_exists(p))
                fail("{}: names shard {}, which is missing; copy every shard of the model", index,
                     f);
            model_bytes += file_bytes(p);
        }
        const bool copy = model_weights && hugepage_copy_wanted(model_bytes);
        for (auto& f : files) impl_->map_file(dir + "/" + f, copy);
        for (auto& [name, f] : where) {
            auto it = impl_->tensors.find(name);
            if (it == impl_->tensors.end() || impl_->maps[it->second.file].path != dir + "/" + f)
                fail("{}: names tensor {} in {}, but that shard does not hold it; the index and "
                     "the shards do not match",
                     index, name, f);
        }
        for (auto& [name, loc] : impl_->tensors)
            if (!where.count(name))
                fail("{}: holds tensor {}, which the index {} does not name; the index and the "
                     "shards do not match",
                     impl_->maps[loc.file].path, name, index);
    } else if (file_exists(single)) {
        impl_->map_file(single, model_weights && hugepage_copy_wanted(file_bytes(single)));
    } else {
        fail("{}: has neither model.safetensors nor model.safetensors.index.json; give a Hugging "
             "Face model folder",
             dir);
    }
}

WeightStore::WeightStore() : impl_(std::make_unique<Impl>()) {}

WeightStore::~WeightStore() = default;

std::unique_ptr<WeightStore> WeightStore::random(const HfConfig& c, WType t, uint64_t seed) {
    auto shapes = hf_tensor_shapes(c);
    // Each tensor's type: q8_0 (q4_0) only where `moe quantize` would put int8, the rest F32.
    auto type_of = [&](const std::string& name, const std::vector<int64_t>& shape) {
        if (t != WType::q8_0 && t != WType::q4_0) return t;
        return hf_q8_eligible(name, shape) ? t : WType::f32;
    };
    auto size_of = [&](const std::string& name, const std::vector<int64_t>& shape) {
        const int64_t rows = shape.size() == 1 ? 1 : shape[0];
        return (uint64_t)rows * wtype_row_bytes(type_of(name, shape), shape.back());
    };
    uint64_t bytes = 0;
    for (auto& [name, shape] : shapes) bytes += (size_of(name, shape) + 63) / 64 * 64;
    check_fits_in_memory((double)bytes, fmt::format("random {} weights", wtype_name(t)),
                         "choose a smaller shape or a narrower type");
    std::unique_ptr<WeightStore> ws(new WeightStore());
    Impl& m = *ws->impl_;
    m.dir = "(random weights)";
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("random weights: cannot map {} bytes", bytes);
    madvise(p, bytes, MADV_HUGEPAGE);  // as a loaded model's copy (io/file_map.h); advice only
    Mapping mp;
    mp.path = m.dir;
    mp.base = (const uint8_t*)p;
    mp.size = bytes;
    mp.data_start = 0;
    m.maps.push_back(mp);
    uint64_t off = 0, ti = 0;
    for (auto& [name, shape] : shapes) {
        const WType tt = type_of(name, shape);
        const uint64_t tensor_seed = seed + (ti++ << 40);  // the same values whatever the type
        const int64_t rows = shape.size() == 1 ? 1 : shape[0], cols = shape.back();
        StHeaderEntry e;
        e.dtype = wtype_name(tt);  // "Q8_0": GGML blocks, a dtype only this store has
        e.shape = Shape(shape);
        e.begin = off;
        e.end = off + size_of(name, shape);
        m.tensors[name] = {0, e};
        // Cheap uniform values in +-0.05 (a hash of the index: parallel, reproducible); norm
        // weights 1. What matters here is the bytes moved, not the values.
        const bool norm = name.find("norm") != std::string::npos;
        auto value = [&](uint64_t i) {
            uint64_t h = (tensor_seed + i) * 0x9e3779b97f4a7c15ULL;
            h ^= h >> 31;
            h *= 0xbf58476d1ce4e5b9ULL;
            h ^= h >> 29;
            return norm ? 1.0f : ((float)(h >> 40) / (float)(1 << 24) - 0.5f) * 0.1f;
        };
        uint8_t* dst = (uint8_t*)p + off;
        const size_t row_bytes = wtype_row_bytes(tt, cols);
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16))
        for (int64_t r = 0; r < rows; r++) {
            uint8_t* o = dst + (size_t)r * row_bytes;
            const uint64_t i0 = (uint64_t)(r * cols);
            if (tt == WType::q8_0 || tt == WType::q4_0) {
                std::vector<float> row((size_t)cols);
                for (int64_t k = 0; k < cols; k++) row[k] = value(i0 + k);
                if (tt == WType::q8_0) quantize_row_q8_0(row.data(), cols, o);
                else quantize_row_q4_0(row.data(), cols, o);
            } else if (tt == WType::f32) {
                for (int64_t k = 0; k < cols; k++) {
                    const float v = value(i0 + k);
                    std::memcpy(o + 4 * k, &v, 4);
                }
            } else {
                for (int64_t k = 0; k < cols; k++) {
                    const float v = value(i0 + k);
                    const uint16_t h = tt == WType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
                    std::memcpy(o + 2 * k, &h, 2);
                }
            }
        }
        off += (size_of(name, shape) + 63) / 64 * 64;
    }
    m.split_blocks(0);  // as a GGUF's Q8_0 / Q4_0 copied into huge pages
    return ws;
}

// m795's q8_0 decode at 2 threads, alternated rounds (session 10): the `moe quantize --type int8`
// folder (split) with the 512-bit loop at 65-73% of the bandwidth bound, the same weights in
// GGML blocks (the GGUF) at 62-63% with the 256-bit loop and 56-59% with a 512-bit loop that
// assembles two blocks from two 256-bit loads.
void WeightStore::Impl::split_blocks(int file) {
    std::set<uint64_t> done;  // begin offsets already rewritten
    Mapping& mp = maps[file];
    for (auto& [name, loc] : tensors) {
        StHeaderEntry& e = loc.entry;
        const bool q4 = e.dtype == "Q4_0";
        if (loc.file != file || (e.dtype != "Q8_0" && !q4) || e.shape.dims.size() != 2) continue;
        if (done.insert(e.begin).second)
            ggml_blocks_to_split(q4 ? WType::q4_0 : WType::q8_0,
                                 (uint8_t*)mp.base + mp.data_start + e.begin, e.shape.dims[0],
                                 e.shape.dims[1]);
        e.dtype = q4 ? kQ4SplitDtype : kQ8SplitDtype;
    }
}

bool WeightStore::holds_dtype(const std::string& dtype) const {
    for (const auto& [name, loc] : impl_->tensors)
        if (loc.entry.dtype == dtype) return true;
    return false;
}

bool WeightStore::has(const std::string& name) const { return impl_->tensors.count(name) != 0; }

static std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

WeightView WeightStore::get(const std::string& name, const std::vector<int64_t>& shape) {
    auto it = impl_->tensors.find(name);
    if (it == impl_->tensors.end())
        fail("{}: tensor {} is missing; the folder's weights do not match its config.json",
             impl_->dir, name);
    const Mapping& m = impl_->maps[it->second.file];
    const StHeaderEntry& e = it->second.entry;
    std::vector<int64_t> got(e.shape.dims.begin(), e.shape.dims.end());
    // int8 (I8) and int4 (U8) hold only matrices of whole 32-blocks; int4 two values a byte, so a
    // matrix [rows, cols] is stored [rows, cols / 2]
    const bool int4 = e.dtype == "U8";
    if (int4 || e.dtype == "I8") {
        const char* kind = int4 ? "int4 (U8)" : "int8 (I8)";
        if (shape.size() != 2)
            fail("{}: tensor {} is {}, but it is a vector; only matrices are quantised (norms and "
                 "biases stay float): re-run moe quantize",
                 m.path, name, kind);
        if (shape[1] % 32 != 0)
            fail("{}: tensor {} is {} with {} columns, not a multiple of the block size 32; keep "
                 "it in a float type",
                 m.path, name, kind, shape[1]);
    }
    if (int4 ? got != std::vector<int64_t>{shape[0], shape[1] / 2} : got != shape)
        fail("{}: tensor {}: shape {} but config.json implies {}{}; the weights and config.json "
             "do not match",
             m.path, name, shape_str(got), shape_str(shape), int4 ? " (int4: [rows, cols / 2])" : "");
    WeightView w;
    w.rows = shape.size() == 1 ? 1 : shape[0];
    w.cols = shape.back();
    const uint64_t at = m.data_start + e.begin;
    if (e.dtype == "F32")
        w.type = WType::f32;
    else if (e.dtype == "BF16")
        w.type = WType::bf16;
    else if (e.dtype == "F16")
        w.type = WType::f16;
    else if (e.dtype == "Q8_0")  // GGML blocks (random weights)
        w.type = WType::q8_0;
    else if (e.dtype == "Q4_0")
        w.type = WType::q4_0;
    else if (e.dtype == kQ8SplitDtype)
        w.type = WType::q8_0, w.scales = m.base + at + (size_t)w.rows * (size_t)w.cols;
    else if (e.dtype == kQ4SplitDtype)
        w.type = WType::q4_0, w.scales = m.base + at + (size_t)w.rows * (size_t)w.cols / 2;
    else if (e.dtype == "I8" || int4)
        return get_quantized(name, shape, m.base + at, int4 ? WType::q4_0 : WType::q8_0);
    else
        fail("{}: tensor {}: dtype {} is not a weight type; moe.cpp reads F32, BF16, F16 and I8 "
             "(with scales)",
             m.path, name, e.dtype);
    // Safetensors does not promise alignment; the kernels read rows with unaligned loads, but a
    // 2-byte type must at least sit on an even address (a Q8_0 block starts with its fp16 d).
    const size_t align = w.type == WType::q8_0 || w.type == WType::q4_0 ? 2 : wtype_size(w.type);
    if (at % align != 0)
        fail("{}: tensor {} starts at byte {}, not a multiple of its {}-byte elements; rewrite "
             "the file with a standard writer",
             m.path, name, at, align);
    w.data = m.base + at;
    impl_->used.insert(name);
    return w;
}

// An int8 matrix (moe quantize --type int8): I8 values [rows, cols] and F16 scales
// <name>_scale [rows, cols / 32], one per block of 32 along a row: a q8_0 view in the split
// layout, pointing into both mappings (docs/formats.md). int4 (t = q4_0, `--type int4`): U8
// nibbles [rows, cols / 2] (Q4_0's 16 bytes per block) and the same scales: a q4_0 view.
WeightView WeightStore::get_quantized(const std::string& name, const std::vector<int64_t>& shape,
                                      const void* values, WType t) {
    const char* kind = t == WType::q4_0 ? "int4 (U8)" : "int8 (I8)";
    const std::string sn = hf_q8_scale_name(name);
    auto it = impl_->tensors.find(sn);
    if (it == impl_->tensors.end())
        fail("{}: tensor {} is {} but its scales {} are missing; a quantised checkpoint needs "
             "both: re-run moe quantize",
             impl_->dir, name, kind, sn);
    const Mapping& sm = impl_->maps[it->second.file];
    const StHeaderEntry& se = it->second.entry;
    const std::vector<int64_t> want = {shape[0], shape[1] / 32};
    std::vector<int64_t> got(se.shape.dims.begin(), se.shape.dims.end());
    if (se.dtype != "F16" || got != want)
        fail("{}: scales {} of {} tensor {}: {} {} but F16 {} is needed (one per 32 values of a "
             "row); re-run moe quantize",
             sm.path, sn, t == WType::q4_0 ? "int4" : "int8", name, se.dtype, shape_str(got),
             shape_str(want));
    const uint64_t at = sm.data_start + se.begin;
    if (at % 2 != 0)
        fail("{}: tensor {} starts at byte {}, not a multiple of its 2-byte elements; rewrite "
             "the file with a standard writer",
             sm.path, sn, at);
    WeightView w;
    w.type = t;
    w.rows = shape[0];
    w.cols = shape[1];
    w.data = values;
    w.scales = sm.base + at;
    impl_->used.insert(name);
    impl_->used.insert(sn);
    return w;
}

std::vector<float> WeightStore::get_f32(const std::string& name,
                                        const std::vector<int64_t>& shape) {
    WeightView w = get(name, shape);
    const size_t n = (size_t)w.rows * (size_t)w.cols;
    std::vector<float> out(n);
    widen_rows(out.data(), w, 0, w.rows);
    int64_t bad = first_non_finite(out.data(), n);
    if (bad >= 0)
        fail("{}: tensor {} has a non-finite value at index {}; the weights are damaged",
             impl_->dir, name, bad);
    return out;
}

std::vector<std::string> WeightStore::unused() const {
    std::vector<std::string> r;
    for (auto& [name, loc] : impl_->tensors)
        if (!impl_->used.count(name)) r.push_back(name);
    return r;
}

uint64_t WeightStore::mapped_bytes() const {
    uint64_t n = 0;
    for (auto& m : impl_->maps) n += m.size;
    return n;
}

uint64_t WeightStore::resident_bytes() const {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uint64_t n = 0;
    std::vector<unsigned char> vec;
    for (auto& m : impl_->maps) {
        const size_t pages = (m.size + page - 1) / page;
        vec.resize(pages);
        if (mincore((void*)m.base, m.size, vec.data()) != 0) continue;
        for (unsigned char v : vec) n += (v & 1) ? page : 0;
    }
    return n;
}

size_t WeightStore::n_files() const { return impl_->maps.size(); }

}  // namespace moe
