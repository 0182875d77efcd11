// Token files: tokenized text stored as raw little-endian ids behind a small JSON header.
// Byte layout (docs/formats.md): "MOETOK01" (8 bytes), uint64 LE header length H, H bytes of JSON
// {"version":1,"vocab":V,"count":N,"dtype":"uint16"|"uint32","tokenizer":"char"|...} padded with
// spaces so the ids start on an 8-byte boundary, then N ids of 2 or 4 bytes each.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

struct TokenFile {
    std::vector<int32_t> ids;
    int vocab = 0;
    std::string dtype;      // "uint16" or "uint32"
    std::string tokenizer;  // "char", "sentencepiece", ...
};

// dtype: uint16 when vocab <= 65536, else uint32. Atomic write. Throws when an id is >= vocab.
void write_token_file(const std::string& path, const std::vector<int32_t>& ids, int vocab,
                      const std::string& tokenizer);
// Validates magic, header, dtype, the size against count, and every id < vocab.
TokenFile read_token_file(const std::string& path);
// The same from the file's bytes; `where` names the source in errors (fuzzing).
TokenFile parse_token_file(const std::string& bytes, const std::string& where);
bool is_token_file(const std::string& path);  // starts with the magic

}  // namespace moe
