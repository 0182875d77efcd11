#include "data/token_file.h"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/checked.h"
#include "moe/error.h"
#include "moe/file_io.h"

namespace moe {

using json = nlohmann::json;
static const char kMagic[9] = "MOETOK01";

void write_token_file(const std::string& path, const std::vector<int32_t>& ids, int vocab,
                      const std::string& tokenizer) {
    if (vocab <= 0) fail("{}: vocab={} must be positive", path, vocab);
    const bool small = vocab <= 65536;
    json h = {{"version", 1},
              {"vocab", vocab},
              {"count", (uint64_t)ids.size()},
              {"dtype", small ? "uint16" : "uint32"},
              {"tokenizer", tokenizer}};
    std::string header = h.dump();
    while ((16 + header.size()) % 8) header += ' ';
    uint64_t hlen = header.size();
    const size_t esz = small ? 2 : 4;
    std::string out(16 + hlen + ids.size() * esz, '\0');
    std::memcpy(&out[0], kMagic, 8);
    std::memcpy(&out[8], &hlen, 8);  // x86-64 and aarch64 are little-endian
    std::memcpy(&out[16], header.data(), hlen);
    char* p = &out[16 + hlen];
    for (size_t i = 0; i < ids.size(); i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= vocab)
            fail("{}: token {} has id {} outside vocab {}", path, i, id, vocab);
        if (small) {
            uint16_t v = (uint16_t)id;
            std::memcpy(p + 2 * i, &v, 2);
        } else {
            uint32_t v = (uint32_t)id;
            std::memcpy(p + 4 * i, &v, 4);
        }
    }
    write_file_atomic(path, out);
}

bool is_token_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    char buf[8] = {};
    return in.read(buf, 8) && std::memcmp(buf, kMagic, 8) == 0;
}

TokenFile read_token_file(const std::string& path) {
    return parse_token_file(read_file(path), path);
}

TokenFile parse_token_file(const std::string& f, const std::string& path) {
    if (f.size() < 16 || std::memcmp(f.data(), kMagic, 8) != 0)
        fail("{}: not a token file (no MOETOK01 magic); give a .tok file written by moe train",
             path);
    uint64_t hlen;
    std::memcpy(&hlen, f.data() + 8, 8);
    if (hlen > f.size() - 16)
        fail("{}: header length {} exceeds the file ({} bytes); the file is damaged", path, hlen,
             f.size());
    json h = parse_json_text(f.substr(16, hlen), path, "a token file header");
    if (!h.is_object())
        fail("{}: token file header is not a JSON object; the file is damaged", path);
    // Every number of the header with its range (include/moe/checked.h) before it sizes anything.
    TokenFile t;
    t.vocab = (int)json_int(h, "vocab", path, Range::in(1, 1 << 24));
    t.dtype = json_str(h, "dtype", path, Range::one_of("uint16|uint32"), "");
    if (t.dtype.empty())
        fail("{}: missing key 'dtype' (uint16 or uint32); the file is damaged", path);
    t.tokenizer = json_str(h, "tokenizer", path, Range(), "");
    const uint64_t count = (uint64_t)json_int(h, "count", path, Range::in(0, 1e15));
    const size_t esz = t.dtype == "uint16" ? 2 : 4;
    const uint64_t data = f.size() - 16 - hlen;
    if (count * esz != data)
        fail(
            "{}: header says {} {} ids ({} bytes) but the file holds {} bytes of ids; the file "
            "is truncated or damaged",
            path, count, t.dtype, count * esz, data);
    t.ids.resize(count);
    const char* p = f.data() + 16 + hlen;
    for (uint64_t i = 0; i < count; i++) {
        uint32_t v;
        if (esz == 2) {
            uint16_t s;
            std::memcpy(&s, p + 2 * i, 2);
            v = s;
        } else {
            std::memcpy(&v, p + 4 * i, 4);
        }
        if (v >= (uint32_t)t.vocab)
            fail("{}: token {} has id {} outside vocab {}; the file is damaged", path, i, v,
                 t.vocab);
        t.ids[i] = (int32_t)v;
    }
    return t;
}

}  // namespace moe
