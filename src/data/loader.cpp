#include "data/loader.h"

#include <cstring>

#include "moe/checked.h"
#include "moe/error.h"

namespace moe {

using json = nlohmann::json;

BatchLoader::BatchLoader(const std::vector<int32_t>* tokens, int B, int S, uint64_t seed,
                         const std::string& what)
    : tokens_(tokens), B_(B), S_(S), rng_(seed) {
    if (B < 1 || S < 1) fail("{}: batch {} x {} must be positive", what, B, S);
    if (tokens->size() < (size_t)S + 1)
        fail("{}: {} tokens, but a window needs block_size + 1 = {}: the text is too short", what,
             tokens->size(), S + 1);
    if (tokens->size() > (size_t)UINT32_MAX) fail("{}: more than 2^32 tokens", what);
}

void BatchLoader::next(int32_t* x, int32_t* y) {
    // Start s in [0, n - S - 1]: the window s .. s+S inclusive fits (as nanoGPT's randint).
    const uint32_t n_starts = (uint32_t)(tokens_->size() - (size_t)S_);
    const int32_t* t = tokens_->data();
    for (int b = 0; b < B_; b++) {
        uint32_t s = rng_.below(n_starts);
        std::memcpy(x + (size_t)b * S_, t + s, (size_t)S_ * 4);
        std::memcpy(y + (size_t)b * S_, t + s + 1, (size_t)S_ * 4);
    }
}

json rng_to_json(const Rng& r) {
    uint32_t spare_bits;
    std::memcpy(&spare_bits, &r.spare, 4);
    return {{"s", {r.s[0], r.s[1], r.s[2], r.s[3]}},
            {"has_spare", r.has_spare},
            {"spare_bits", spare_bits}};
}

void rng_from_json(Rng& r, const json& j, const std::string& where) {
    try {
        // Words are unsigned integers, read with their type checked (include/moe/checked.h): the
        // JSON library would cast a float such as 1e20 to uint64_t, which is undefined.
        const json& s = j.at("s");
        if (!s.is_array() || s.size() != 4)
            fail("{}: rng state needs 4 words, got {}", where, s.dump());
        for (int i = 0; i < 4; i++) r.s[i] = checked_u64(s[i], where + ": rng word");
        r.has_spare = checked_bool(j.at("has_spare"), where + ": rng has_spare");
        uint32_t bits = (uint32_t)checked_int(j.at("spare_bits"), where + ": rng spare_bits",
                                              Range::in(0, 4294967295.0));
        std::memcpy(&r.spare, &bits, 4);
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        fail("{}: bad rng state {}: {}", where, j.dump(), e.what());
    }
}

json BatchLoader::state() const { return {{"rng", rng_to_json(rng_)}, {"B", B_}, {"S", S_}}; }

void BatchLoader::set_state(const json& j) {
    if (!j.is_object() || !j.contains("rng")) fail("loader state: no \"rng\" in {}", j.dump());
    rng_from_json(rng_, j["rng"], "loader state");
}

int64_t n_eval_windows(size_t n_tokens, int S) { return (int64_t)(n_tokens / ((size_t)S + 1)); }

}  // namespace moe
