#include "data/token_file.h"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

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
        fail("{}: not a token file (no MOETOK01 magic)", path);
    uint64_t hlen;
    std::memcpy(&hlen, f.data() + 8, 8);
    if (hlen > f.size() - 16)
        fail("{}: header length {} exceeds the file ({} bytes)", path, hlen, f.size());
    json h;
    try {
        h = json::parse(f.begin() + 16, f.begin() + 16 + (long)hlen);
    } catch (const std::exception& e) {
        fail("{}: token file header is not valid JSON: {}", path, e.what());
    }
    TokenFile t;
    try {
        // Integers with their type checked: the JSON library casts a float such as 6.9e28 to int
        // or uint64_t, which is undefined.
        const json &jv = h.at("vocab"), &jc = h.at("count");
        if (!jv.is_number_integer() || jv.get<int64_t>() <= 0 || jv.get<int64_t>() > INT32_MAX)
            fail("{}: vocab {} must be an integer in [1, 2^31)", path, jv.dump());
        if (!jc.is_number_unsigned())
            fail("{}: count {} must be an unsigned integer", path, jc.dump());
        t.vocab = jv.get<int>();
        t.dtype = h.at("dtype").get<std::string>();
        t.tokenizer = h.value("tokenizer", std::string());
        uint64_t count = jc.get<uint64_t>();
        size_t esz = t.dtype == "uint16" ? 2 : t.dtype == "uint32" ? 4 : 0;
        if (esz == 0) fail("{}: dtype '{}' (uint16 or uint32)", path, t.dtype);
        if (t.vocab <= 0) fail("{}: vocab={} must be positive", path, t.vocab);
        // count is checked against the bytes present before it is multiplied (no wrap-around).
        const uint64_t id_bytes = f.size() - 16 - hlen;
        if (count > id_bytes / esz || id_bytes != count * esz)
            fail("{}: {} bytes of ids, header says {} {} ids: truncated or corrupt", path, id_bytes,
                 count, t.dtype);
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
                fail("{}: token {} has id {} outside vocab {}", path, i, v, t.vocab);
            t.ids[i] = (int32_t)v;
        }
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        fail("{}: bad token file header {}: {}", path, h.dump(), e.what());
    }
    return t;
}

}  // namespace moe
