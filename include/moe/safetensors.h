// safetensors (the Hugging Face tensor file): 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then raw little-endian data.
// Reading validates everything (header size, offsets inside the file, sizes matching shapes) and
// converts F32/F16/BF16/I32/I64/I8/U8 to float. Writing is atomic (file_io.h).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "moe/tensor.h"

namespace moe {

struct StTensor {
    std::string dtype;  // dtype as stored: "F32", "BF16", "F16", "I32", "I64", "I8", "U8"
    Shape shape;
    std::vector<float> data;  // converted to float
};

// The header alone (names, dtypes, shapes; no data read or converted): what sizes are checked
// against before a model is allocated. Validated like the full reader (length, offsets, shapes).
struct StHeaderEntry {
    std::string dtype;
    Shape shape;
    uint64_t begin = 0, end = 0;  // data_offsets
};
std::map<std::string, StHeaderEntry> read_safetensors_header(const std::string& path,
                                                             uint64_t* file_bytes = nullptr);

class SafetensorsReader {
   public:
    explicit SafetensorsReader(const std::string& path);  // throws moe::Error on any malformation
    // The same from the file's bytes in memory; `where` names the source in errors (fuzzing).
    static SafetensorsReader from_bytes(const std::string& bytes, const std::string& where);
    bool has(const std::string& name) const { return tensors_.count(name) != 0; }
    // Throws "<file>: missing tensor <name>" or "<file>: tensor <name>: expected shape .., got .."
    const StTensor& get(const std::string& name) const;
    const StTensor& get(const std::string& name, const Shape& expected) const;
    std::vector<std::string> names() const;
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const std::string& path() const { return path_; }

   private:
    SafetensorsReader() = default;
    void parse(const std::string& file);

    std::string path_;
    std::map<std::string, StTensor> tensors_;
    std::map<std::string, std::string> metadata_;
};

class SafetensorsWriter {
   public:
    void add(const std::string& name, const Shape& shape, const float* data);        // F32
    void add_i64(const std::string& name, const Shape& shape, const int64_t* data);  // I64
    // Bytes already in the file's dtype ("BF16", "F16", ...): bytes = numel * element size.
    void add_raw(const std::string& name, const std::string& dtype, const Shape& shape,
                 const void* data, size_t bytes);
    void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
    void save(const std::string& path) const;  // atomic
    std::string serialize() const;

   private:
    struct Entry {
        std::string name, dtype;
        Shape shape;
        std::string bytes;
    };
    std::vector<Entry> entries_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace moe
