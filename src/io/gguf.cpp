// GGUF reader and writer (include/moe/gguf.h). The reader is a cursor over the bytes that refuses
// to step past the end: every length is compared with the bytes left before anything is
// allocated or read, so a hostile file costs at most its own size in memory.
#include "moe/gguf.h"

#include "io/file_map.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "kernels/typed_gemm.h"
#include "moe/error.h"
#include "moe/file_io.h"

namespace moe {

static const uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
static const uint64_t kMaxDims = 4;         // GGML_MAX_DIMS

const char* gguf_type_name(GgufType t) {
    switch (t) {
        case GgufType::u8: return "uint8";
        case GgufType::i8: return "int8";
        case GgufType::u16: return "uint16";
        case GgufType::i16: return "int16";
        case GgufType::u32: return "uint32";
        case GgufType::i32: return "int32";
        case GgufType::f32: return "float32";
        case GgufType::boolean: return "bool";
        case GgufType::str: return "string";
        case GgufType::arr: return "array";
        case GgufType::u64: return "uint64";
        case GgufType::i64: return "int64";
        case GgufType::f64: return "float64";
    }
    return "?";
}

// Bytes of a scalar type (0 for string/array).
static uint64_t scalar_size(GgufType t) {
    switch (t) {
        case GgufType::u8: case GgufType::i8: case GgufType::boolean: return 1;
        case GgufType::u16: case GgufType::i16: return 2;
        case GgufType::u32: case GgufType::i32: case GgufType::f32: return 4;
        case GgufType::u64: case GgufType::i64: case GgufType::f64: return 8;
        default: return 0;
    }
}

const char* ggml_type_name(GgmlType t) {
    switch (t) {
        case GgmlType::f32: return "F32";
        case GgmlType::f16: return "F16";
        case GgmlType::q8_0: return "Q8_0";
        case GgmlType::q4_0: return "Q4_0";
        case GgmlType::bf16: return "BF16";
    }
    return "?";
}

uint64_t ggml_row_bytes(GgmlType t, uint64_t n) {
    switch (t) {
        case GgmlType::f32: return 4 * n;
        case GgmlType::f16: case GgmlType::bf16: return 2 * n;
        case GgmlType::q8_0: return n / 32 * 34;
        case GgmlType::q4_0: return n / 32 * 18;
    }
    return 0;
}

// ggml's names for the types it has that we do not read, so a refusal names the real type.
static std::string ggml_any_type_name(uint32_t t) {
    static const char* names[] = {"F32",  "F16",  "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0",
                                  "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                                  "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
                                  "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32",
                                  "I64", "F64", "IQ1_M", "BF16"};
    if (t < sizeof(names) / sizeof(names[0])) return names[t];
    return "type " + std::to_string(t);
}

// ---- values ----

GgufValue GgufValue::u32(uint32_t v) { GgufValue r; r.type = GgufType::u32; r.bits = v; return r; }
GgufValue GgufValue::i32(int32_t v) {
    GgufValue r;
    r.type = GgufType::i32;
    r.bits = (uint64_t)(uint32_t)v;
    return r;
}
GgufValue GgufValue::u64(uint64_t v) { GgufValue r; r.type = GgufType::u64; r.bits = v; return r; }
GgufValue GgufValue::f32(float v) {
    GgufValue r;
    r.type = GgufType::f32;
    uint32_t b;
    std::memcpy(&b, &v, 4);
    r.bits = b;
    return r;
}
GgufValue GgufValue::boolean(bool v) {
    GgufValue r;
    r.type = GgufType::boolean;
    r.bits = v ? 1 : 0;
    return r;
}
GgufValue GgufValue::string(std::string s) {
    GgufValue r;
    r.type = GgufType::str;
    r.str = std::move(s);
    return r;
}
GgufValue GgufValue::strings(std::vector<std::string> v) {
    GgufValue r;
    r.type = GgufType::arr;
    r.arr_type = GgufType::str;
    r.arr_str = std::move(v);
    return r;
}
GgufValue GgufValue::f32s(const std::vector<float>& v) {
    GgufValue r;
    r.type = GgufType::arr;
    r.arr_type = GgufType::f32;
    for (float f : v) r.arr.push_back(GgufValue::f32(f).bits);
    return r;
}
GgufValue GgufValue::i32s(const std::vector<int32_t>& v) {
    GgufValue r;
    r.type = GgufType::arr;
    r.arr_type = GgufType::i32;
    for (int32_t x : v) r.arr.push_back((uint64_t)(uint32_t)x);
    return r;
}

static bool type_is_int(GgufType t) {
    return t == GgufType::u8 || t == GgufType::i8 || t == GgufType::u16 || t == GgufType::i16 ||
           t == GgufType::u32 || t == GgufType::i32 || t == GgufType::u64 || t == GgufType::i64;
}

// A scalar's bits (as stored, zero-extended) -> a signed integer / double of its type.
static int64_t bits_int(GgufType t, uint64_t b) {
    switch (t) {
        case GgufType::i8: return (int8_t)(uint8_t)b;
        case GgufType::i16: return (int16_t)(uint16_t)b;
        case GgufType::i32: return (int32_t)(uint32_t)b;
        default: return (int64_t)b;  // unsigned; u64 above INT64_MAX wraps (callers range-check)
    }
}
static double bits_double(GgufType t, uint64_t b) {
    if (t == GgufType::f32) {
        uint32_t u = (uint32_t)b;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    if (t == GgufType::f64) {
        double d;
        std::memcpy(&d, &b, 8);
        return d;
    }
    if (t == GgufType::u64) return (double)b;
    return (double)bits_int(t, b);
}

bool GgufValue::is_int() const { return type_is_int(type); }
bool GgufValue::is_float() const { return type == GgufType::f32 || type == GgufType::f64; }
int64_t GgufValue::as_int() const { return bits_int(type, bits); }
double GgufValue::as_double() const { return bits_double(type, bits); }
int64_t GgufValue::arr_int(size_t i) const { return bits_int(arr_type, arr.at(i)); }
double GgufValue::arr_double(size_t i) const { return bits_double(arr_type, arr.at(i)); }
bool GgufValue::operator==(const GgufValue& o) const {
    if (type != o.type) return false;
    if (type == GgufType::str) return str == o.str;
    if (type == GgufType::arr)
        return arr_type == o.arr_type && arr == o.arr && arr_str == o.arr_str;
    return bits == o.bits;
}

// ---- reading ----

struct GgufFile::Mapping {
    FileMap map;
    ~Mapping() { unmap_file(map); }
};

namespace {

struct Cursor {
    const uint8_t* p;
    uint64_t size, at = 0;
    const std::string& where;

    uint64_t left() const { return size - at; }
    void need(uint64_t n, const char* what) const {
        if (n > left())
            fail("{}: truncated at byte {}: {} needs {} bytes, {} are left; the file is "
                 "incomplete or not GGUF",
                 where, at, what, n, left());
    }
    uint64_t scalar(uint64_t n, const char* what) {
        need(n, what);
        uint64_t v = 0;
        std::memcpy(&v, p + at, n);  // little-endian host (x86, arm64)
        at += n;
        return v;
    }
    uint32_t u32(const char* what) { return (uint32_t)scalar(4, what); }
    uint64_t u64(const char* what) { return scalar(8, what); }
    std::string str(const char* what) {
        const uint64_t n = u64(what);
        need(n, what);  // bounded by the bytes left: never a huge allocation
        std::string s((const char*)p + at, (size_t)n);
        at += n;
        return s;
    }
};

GgufType value_type(uint32_t t, const std::string& where, const std::string& key) {
    if (t > (uint32_t)GgufType::f64)
        fail("{}: key '{}': value type {} is not a GGUF type (0..12); the file is damaged", where,
             key, t);
    return (GgufType)t;
}

GgufValue read_value(Cursor& c, GgufType t, const std::string& key) {
    GgufValue v;
    v.type = t;
    if (t == GgufType::str) {
        v.str = c.str("a string value");
    } else if (t == GgufType::arr) {
        v.arr_type = value_type(c.u32("an array type"), c.where, key);
        if (v.arr_type == GgufType::arr)
            fail("{}: key '{}': an array of arrays; GGUF readers (llama.cpp's too) refuse them",
                 c.where, key);
        const uint64_t n = c.u64("an array length");
        if (v.arr_type == GgufType::str) {
            // Each string takes at least its 8-byte length: bounds n before reserving.
            if (n > c.left() / 8)
                fail("{}: key '{}': array of {} strings cannot fit in the {} bytes left; the file "
                     "is damaged",
                     c.where, key, n, c.left());
            v.arr_str.reserve((size_t)n);
            for (uint64_t i = 0; i < n; i++) v.arr_str.push_back(c.str("an array string"));
        } else {
            const uint64_t es = scalar_size(v.arr_type);
            if (n > c.left() / es)
                fail("{}: key '{}': array of {} {} cannot fit in the {} bytes left; the file is "
                     "damaged",
                     c.where, key, n, gguf_type_name(v.arr_type), c.left());
            v.arr.resize((size_t)n);
            for (uint64_t i = 0; i < n; i++) v.arr[i] = c.scalar(es, "an array element");
        }
    } else {
        v.bits = c.scalar(scalar_size(t), "a value");
        if (t == GgufType::boolean && v.bits > 1)
            fail("{}: key '{}': bool value {} is neither 0 nor 1; the file is damaged", c.where,
                 key, v.bits);
    }
    return v;
}

}  // namespace

bool GgufFile::is_private_copy() const { return map_ && map_->map.huge; }
void GgufFile::set_writable(bool writable) const {
    if (!is_private_copy()) fail("{}: internal: a mapped GGUF file is never written", where_);
    file_map_set_writable(map_->map, writable);
}

GgufFile GgufFile::open(const std::string& path, bool model_weights) {
    check_readable_file(path);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("{}: cannot open: {}; check the path", path, std::strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        ::close(fd);
        fail("{}: cannot read its size; check the file", path);
    }
    if (st.st_size < 24) {
        ::close(fd);
        fail("{}: {} bytes is too short for a GGUF header (24 bytes); give a .gguf file", path,
             (long long)st.st_size);
    }
    auto m = std::make_shared<Mapping>();
    try {
        m->map = map_file_readonly(path, fd, (size_t)st.st_size,
                                   model_weights && hugepage_copy_wanted((size_t)st.st_size));
    } catch (...) {
        ::close(fd);
        throw;
    }
    ::close(fd);
    GgufFile f;
    f.map_ = m;
    f.base_ = m->map.data;
    f.size_ = m->map.size;
    f.where_ = path;
    f.parse_all();
    return f;
}

GgufFile GgufFile::parse(const uint8_t* data, size_t size, const std::string& where) {
    GgufFile f;
    f.base_ = data;
    f.size_ = size;
    f.where_ = where;
    f.parse_all();
    return f;
}

void GgufFile::parse_all() {
    Cursor c{base_, size_, 0, where_};
    if (size_ < 4 || c.u32("the magic") != kMagic)
        fail("{}: does not start with the GGUF magic; give a .gguf file written by llama.cpp or "
             "moe convert",
             where_);
    version_ = c.u32("the version");
    if (version_ != 2 && version_ != 3)
        fail("{}: GGUF version {} is not supported; moe.cpp reads versions 2 and 3 (convert the "
             "file with a current llama.cpp)",
             where_, version_);
    const uint64_t n_tensors = c.u64("the tensor count");
    const uint64_t n_kv = c.u64("the key/value count");
    // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info 8 + 4 + 4 + 8.
    if (n_kv > c.left() / 13)
        fail("{}: {} metadata keys cannot fit in the file's {} bytes; the file is damaged", where_,
             n_kv, size_);
    for (uint64_t i = 0; i < n_kv; i++) {
        std::string key = c.str("a key");
        if (key.empty()) fail("{}: metadata key {} is empty; the file is damaged", where_, i);
        const GgufType t = value_type(c.u32("a value type"), where_, key);
        GgufValue v = read_value(c, t, key);
        if (kv_index_.count(key))
            fail("{}: key '{}' appears twice; the file is damaged", where_, key);
        kv_index_[key] = kv_.size();
        kv_.emplace_back(std::move(key), std::move(v));
    }
    if (const GgufValue* a = find("general.alignment")) {
        if (a->type != GgufType::u32)
            fail("{}: key 'general.alignment': type {} but GGUF requires uint32; the file is "
                 "damaged",
                 where_, gguf_type_name(a->type));
        alignment_ = a->bits;
        if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0 || alignment_ > (1u << 20))
            fail("{}: key 'general.alignment': {} is not a power of two up to 1 MiB; the file is "
                 "damaged",
                 where_, alignment_);
    }
    if (n_tensors > c.left() / 24)
        fail("{}: {} tensors cannot fit in the file's {} bytes; the file is damaged", where_,
             n_tensors, size_);
    tensors_.reserve((size_t)n_tensors);
    for (uint64_t i = 0; i < n_tensors; i++) {
        GgufTensor t;
        t.name = c.str("a tensor name");
        if (t.name.empty()) fail("{}: tensor {} has an empty name; the file is damaged", where_, i);
        const uint32_t nd = c.u32("a tensor's dimension count");
        if (nd < 1 || nd > kMaxDims)
            fail("{}: tensor {}: {} dimensions; GGUF tensors have 1 to 4", where_, t.name, nd);
        uint64_t n = 1;
        for (uint32_t d = 0; d < nd; d++) {
            const uint64_t e = c.u64("a tensor dimension");
            if (e < 1 || e > (1ull << 40))
                fail("{}: tensor {}: dimension {} is {}; it must be in [1, 2^40]", where_, t.name,
                     d, e);
            if (n > (1ull << 50) / e)
                fail("{}: tensor {}: more than 2^50 elements; the file is damaged", where_,
                     t.name);
            n *= e;
            t.ne.push_back((int64_t)e);
        }
        const uint32_t ty = c.u32("a tensor type");
        if (ty != 0 && ty != 1 && ty != 2 && ty != 8 && ty != 30)
            fail("{}: tensor {}: ggml type {} is not supported; moe.cpp reads F32, F16, BF16, "
                 "Q8_0 and Q4_0 (requantize with llama-quantize to Q8_0, or convert from the "
                 "original weights)",
                 where_, t.name, ggml_any_type_name(ty));
        t.type = (GgmlType)ty;
        if ((t.type == GgmlType::q8_0 || t.type == GgmlType::q4_0) && t.ne[0] % 32 != 0)
            fail("{}: tensor {}: {} rows of {} values are not whole blocks of 32; the file is "
                 "damaged",
                 where_, t.name, ggml_type_name(t.type), t.ne[0]);
        t.bytes = ggml_row_bytes(t.type, (uint64_t)t.ne[0]) * (n / (uint64_t)t.ne[0]);
        t.offset = c.u64("a tensor offset");
        if (t.offset % alignment_ != 0)
            fail("{}: tensor {}: offset {} is not a multiple of the alignment {}; the file is "
                 "damaged",
                 where_, t.name, t.offset, alignment_);
        if (tensor_index_.count(t.name))
            fail("{}: tensor {} appears twice; the file is damaged", where_, t.name);
        tensor_index_[t.name] = tensors_.size();
        tensors_.push_back(std::move(t));
    }
    data_offset_ = (c.at + alignment_ - 1) / alignment_ * alignment_;
    if (data_offset_ > size_ && !tensors_.empty())
        fail("{}: truncated: the tensor data would start at byte {} of {}; the file is incomplete",
             where_, data_offset_, size_);
    const uint64_t data_bytes = data_offset_ <= size_ ? size_ - data_offset_ : 0;
    for (GgufTensor& t : tensors_) {
        if (t.offset > data_bytes || t.bytes > data_bytes - t.offset)
            fail("{}: tensor {} ({} bytes at data offset {}) runs past the end of the file ({} "
                 "data bytes); the file is truncated",
                 where_, t.name, t.bytes, t.offset, data_bytes);
        t.data = base_ + data_offset_ + t.offset;
    }
}

const GgufValue* GgufFile::find(const std::string& key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensor* GgufFile::tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::string GgufFile::get_str(const std::string& key) const {
    const GgufValue* v = find(key);
    if (!v) fail("{}: key '{}' is missing; the file lacks metadata its architecture needs", where_, key);
    if (v->type != GgufType::str)
        fail("{}: key '{}': type {} where a string is expected; the file is damaged", where_, key,
             gguf_type_name(v->type));
    return v->str;
}

std::string GgufFile::get_str(const std::string& key, const std::string& def) const {
    return find(key) ? get_str(key) : def;
}

int64_t GgufFile::get_int(const std::string& key, int64_t lo, int64_t hi) const {
    const GgufValue* v = find(key);
    if (!v) fail("{}: key '{}' is missing; the file lacks metadata its architecture needs", where_, key);
    if (!v->is_int())
        fail("{}: key '{}': type {} where an integer is expected; the file is damaged", where_,
             key, gguf_type_name(v->type));
    const bool huge = v->type == GgufType::u64 && v->bits > (uint64_t)INT64_MAX;
    const int64_t x = v->as_int();
    if (huge || x < lo || x > hi)
        fail("{}: key '{}': {} is outside [{}, {}]; the file is damaged or not supported", where_,
             key, huge ? std::to_string(v->bits) : std::to_string(x), lo, hi);
    return x;
}

int64_t GgufFile::get_int(const std::string& key, int64_t lo, int64_t hi, int64_t def) const {
    return find(key) ? get_int(key, lo, hi) : def;
}

double GgufFile::get_num(const std::string& key, double lo, double hi) const {
    const GgufValue* v = find(key);
    if (!v) fail("{}: key '{}' is missing; the file lacks metadata its architecture needs", where_, key);
    if (!v->is_int() && !v->is_float())
        fail("{}: key '{}': type {} where a number is expected; the file is damaged", where_, key,
             gguf_type_name(v->type));
    const double x = v->as_double();
    if (!std::isfinite(x) || x < lo || x > hi)
        fail("{}: key '{}': {} is outside [{}, {}]; the file is damaged or not supported", where_,
             key, x, lo, hi);
    return x;
}

double GgufFile::get_num(const std::string& key, double lo, double hi, double def) const {
    return find(key) ? get_num(key, lo, hi) : def;
}

bool GgufFile::get_bool(const std::string& key, bool def) const {
    const GgufValue* v = find(key);
    if (!v) return def;
    if (v->type != GgufType::boolean)
        fail("{}: key '{}': type {} where a bool is expected; the file is damaged", where_, key,
             gguf_type_name(v->type));
    return v->bits != 0;
}

const GgufValue* GgufFile::get_array(const std::string& key, GgufType elem, bool required) const {
    const GgufValue* v = find(key);
    if (!v) {
        if (required)
            fail("{}: key '{}' is missing; the file lacks metadata its architecture needs", where_,
                 key);
        return nullptr;
    }
    const bool numeric_ok = elem != GgufType::str && v->type == GgufType::arr &&
                            v->arr_type != GgufType::str &&
                            (type_is_int(elem) ? type_is_int(v->arr_type)
                                               : (v->arr_type == GgufType::f32 ||
                                                  v->arr_type == GgufType::f64));
    if (v->type != GgufType::arr || (elem == GgufType::str) != (v->arr_type == GgufType::str) ||
        (elem != GgufType::str && !numeric_ok))
        fail("{}: key '{}': type {}{} where an array of {} is expected; the file is damaged",
             where_, key, gguf_type_name(v->type),
             v->type == GgufType::arr ? std::string(" of ") + gguf_type_name(v->arr_type) : "",
             gguf_type_name(elem));
    return v;
}

bool is_gguf_file(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
    // Named .gguf: taken for one whatever its bytes, so that a damaged file is reported as such.
    if (path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0) return true;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    uint32_t magic = 0;
    const bool ok = ::read(fd, &magic, 4) == 4 && magic == kMagic;
    ::close(fd);
    return ok;
}

// ---- writing ----

void GgufWriter::set(const std::string& key, GgufValue v) {
    if (key == "general.alignment") alignment_ = v.bits;
    for (auto& kv : kv_)
        if (kv.first == key) {
            kv.second = std::move(v);
            return;
        }
    kv_.emplace_back(key, std::move(v));
}

void GgufWriter::add_tensor(const std::string& name, std::vector<int64_t> ne, GgmlType type,
                            std::function<void(uint8_t*)> fill) {
    uint64_t rows = 1;
    for (size_t i = 1; i < ne.size(); i++) rows *= (uint64_t)ne[i];
    MOE_CHECK(!ne.empty() && ne.size() <= kMaxDims, "tensor {}: {} dims", name, ne.size());
    MOE_CHECK((type != GgmlType::q8_0 && type != GgmlType::q4_0) || ne[0] % 32 == 0,
              "tensor {}: {} row {}", name, ggml_type_name(type), ne[0]);
    const uint64_t bytes = ggml_row_bytes(type, (uint64_t)ne[0]) * rows;
    tensors_.push_back({name, std::move(ne), type, bytes, std::move(fill)});
}

namespace {

struct Out {
    int fd;
    const std::string& path;
    uint64_t at = 0;
    void bytes(const void* p, size_t n) {
        const char* c = (const char*)p;
        while (n > 0) {
            ssize_t w = ::write(fd, c, n);
            if (w < 0) {
                if (errno == EINTR) continue;
                fail("{}: cannot write: {}; free disk space or choose another place", path,
                     std::strerror(errno));
            }
            c += w;
            n -= (size_t)w;
            at += (uint64_t)w;
        }
    }
    void u32(uint32_t v) { bytes(&v, 4); }
    void u64(uint64_t v) { bytes(&v, 8); }
    void str(const std::string& s) {
        u64(s.size());
        bytes(s.data(), s.size());
    }
    void pad(uint64_t align) {
        static const char zeros[64] = {0};
        uint64_t n = (align - at % align) % align;
        while (n > 0) {
            const uint64_t k = std::min<uint64_t>(n, sizeof(zeros));
            bytes(zeros, (size_t)k);
            n -= k;
        }
    }
    void value(const GgufValue& v) {
        if (v.type == GgufType::str) {
            str(v.str);
        } else if (v.type == GgufType::arr) {
            u32((uint32_t)v.arr_type);
            if (v.arr_type == GgufType::str) {
                u64(v.arr_str.size());
                for (auto& s : v.arr_str) str(s);
            } else {
                u64(v.arr.size());
                const size_t es = (size_t)scalar_size(v.arr_type);
                for (uint64_t b : v.arr) bytes(&b, es);
            }
        } else {
            bytes(&v.bits, (size_t)scalar_size(v.type));
        }
    }
};

}  // namespace

void GgufWriter::write(const std::string& path) const {
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        fail("{}: cannot create: {}; check that its folder exists and is writable", path,
             std::strerror(errno));
    try {
        Out o{fd, path};
        o.u32(kMagic);
        o.u32(3);
        o.u64(tensors_.size());
        o.u64(kv_.size());
        for (auto& [k, v] : kv_) {
            o.str(k);
            o.u32((uint32_t)v.type);
            o.value(v);
        }
        uint64_t off = 0;
        for (auto& t : tensors_) {
            o.str(t.name);
            o.u32((uint32_t)t.ne.size());
            for (int64_t e : t.ne) o.u64((uint64_t)e);
            o.u32((uint32_t)t.type);
            o.u64(off);
            off += (t.bytes + alignment_ - 1) / alignment_ * alignment_;
        }
        o.pad(alignment_);
        std::vector<uint8_t> buf;
        for (auto& t : tensors_) {
            buf.assign((size_t)t.bytes, 0);
            t.fill(buf.data());
            o.bytes(buf.data(), buf.size());
            o.pad(alignment_);
        }
        if (::fsync(fd) != 0)
            fail("{}: cannot flush: {}; free disk space or choose another place", path,
                 std::strerror(errno));
    } catch (...) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    ::close(fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp.c_str());
        fail("{}: cannot rename {} into place: {}; check the folder's permissions", path, tmp,
             std::strerror(e));
    }
    const auto slash = path.find_last_of('/');
    fsync_dir(slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash));
}

}  // namespace moe
