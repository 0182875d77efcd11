#include "moe/safetensors.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "moe/file_io.h"

namespace moe {

using json = nlohmann::json;

static size_t dtype_size(const std::string& dt) {
    if (dt == "F32" || dt == "I32") return 4;
    if (dt == "F16" || dt == "BF16") return 2;
    if (dt == "I64" || dt == "F64") return 8;
    return 0;
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: renormalise
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                exp--;
            }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
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
    if (file.size() < 8) fail("{}: not a safetensors file (only {} bytes)", path, file.size());
    uint64_t hlen;
    std::memcpy(&hlen, file.data(), 8);
    if (hlen > file.size() - 8 || hlen > (100u << 20))
        fail("{}: bad safetensors header length {} (file has {} bytes)", path, hlen, file.size());
    json header;
    try {
        header = json::parse(file.begin() + 8, file.begin() + 8 + (long)hlen);
    } catch (const std::exception& e) {
        fail("{}: safetensors header is not valid JSON: {}", path, e.what());
    }
    if (!header.is_object()) fail("{}: safetensors header is not a JSON object", path);
    const size_t data_start = 8 + hlen, data_size = file.size() - data_start;
    for (auto& [name, v] : header.items()) {
        if (name == "__metadata__") {
            if (v.is_object())
                for (auto& [k, mv] : v.items())
                    metadata_[k] = mv.is_string() ? mv.get<std::string>() : mv.dump();
            continue;
        }
        if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
            !v.contains("data_offsets"))
            fail("{}: tensor {}: header entry lacks dtype, shape or data_offsets", path, name);
        StTensor t;
        try {
            t.dtype = v["dtype"].get<std::string>();
            t.shape = Shape(v["shape"].get<std::vector<int64_t>>());
        } catch (const std::exception& e) {
            fail("{}: tensor {}: bad dtype or shape: {}", path, name, e.what());
        }
        size_t esz = dtype_size(t.dtype);
        if (esz == 0) fail("{}: tensor {}: unsupported dtype {}", path, name, t.dtype);
        // The element count, checked before any product can overflow (Shape::numel would).
        uint64_t n = 1;
        for (int64_t dsz : t.shape.dims) {
            if (dsz < 0) fail("{}: tensor {}: negative dimension", path, name);
            if (__builtin_mul_overflow(n, (uint64_t)dsz, &n) || n > (uint64_t)INT64_MAX)
                fail("{}: tensor {}: shape {} has too many elements", path, name, t.shape.str());
        }
        auto off = v["data_offsets"];
        if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
            !off[1].is_number_unsigned())
            fail("{}: tensor {}: bad data_offsets", path, name);
        uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
        if (b > e || e > data_size)
            fail("{}: tensor {}: data_offsets [{}, {}] outside the data ({} bytes): file truncated?",
                 path, name, b, e, data_size);
        if (n > (e - b) / esz || e - b != n * esz)
            fail("{}: tensor {}: {} bytes for shape {} of {} (expected {} elements of {} bytes)",
                 path, name, e - b, t.shape.str(), t.dtype, n, esz);
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
                t.data[i] = half_to_float(h);
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
    if (it == tensors_.end()) fail("{}: missing tensor {}", path_, name);
    return it->second;
}

const StTensor& SafetensorsReader::get(const std::string& name, const Shape& expected) const {
    const StTensor& t = get(name);
    if (t.shape != expected)
        fail("{}: tensor {}: expected shape {}, got {}", path_, name, expected.str(),
             t.shape.str());
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

std::string SafetensorsWriter::serialize() const {
    json header = json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    uint64_t off = 0;
    for (auto& e : entries_) {
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
    for (auto& e : entries_) out += e.bytes;
    return out;
}

void SafetensorsWriter::save(const std::string& path) const {
    write_file_atomic(path, serialize());
}

}  // namespace moe
