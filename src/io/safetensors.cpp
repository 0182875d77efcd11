#include "moe/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kernels/typed_gemm.h"
#include "moe/checked.h"
#include "moe/error.h"
#include "moe/file_io.h"

namespace moe {

using json = nlohmann::json;

static size_t dtype_size(const std::string& dt) {
    if (dt == "F32" || dt == "I32") return 4;
    if (dt == "F16" || dt == "BF16") return 2;
    if (dt == "I64" || dt == "F64") return 8;
    if (dt == "I8") return 1;  // int8 weights (moe quantize; scales in a separate F16 tensor)
    if (dt == "U8") return 1;  // int4 weights, two a byte (moe quantize --type int4)
    return 0;
}


// One header entry, every number checked (include/moe/checked.h): shapes are exact integers in
// range, [32.5] is refused rather than read as 32, and numel cannot overflow.
static StHeaderEntry parse_entry(const std::string& path, const std::string& name, const json& v,
                                 uint64_t data_size) {
    const std::string what = fmt::format("{}: tensor {}", path, name);
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets"))
        fail("{}: header entry lacks dtype, shape or data_offsets; the file is damaged", what);
    StHeaderEntry t;
    t.dtype =
        checked_str(v["dtype"], what + ": dtype", Range::one_of("F32|F16|BF16|F64|I32|I64|I8|U8"));
    const json& sh = v["shape"];
    if (!sh.is_array() || sh.size() > 8)
        fail("{}: shape must be an array of at most 8 integers, got {}; the file is damaged", what,
             sh.dump());
    std::vector<int64_t> dims;
    double numel = 1;
    for (auto& x : sh) {
        dims.push_back(checked_int(x, what + ": shape", Range::in(0, 1e12)));
        numel *= (double)dims.back();
    }
    if (numel > 1e13) fail("{}: shape {} is too large; the file is damaged", what, sh.dump());
    t.shape = Shape(dims);
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2)
        fail("{}: data_offsets must be [begin, end]; the file is damaged", what);
    t.begin = (uint64_t)checked_int(off[0], what + ": data_offsets", Range::in(0, 1e15));
    t.end = (uint64_t)checked_int(off[1], what + ": data_offsets", Range::in(0, 1e15));
    const uint64_t n = (uint64_t)t.shape.numel(), esz = dtype_size(t.dtype);
    if (t.begin > t.end || t.end > data_size)
        fail(
            "{}: data_offsets [{}, {}] outside the data ({} bytes); the file is truncated or "
            "damaged",
            what, t.begin, t.end, data_size);
    if (t.end - t.begin != n * esz)
        fail("{}: {} bytes for shape {} of {} (expected {}); the file is damaged", what,
             t.end - t.begin, t.shape.str(), t.dtype, n * esz);
    return t;
}

static json parse_header(const std::string& path, const std::string& head, uint64_t file_size,
                         uint64_t* hlen_out) {
    if (file_size < 8)
        fail("{}: not a safetensors file (only {} bytes); give a .safetensors file", path,
             file_size);
    uint64_t hlen;
    std::memcpy(&hlen, head.data(), 8);
    if (hlen > file_size - 8 || hlen > (100u << 20))
        fail("{}: bad safetensors header length {} (file has {} bytes); the file is damaged", path,
             hlen, file_size);
    if (head.size() < 8 + hlen) fail("{}: truncated header; the file is damaged", path);
    json header;
    try {
        header = json::parse(head.begin() + 8, head.begin() + 8 + (long)hlen);
    } catch (const json::exception& e) {
        fail("{}: safetensors header is not valid JSON; the file is damaged", path);
    }
    if (!header.is_object())
        fail("{}: safetensors header is not a JSON object; the file is damaged", path);
    *hlen_out = hlen;
    return header;
}

std::map<std::string, StHeaderEntry> read_safetensors_header(const std::string& path,
                                                             uint64_t* file_bytes) {
    // Only the first 8 + header bytes are read: a 10 GB file is checked in microseconds.
    check_readable_file(path);
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) fail("{}: cannot open; check the path", path);
    const uint64_t size = (uint64_t)in.tellg();
    in.seekg(0);
    std::string head(std::min<uint64_t>(size, 8), '\0');
    in.read(&head[0], (long)head.size());
    if (size >= 8) {
        uint64_t hlen;
        std::memcpy(&hlen, head.data(), 8);
        if (hlen <= size - 8 && hlen <= (100u << 20)) {
            head.resize(8 + hlen);
            in.read(&head[8], (long)hlen);
        }
    }
    uint64_t hlen = 0;
    json header = parse_header(path, head, size, &hlen);
    std::map<std::string, StHeaderEntry> out;
    for (auto& [name, v] : header.items())
        if (name != "__metadata__") out[name] = parse_entry(path, name, v, size - 8 - hlen);
    if (file_bytes) *file_bytes = size;
    return out;
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
    parse(read_file(path));
}

SafetensorsReader SafetensorsReader::from_bytes(const std::string& bytes,
                                                const std::string& where) {
    SafetensorsReader r;
    r.path_ = where;
    r.parse(bytes);
    return r;
}

void SafetensorsReader::parse(const std::string& file) {
    const std::string& path = path_;
    uint64_t hlen = 0;
    json header = parse_header(path, file, file.size(), &hlen);
    const size_t data_start = 8 + hlen, data_size = file.size() - data_start;
    for (auto& [name, v] : header.items()) {
        if (name == "__metadata__") {
            if (v.is_object())
                for (auto& [k, mv] : v.items())
                    metadata_[k] = mv.is_string() ? mv.get<std::string>() : mv.dump();
            continue;
        }
        StHeaderEntry h = parse_entry(path, name, v, data_size);
        StTensor t;
        t.dtype = h.dtype;
        t.shape = h.shape;
        const uint64_t n = (uint64_t)t.shape.numel(), b = h.begin;
        const char* src = file.data() + data_start + b;
        t.data.resize(n);
        for (uint64_t i = 0; i < n; i++) {
            if (t.dtype == "F32") {
                std::memcpy(&t.data[i], src + 4 * i, 4);
            } else if (t.dtype == "F64") {
                double x;
                std::memcpy(&x, src + 8 * i, 8);
                t.data[i] = (float)x;
            } else if (t.dtype == "BF16") {
                uint16_t h;
                std::memcpy(&h, src + 2 * i, 2);
                uint32_t bits = (uint32_t)h << 16;
                std::memcpy(&t.data[i], &bits, 4);
            } else if (t.dtype == "F16") {
                uint16_t h;
                std::memcpy(&h, src + 2 * i, 2);
                t.data[i] = f16_to_f32(h);
            } else if (t.dtype == "I8") {
                t.data[i] = (float)(int8_t)src[i];
            } else if (t.dtype == "U8") {
                t.data[i] = (float)src[i];
            } else if (t.dtype == "I32") {
                int32_t x;
                std::memcpy(&x, src + 4 * i, 4);
                t.data[i] = (float)x;
            } else {  // I64
                int64_t x;
                std::memcpy(&x, src + 8 * i, 8);
                t.data[i] = (float)x;
            }
        }
        tensors_.emplace(name, std::move(t));
    }
}

const StTensor& SafetensorsReader::get(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end())
        fail("{}: missing tensor {}; the file does not hold what was expected", path_, name);
    return it->second;
}

const StTensor& SafetensorsReader::get(const std::string& name, const Shape& expected) const {
    const StTensor& t = get(name);
    if (t.shape != expected)
        fail("{}: tensor {}: expected shape {}, got {}; the file does not match", path_, name,
             expected.str(), t.shape.str());
    return t;
}

std::vector<std::string> SafetensorsReader::names() const {
    std::vector<std::string> out;
    for (auto& kv : tensors_) out.push_back(kv.first);
    return out;
}

void SafetensorsWriter::add(const std::string& name, const Shape& shape, const float* data) {
    Entry e{name, "F32", shape, std::string((const char*)data, (size_t)shape.numel() * 4)};
    entries_.push_back(std::move(e));
}

void SafetensorsWriter::add_i64(const std::string& name, const Shape& shape, const int64_t* data) {
    Entry e{name, "I64", shape, std::string((const char*)data, (size_t)shape.numel() * 8)};
    entries_.push_back(std::move(e));
}

void SafetensorsWriter::add_raw(const std::string& name, const std::string& dtype,
                                const Shape& shape, const void* data, size_t bytes) {
    Entry e{name, dtype, shape, std::string((const char*)data, bytes)};
    entries_.push_back(std::move(e));
}

std::string SafetensorsWriter::serialize() const {
    json header = json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    // Data in order of element size, widest first (as the safetensors library does): with the
    // data start 8-aligned, every tensor then starts on a multiple of its element size even when
    // F32, F16 and I8 tensors share a file.
    std::vector<const Entry*> order;
    for (auto& e : entries_) order.push_back(&e);
    std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
        return dtype_size(a->dtype) > dtype_size(b->dtype);
    });
    uint64_t off = 0;
    for (const Entry* ep : order) {
        const Entry& e = *ep;
        header[e.name] = {{"dtype", e.dtype},
                          {"shape", e.shape.dims},
                          {"data_offsets", {off, off + e.bytes.size()}}};
        off += e.bytes.size();
    }
    std::string h = header.dump();
    while ((8 + h.size()) % 8) h += ' ';  // align the data start to 8 bytes
    uint64_t hlen = h.size();
    std::string out(8, '\0');
    std::memcpy(&out[0], &hlen, 8);
    out += h;
    for (const Entry* e : order) out += e->bytes;
    return out;
}

void SafetensorsWriter::save(const std::string& path) const {
    write_file_atomic(path, serialize());
}

}  // namespace moe
