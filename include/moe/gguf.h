// GGUF (llama.cpp's single-file model format, version 3; version 2 has the same layout): a header,
// typed metadata key/values, tensor infos, then the aligned tensor data. docs/formats.md has the
// layout and the names moe.cpp reads and writes.
//
// The reader validates everything against the file's size before it is used: every count and
// string length is bounded by the bytes left (never an allocation sized by an unchecked number),
// every tensor's data lies inside the file, at an aligned offset, of a known ggml type (F32, F16,
// BF16, Q8_0, Q4_0; any other is refused naming the tensor and its type). Tensor data is never
// copied: a tensor is a pointer into the read-only mapping, which stays alive as long as any
// GgufFile sharing it.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moe {

// Metadata value types (the numbers are the file's).
enum class GgufType : uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, str = 8, arr = 9,
    u64 = 10, i64 = 11, f64 = 12
};
const char* gguf_type_name(GgufType t);

// ggml tensor types moe.cpp reads and writes (the numbers are ggml's).
enum class GgmlType : uint32_t { f32 = 0, f16 = 1, q4_0 = 2, q8_0 = 8, bf16 = 30 };
const char* ggml_type_name(GgmlType t);  // "F32", "F16", "Q4_0", "Q8_0", "BF16"
// Bytes of `n` elements along a row (Q8_0, Q4_0: n % 32 == 0, 34 / 18 bytes per block of 32).
uint64_t ggml_row_bytes(GgmlType t, uint64_t n);

// One metadata value: a scalar (its bits, little-endian, in `bits`: integers as two's
// complement, f32/f64 as IEEE bits, bool 0/1), a string, or an array of scalars or strings
// (arrays of arrays are refused, as llama.cpp does).
struct GgufValue {
    GgufType type = GgufType::u32;
    uint64_t bits = 0;
    std::string str;
    GgufType arr_type = GgufType::u32;
    std::vector<uint64_t> arr;            // numeric arrays
    std::vector<std::string> arr_str;     // string arrays

    static GgufValue u32(uint32_t v);
    static GgufValue i32(int32_t v);
    static GgufValue u64(uint64_t v);
    static GgufValue f32(float v);
    static GgufValue boolean(bool v);
    static GgufValue string(std::string s);
    static GgufValue strings(std::vector<std::string> v);
    static GgufValue f32s(const std::vector<float>& v);
    static GgufValue i32s(const std::vector<int32_t>& v);

    bool is_int() const;    // any integer type
    bool is_float() const;  // f32 or f64
    int64_t as_int() const;      // integer types (u64 above INT64_MAX: use bits)
    double as_double() const;    // integer or float types
    size_t size() const { return type != GgufType::arr ? 1 : arr_type == GgufType::str ? arr_str.size() : arr.size(); }
    int64_t arr_int(size_t i) const;
    double arr_double(size_t i) const;
    bool operator==(const GgufValue& o) const;
};

struct GgufTensor {
    std::string name;
    std::vector<int64_t> ne;  // ggml order: ne[0] is the contiguous (innermost) dimension
    GgmlType type = GgmlType::f32;
    uint64_t offset = 0;      // from the start of the data section
    uint64_t bytes = 0;
    const uint8_t* data = nullptr;  // into the mapping (or the parsed buffer)
};

class GgufFile {
   public:
    // Maps `path` read-only and parses it; errors name the path. model_weights: the tensors of a
    // model to run, which may be copied into huge pages instead (io/file_map.h).
    static GgufFile open(const std::string& path, bool model_weights = false);
    // Parses bytes that stay alive as long as the result is used (fuzzing, tests); `where` names
    // them in errors.
    static GgufFile parse(const uint8_t* data, size_t size, const std::string& where);

    const std::string& path() const { return where_; }
    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }
    uint64_t file_size() const { return size_; }
    const uint8_t* base() const { return base_; }
    // The tensors are a huge-page copy of the file (io/file_map.h), which its one user, a model's
    // weight store, may rewrite in place between set_writable(true) and set_writable(false).
    bool is_private_copy() const;
    void set_writable(bool writable) const;

    const std::vector<std::pair<std::string, GgufValue>>& kv() const { return kv_; }
    const std::vector<GgufTensor>& tensors() const { return tensors_; }
    const GgufValue* find(const std::string& key) const;
    const GgufTensor* tensor(const std::string& name) const;

    // Typed look-ups; `required` ones throw naming the file and key. A wrong type is an error.
    std::string get_str(const std::string& key) const;
    std::string get_str(const std::string& key, const std::string& def) const;
    int64_t get_int(const std::string& key, int64_t lo, int64_t hi) const;
    int64_t get_int(const std::string& key, int64_t lo, int64_t hi, int64_t def) const;
    double get_num(const std::string& key, double lo, double hi) const;
    double get_num(const std::string& key, double lo, double hi, double def) const;
    bool get_bool(const std::string& key, bool def) const;
    const GgufValue* get_array(const std::string& key, GgufType elem, bool required) const;

    struct Mapping;

   private:
    void parse_all();
    std::shared_ptr<Mapping> map_;
    const uint8_t* base_ = nullptr;
    uint64_t size_ = 0;
    std::string where_;
    uint32_t version_ = 0;
    uint64_t alignment_ = 32, data_offset_ = 0;
    std::vector<std::pair<std::string, GgufValue>> kv_;
    std::map<std::string, size_t> kv_index_, tensor_index_;
    std::vector<GgufTensor> tensors_;
};

// Writes a GGUF v3 file atomically (a temp file beside it, fsync, rename, fsync of the folder),
// streaming: the tensor data comes from a callback that fills one tensor's bytes at a time, so a
// model larger than memory can be written.
class GgufWriter {
   public:
    void set(const std::string& key, GgufValue v);  // keeps insertion order; replaces a key
    // ne in ggml order; fill(dst) writes exactly ggml_row_bytes(type, ne[0]) * rows bytes.
    void add_tensor(const std::string& name, std::vector<int64_t> ne, GgmlType type,
                    std::function<void(uint8_t* dst)> fill);
    void write(const std::string& path) const;
    uint64_t alignment() const { return alignment_; }

   private:
    struct Pending {
        std::string name;
        std::vector<int64_t> ne;
        GgmlType type;
        uint64_t bytes;
        std::function<void(uint8_t*)> fill;
    };
    std::vector<std::pair<std::string, GgufValue>> kv_;
    std::vector<Pending> tensors_;
    uint64_t alignment_ = 32;
};

// True when `path` is a regular file that starts with the GGUF magic or whose name ends in
// ".gguf" (then GgufFile::open says what is wrong with it).
bool is_gguf_file(const std::string& path);

}  // namespace moe
