// Byte-level BPE from a Hugging Face tokenizer.json (Qwen2, Qwen3, OLMoE; GPT-2's scheme).
// The pipeline, as HF's `tokenizers` runs it:
//   1. added tokens ("<|im_start|>") cut out of the raw text (those with normalized: false),
//   2. the normalizer (none, or NFC by ICU) on the plain text between them, then the added tokens
//      with normalized: true cut out of that,
//   3. pre-tokenizers: Split by a regex (PCRE2, UTF + UCP, behavior Isolated) and ByteLevel
//      (optionally GPT-2's own regex, and a prefix space),
//   4. BPE on each piece's bytes: start from one token per byte, merge the pair of lowest merge
//      rank (leftmost on ties) until no pair has a merge.
// The vocabulary is written in GPT-2's byte -> printable code point map ("Ġ" = space); at load
// every piece is turned back into its bytes, so BPE and decoding work on raw bytes and decoding a
// token gives exactly the bytes it stands for (piece_bytes, for streaming).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "data/added_tokens.h"
#include "moe/checked.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/tokenizer.h"

namespace moe {

using json = nlohmann::json;

// ---- GPT-2's byte <-> code point map ----
// Printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 (controls,
// space, DEL, NBSP, soft hyphen) get U+0100 + their rank, so every byte is a visible character.
uint32_t byte_to_unicode(uint8_t b) {
    auto printable = [](int c) {
        return (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
    };
    if (printable(b)) return b;
    uint32_t n = 0;
    for (int c = 0; c < b; c++)
        if (!printable(c)) n++;
    return 256 + n;
}

namespace {

struct ByteMap {
    std::string to_str[256];                    // byte -> its character, UTF-8
    std::unordered_map<uint32_t, uint8_t> back;  // code point -> byte
    ByteMap() {
        for (int b = 0; b < 256; b++) {
            uint32_t cp = byte_to_unicode((uint8_t)b);
            append_utf8(to_str[b], cp);
            back[cp] = (uint8_t)b;
        }
    }
};

const ByteMap& byte_map() {
    static const ByteMap m;
    return m;
}

// A token's text as HF's ByteLevel decoder turns it into bytes: every character mapped back to
// its byte, or, when one character is outside the map (an added token such as "<|im_end|>" is
// inside it; one with a raw space is not), the text's own UTF-8.
std::string piece_to_bytes(const std::string& piece) {
    const ByteMap& m = byte_map();
    std::string out;
    for (size_t i = 0; i < piece.size();) {
        size_t n = utf8_valid_len(piece, i);
        if (n == 0) return piece;
        uint32_t cp = (unsigned char)piece[i] & (n == 1 ? 0x7f : n == 2 ? 0x1f : n == 3 ? 0x0f : 0x07);
        for (size_t k = 1; k < n; k++) cp = (cp << 6) | ((unsigned char)piece[i + k] & 0x3f);
        auto it = m.back.find(cp);
        if (it == m.back.end()) return piece;
        out += (char)it->second;
        i += n;
    }
    return out;
}

// ---- PCRE2 ----

// Per encode call (thread-safe): room for the whole match only (capture groups are not used;
// pcre2_match then returns 0 for patterns with groups, still with the match in the ovector),
// and a JIT stack of up to 4 MB for long runs of one class.
struct MatchData {
    MatchData() {
        md = pcre2_match_data_create(1, nullptr);
        ctx = pcre2_match_context_create(nullptr);
        stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
        if (!md || !ctx || !stack) throw std::bad_alloc();
        pcre2_jit_stack_assign(ctx, nullptr, stack);
    }
    ~MatchData() {
        pcre2_jit_stack_free(stack);
        pcre2_match_context_free(ctx);
        pcre2_match_data_free(md);
    }
    MatchData(const MatchData&) = delete;
    MatchData& operator=(const MatchData&) = delete;
    pcre2_match_data* md = nullptr;
    pcre2_match_context* ctx = nullptr;
    pcre2_jit_stack* stack = nullptr;
};

// A compiled pre-tokenizer pattern. UTF + UCP so \p{L}, \s and (?i) are Unicode-aware like the
// Oniguruma engine HF uses; MATCH_INVALID_UTF so invalid UTF-8 in the input is never an error
// (such bytes match nothing and end up in the gaps between matches, one piece each run).
class Regex {
   public:
    Regex(const std::string& pattern, bool literal, const std::string& where) {
        int err = 0;
        PCRE2_SIZE off = 0;
        const uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
        // A {"String": ...} pattern matches itself: every ASCII punctuation escaped (PCRE2_LITERAL
        // does not combine with the UTF options).
        std::string pat;
        for (char c : pattern) {
            if ((unsigned char)c < 0x80 && !std::isalnum((unsigned char)c) && literal) pat += '\\';
            pat += c;
        }
        code_ = pcre2_compile((PCRE2_SPTR)pat.data(), pat.size(), opts, &err, &off, nullptr);
        if (!code_) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            fail("{}: PCRE2 cannot compile the pattern at offset {}: {}; the pattern is not one "
                 "this version reads (docs/tokenizers.md)",
                 where, (size_t)off, (const char*)msg);
        }
        // JIT when the platform has it: several times faster; the interpreter otherwise.
        pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
    }
    ~Regex() { pcre2_code_free(code_); }
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    // Cuts s[begin, end) into matches and the gaps between them (HF Split, behavior Isolated),
    // appending [b, e) pairs. Empty matches are skipped.
    void split(const std::string& s, size_t begin, size_t end,
               std::vector<std::pair<size_t, size_t>>& out, MatchData& m) const {
        const auto* subj = (PCRE2_SPTR)(s.data() + begin);
        const size_t n = end - begin;
        size_t pos = 0, last = 0;
        while (pos < n) {
            int rc = pcre2_match(code_, subj, n, pos, 0, m.md, m.ctx);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(rc, msg, sizeof msg);
                fail("pre-tokenizer regex failed at byte {} of the text: {}; split the text into "
                     "smaller parts",
                     begin + pos, (const char*)msg);
            }
            const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.md);
            size_t ms = ov[0], me = ov[1];
            if (me <= ms) {  // empty match: step over one character
                size_t k = utf8_valid_len(s, begin + ms);
                pos = ms + (k ? k : 1);
                continue;
            }
            if (ms > last) out.push_back({begin + last, begin + ms});
            out.push_back({begin + ms, begin + me});
            last = pos = me;
        }
        if (n > last) out.push_back({begin + last, end});
    }
   private:
    pcre2_code* code_ = nullptr;
};

// GPT-2's pattern: what ByteLevel with use_regex: true splits by (HF's byte_level.rs).
const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// ---- NFC ----
// PCRE2 matches but cannot normalise; ICU (libicu, Debian) does. Only runs of valid UTF-8 are
// normalised (invalid bytes pass through untouched); ASCII is NFC already and skips ICU.
std::string nfc(const std::string& s) {
    bool ascii = std::all_of(s.begin(), s.end(), [](char c) { return (unsigned char)c < 0x80; });
    if (ascii) return s;
    UErrorCode st = U_ZERO_ERROR;
    const icu::Normalizer2* norm = icu::Normalizer2::getNFCInstance(st);
    if (U_FAILURE(st)) fail("NFC normaliser unavailable (ICU: {})", u_errorName(st));
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        size_t j = i;
        while (j < s.size()) {
            size_t k = utf8_valid_len(s, j);
            if (!k) break;
            j += k;
        }
        if (j > i) {
            icu::StringByteSink<std::string> sink(&out);
            norm->normalizeUTF8(0, icu::StringPiece(s.data() + i, (int32_t)(j - i)), sink,
                                nullptr, st);
            if (U_FAILURE(st)) fail("NFC normalisation failed (ICU: {})", u_errorName(st));
        }
        if (j < s.size()) out += s[j++];  // one invalid byte, kept as it is
        i = j;
    }
    return out;
}

// ---- the tokenizer ----

struct PreStep {
    std::shared_ptr<Regex> regex;  // a Split, or ByteLevel's GPT-2 pattern (null: no split)
    bool byte_level = false;
    bool add_prefix_space = false;  // ByteLevel: " " before a piece that does not start with one
};

const char* kHint = "this tokenizer.json is not one moe.cpp reads (docs/tokenizers.md)";
const char* kDamaged = "restore tokenizer.json from the model's repository";

std::string show(const json& v) {
    std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
    return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

class BpeTokenizer : public Tokenizer {
   public:
    BpeTokenizer(const std::string& text, const std::string& where) : text_(text) {
        json j = parse_json_text(text, where, "a Hugging Face tokenizer.json");
        if (!j.is_object()) fail("{}: expected a JSON object; {}", where, kDamaged);
        // Model and pre-tokenizer first: what is not byte-level BPE says so before any detail.
        parse_model(j, where);
        parse_pre_tokenizer(j, where);
        parse_decoder(j, where);
        parse_added(j, where);
        parse_normalizer(j, where);
        // vocab_size = the highest id + 1 (the room left for holes is given back)
        size_t n = valid_.size();
        while (n > 0 && !valid_[n - 1]) n--;
        valid_.resize(n);
        bytes_.resize(n);
    }

    std::string kind() const override { return "bpe"; }
    int vocab_size() const override { return (int)bytes_.size(); }

    std::vector<int32_t> encode(const std::string& text) const override {
        std::vector<int32_t> out;
        out.reserve(text.size() / 3 + 1);
        std::vector<TextPiece> raw;
        raw_matcher_.split(text, 0, text.size(), raw);
        MatchData md;
        Cache cache;
        std::vector<TextPiece> norm_pieces;
        for (const TextPiece& p : raw) {
            if (p.id >= 0) {
                out.push_back(p.id);
                continue;
            }
            std::string seg = text.substr(p.begin, p.end - p.begin);
            if (nfc_) seg = nfc(seg);
            norm_pieces.clear();
            norm_matcher_.split(seg, 0, seg.size(), norm_pieces);
            for (const TextPiece& q : norm_pieces) {
                if (q.id >= 0)
                    out.push_back(q.id);
                else
                    encode_text(seg.substr(q.begin, q.end - q.begin), md, cache, out);
            }
        }
        return out;
    }

    std::string decode(const std::vector<int32_t>& ids) const override {
        std::string s;
        for (int32_t id : ids) s += piece_bytes(id);
        return s;
    }
    std::string piece(int32_t id) const override { return piece_bytes(id); }
    std::string piece_bytes(int32_t id) const override {
        if (id < 0 || id >= (int32_t)bytes_.size() || !valid_[id])
            fail("token id {} is not in the tokenizer's vocabulary ({} ids{}); use ids the "
                 "model's tokenizer gave",
                 id, bytes_.size(), id >= 0 && id < (int32_t)bytes_.size() ? ", a hole" : "");
        return bytes_[id];
    }
    int32_t token_id(const std::string& t) const override {
        auto a = added_ids_.find(t);
        if (a != added_ids_.end()) return a->second;
        auto v = vocab_.find(t);
        return v == vocab_.end() ? -1 : v->second;
    }
    void save(const std::string& dir) const override {
        write_file_atomic(dir + "/tokenizer.json", text_);
    }

   private:
    using Cache = std::unordered_map<std::string, std::vector<int32_t>>;

    void parse_model(const json& j, const std::string& where) {
        if (!j.contains("model") || !j["model"].is_object())
            fail("{}: key 'model' missing or not an object; {}", where, kDamaged);
        const json& m = j["model"];
        std::string type = m.contains("type") ? checked_str(m["type"], where + ": key 'model.type'")
                                              : std::string("BPE");
        if (type != "BPE")
            throw NotByteLevelError(fmt::format("{}: key 'model.type' is \"{}\": only byte-level BPE is read from tokenizer.json "
                 "(WordPiece, Unigram, WordLevel are not); {}",
                 where, type, kHint));
        static const json kNull;
        auto get = [&](const char* key) -> const json& { return m.contains(key) ? m[key] : kNull; };
        auto refuse_if = [&](const char* key, bool bad, const char* why) {
            if (bad) fail("{}: key 'model.{}' is {}: {}; {}", where, key, show(get(key)), why, kHint);
        };
        const json& bf = get("byte_fallback");
        if (bf.is_boolean() && bf.get<bool>())
            throw NotByteLevelError(fmt::format(
                "{}: key 'model.byte_fallback' is true: a SentencePiece-style BPE (Llama, "
                "Mistral), not byte-level; the folder's tokenizer.model is used when there is one",
                where));
        refuse_if("byte_fallback", !bf.is_boolean() && !bf.is_null(), "expected true or false");
        const json& dr = get("dropout");
        refuse_if("dropout", !dr.is_null() && !(dr.is_number() && dr.get<double>() == 0.0),
                  "BPE dropout (random merges) is for training, not implemented");
        for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
            const json& v = get(k);
            refuse_if(k, !v.is_null() && !(v.is_string() && v.get<std::string>().empty()),
                      "subword prefixes/suffixes are not byte-level BPE");
        }
        if (m.contains("ignore_merges")) {
            if (!m["ignore_merges"].is_boolean())
                fail("{}: key 'model.ignore_merges' is {}: expected true or false; {}", where,
                     show(m["ignore_merges"]), kDamaged);
            ignore_merges_ = m["ignore_merges"].get<bool>();
        }
        if (!m.contains("vocab") || !m["vocab"].is_object() || m["vocab"].empty())
            fail("{}: key 'model.vocab' missing or not a non-empty object; {}", where, kDamaged);
        if (!m.contains("merges") || !m["merges"].is_array())
            fail("{}: key 'model.merges' missing or not an array; {}", where, kDamaged);

        // Ids must be dense enough: below the count of vocabulary and added entries (+ 1024 for
        // a few holes), so no table is sized by a number the file merely claims.
        const json& v = m["vocab"];
        size_t n_added = j.contains("added_tokens") && j["added_tokens"].is_array()
                             ? j["added_tokens"].size() : 0;
        id_bound_ = (int64_t)(v.size() + n_added) + 1024;
        bytes_.assign(id_bound_, std::string());
        valid_.assign(id_bound_, 0);
        vocab_.reserve(v.size());
        for (auto it = v.begin(); it != v.end(); ++it) {
            int64_t id = checked_int(it.value(), where + ": key 'model.vocab." + it.key() + "'",
                                     Range::in(0, (double)id_bound_ - 1));
            if (valid_[id])
                fail("{}: key 'model.vocab': id {} is given to two pieces; {}", where, id,
                     kDamaged);
            valid_[id] = 1;
            bytes_[id] = piece_to_bytes(it.key());
            vocab_.emplace(it.key(), (int32_t)id);
        }
        std::fill(byte_id_, byte_id_ + 256, -1);
        const ByteMap& bm = byte_map();
        for (int b = 0; b < 256; b++) {
            auto it = vocab_.find(bm.to_str[b]);
            if (it != vocab_.end()) byte_id_[b] = it->second;
        }
        if (m.contains("unk_token") && !m["unk_token"].is_null()) {
            std::string u = checked_str(m["unk_token"], where + ": key 'model.unk_token'");
            auto it = vocab_.find(u);
            if (it == vocab_.end())
                fail("{}: key 'model.unk_token' \"{}\" is not in model.vocab; {}", where, u,
                     kDamaged);
            unk_ = it->second;
        }

        const json& ms = m["merges"];
        merges_.reserve(ms.size());
        for (size_t r = 0; r < ms.size(); r++) {
            const json& e = ms[r];
            std::string a, b;
            std::string key = fmt::format("{}: key 'model.merges[{}]'", where, r);
            if (e.is_string()) {  // "a b" (older files)
                const std::string& s = e.get_ref<const std::string&>();
                size_t sp = s.find(' ');
                if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size() ||
                    s.find(' ', sp + 1) != std::string::npos)
                    fail("{}: \"{}\" is not two pieces separated by one space; {}", key,
                         show(e).substr(1, std::min<size_t>(60, s.size())), kDamaged);
                a = s.substr(0, sp), b = s.substr(sp + 1);
            } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
                a = e[0].get<std::string>(), b = e[1].get<std::string>();  // ["a", "b"] (newer)
            } else {
                fail("{}: {} is neither \"a b\" nor [\"a\", \"b\"]; {}", key, show(e), kDamaged);
            }
            auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
            if (ia == vocab_.end() || ib == vocab_.end() || iab == vocab_.end())
                fail("{}: merge \"{} {}\" names a piece not in model.vocab (\"{}\"); {}", key, a,
                     b, ia == vocab_.end() ? a : ib == vocab_.end() ? b : a + b, kDamaged);
            uint64_t k = pair_key(ia->second, ib->second);
            merges_.emplace(k, Merge{(int32_t)r, iab->second});  // a repeated pair keeps its first rank
        }
    }

    void parse_added(const json& j, const std::string& where) {
        if (!j.contains("added_tokens") || j["added_tokens"].is_null()) return;
        if (!j["added_tokens"].is_array())
            fail("{}: key 'added_tokens' is not an array; {}", where, kDamaged);
        std::vector<AddedToken> raw, norm;
        const json& a = j["added_tokens"];
        for (size_t i = 0; i < a.size(); i++) {
            std::string w = fmt::format("{}: added_tokens[{}]", where, i);
            const json& t = a[i];
            if (!t.is_object()) fail("{}: not an object; {}", w, kDamaged);
            AddedToken at;
            at.id = (int32_t)json_int(t, "id", w, Range::in(0, (double)id_bound_ - 1));
            at.content = json_str(t, "content", w, {}, "");
            if (at.content.empty()) fail("{}: key 'content' missing or empty; {}", w, kDamaged);
            at.lstrip = json_bool(t, "lstrip", w, false);
            at.rstrip = json_bool(t, "rstrip", w, false);
            at.normalized = json_bool(t, "normalized", w, false);
            at.special = json_bool(t, "special", w, false);
            if (json_bool(t, "single_word", w, false))
                fail("{}: key 'single_word' is true for \"{}\": matching whole words only is "
                     "not implemented; {}",
                     w, at.content, kHint);
            // HF: an added token overrides the vocabulary's text for its id.
            valid_[at.id] = 1;
            bytes_[at.id] = piece_to_bytes(at.content);
            added_ids_[at.content] = at.id;
            (at.normalized ? norm : raw).push_back(at);
        }
        raw_matcher_ = AddedTokenMatcher(raw);
        norm_matcher_ = AddedTokenMatcher(norm);
    }

    // A normalizer that is null, NFC, or a Sequence of those.
    void parse_normalizer(const json& j, const std::string& where) {
        if (!j.contains("normalizer")) return;
        parse_normalizer_node(j["normalizer"], where, "normalizer");
    }
    void parse_normalizer_node(const json& n, const std::string& where, const std::string& key) {
        if (n.is_null()) return;
        std::string type = n.is_object() && n.contains("type") && n["type"].is_string()
                               ? n["type"].get<std::string>() : show(n);
        if (type == "NFC") {
            nfc_ = true;
        } else if (type == "Sequence" && n.contains("normalizers") &&
                   n["normalizers"].is_array()) {
            for (size_t i = 0; i < n["normalizers"].size(); i++)
                parse_normalizer_node(n["normalizers"][i], where,
                                      fmt::format("{}.normalizers[{}]", key, i));
        } else {
            fail("{}: key '{}.type' is \"{}\": only no normalizer or NFC is implemented for "
                 "byte-level BPE; {}",
                 where, key, type, kHint);
        }
    }

    void parse_pre_tokenizer(const json& j, const std::string& where) {
        if (j.contains("pre_tokenizer")) parse_pre_node(j["pre_tokenizer"], where, "pre_tokenizer");
        bool byte_level = std::any_of(steps_.begin(), steps_.end(),
                                      [](const PreStep& s) { return s.byte_level; });
        if (!byte_level)
            throw NotByteLevelError(fmt::format(
                "{}: key 'pre_tokenizer' has no ByteLevel step: the BPE is not byte-level (a "
                "Metaspace/SentencePiece-style tokenizer.json); the folder's tokenizer.model is "
                "used when there is one",
                where));
    }
    void parse_pre_node(const json& n, const std::string& where, const std::string& key) {
        if (n.is_null()) return;
        if (!n.is_object() || !n.contains("type") || !n["type"].is_string())
            fail("{}: key '{}' is {}: expected an object with a \"type\"; {}", where, key, show(n),
                 kDamaged);
        std::string type = n["type"].get<std::string>();
        if (type == "Sequence") {
            if (!n.contains("pretokenizers") || !n["pretokenizers"].is_array())
                fail("{}: key '{}.pretokenizers' missing or not an array; {}", where, key,
                     kDamaged);
            for (size_t i = 0; i < n["pretokenizers"].size(); i++)
                parse_pre_node(n["pretokenizers"][i], where,
                               fmt::format("{}.pretokenizers[{}]", key, i));
        } else if (type == "Split") {
            std::string behavior = json_str(n, "behavior", where + ": " + key, {}, "Isolated");
            if (behavior != "Isolated")
                fail("{}: key '{}.behavior' is \"{}\": only Isolated is implemented; {}", where,
                     key, behavior, kHint);
            if (json_bool(n, "invert", where + ": " + key, false))
                fail("{}: key '{}.invert' is true: not implemented; {}", where, key, kHint);
            const json& p = n.contains("pattern") ? n["pattern"] : json();
            bool literal = p.is_object() && p.contains("String") && p["String"].is_string();
            bool regex = p.is_object() && p.contains("Regex") && p["Regex"].is_string();
            if (!literal && !regex)
                fail("{}: key '{}.pattern' is {}: expected {{\"Regex\": ...}} or "
                     "{{\"String\": ...}}; {}",
                     where, key, show(p), kDamaged);
            std::string pat = p[regex ? "Regex" : "String"].get<std::string>();
            if (pat.empty()) fail("{}: key '{}.pattern' is empty; {}", where, key, kDamaged);
            PreStep s;
            s.regex = std::make_shared<Regex>(
                pat, literal, fmt::format("{}: key '{}.pattern.{}'", where, key,
                                          regex ? "Regex" : "String"));
            steps_.push_back(s);
        } else if (type == "ByteLevel") {
            std::string k = where + ": " + key;
            PreStep s;
            s.byte_level = true;
            s.add_prefix_space = json_bool(n, "add_prefix_space", k, true);
            if (json_bool(n, "use_regex", k, true))
                s.regex = std::make_shared<Regex>(kGpt2Pattern, false, "GPT-2 pattern");
            steps_.push_back(s);
        } else {
            fail("{}: key '{}.type' is \"{}\": only ByteLevel, Split (Isolated) and Sequence "
                 "pre-tokenizers are implemented; {}",
                 where, key, type, kHint);
        }
    }

    void parse_decoder(const json& j, const std::string& where) {
        const json d = j.contains("decoder") ? j["decoder"] : json();
        std::string type = d.is_object() && d.contains("type") && d["type"].is_string()
                               ? d["type"].get<std::string>() : show(d);
        if (type != "ByteLevel")
            fail("{}: key 'decoder.type' is \"{}\": byte-level BPE needs the ByteLevel decoder; "
                 "{}",
                 where, type, kHint);
    }

    // Pre-tokenizers, then BPE on each piece.
    void encode_text(const std::string& seg, MatchData& md, Cache& cache,
                     std::vector<int32_t>& out) const {
        std::vector<std::string> pieces{seg}, next;
        std::vector<std::pair<size_t, size_t>> cuts;
        for (const PreStep& st : steps_) {
            next.clear();
            for (std::string& p : pieces) {
                if (st.add_prefix_space && (p.empty() || p[0] != ' ')) p.insert(p.begin(), ' ');
                if (!st.regex) {
                    next.push_back(std::move(p));
                    continue;
                }
                cuts.clear();
                st.regex->split(p, 0, p.size(), cuts, md);
                for (auto& c : cuts) next.push_back(p.substr(c.first, c.second - c.first));
            }
            pieces.swap(next);
        }
        for (const std::string& w : pieces) {
            if (w.empty()) continue;
            auto it = cache.find(w);
            if (it == cache.end()) {
                std::vector<int32_t> ids;
                bpe_word(w, ids);
                if (cache.size() > 200000) cache.clear();  // bounded memory on huge inputs
                it = cache.emplace(w, std::move(ids)).first;
            }
            out.insert(out.end(), it->second.begin(), it->second.end());
        }
    }

    struct Merge {
        int32_t rank, id;
    };
    static uint64_t pair_key(int32_t a, int32_t b) {
        return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    }
    const Merge* find_merge(int32_t a, int32_t b) const {
        auto it = merges_.find(pair_key(a, b));
        return it == merges_.end() ? nullptr : &it->second;
    }

    // BPE on one piece's bytes: a min-heap of candidate merges keyed by (rank, position), so the
    // lowest rank goes first and equal ranks go left to right (HF's order); O(n log n), so one
    // long piece (a megabyte without a space) cannot take quadratic time.
    void bpe_word(const std::string& w, std::vector<int32_t>& ids) const {
        const int n = (int)w.size();
        if (ignore_merges_) {  // Llama-3 style: a piece in the vocabulary is one token
            std::string mapped;
            for (unsigned char c : w) mapped += byte_map().to_str[c];
            auto it = vocab_.find(mapped);
            if (it != vocab_.end()) {
                ids.push_back(it->second);
                return;
            }
        }
        std::vector<int32_t> sym(n);
        std::vector<int> nxt(n), prv(n);
        for (int i = 0; i < n; i++) {
            int32_t id = byte_id_[(unsigned char)w[i]];
            if (id < 0) {
                if (unk_ < 0)
                    fail("byte 0x{:02X} has no token in the vocabulary and there is no "
                         "unk_token; the tokenizer.json is not byte-level over all 256 bytes",
                         (unsigned)(unsigned char)w[i]);
                id = unk_;
            }
            sym[i] = id, nxt[i] = i + 1, prv[i] = i - 1;
        }
        struct Cand {
            int32_t rank;
            int left, right;
            int32_t a, b, id;
            bool operator>(const Cand& o) const {
                return rank != o.rank ? rank > o.rank : left > o.left;
            }
        };
        std::vector<Cand> heap;
        auto push = [&](int l, int r) {
            if (l < 0 || r >= n) return;
            if (const Merge* m = find_merge(sym[l], sym[r])) {
                heap.push_back({m->rank, l, r, sym[l], sym[r], m->id});
                std::push_heap(heap.begin(), heap.end(), std::greater<Cand>());
            }
        };
        for (int i = 0; i + 1 < n; i++) push(i, i + 1);
        while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end(), std::greater<Cand>());
            Cand c = heap.back();
            heap.pop_back();
            // Stale when either side was merged away or changed since the candidate was pushed.
            if (sym[c.left] != c.a || nxt[c.left] != c.right || sym[c.right] != c.b) continue;
            sym[c.left] = c.id;
            sym[c.right] = -1;
            nxt[c.left] = nxt[c.right];
            if (nxt[c.right] < n) prv[nxt[c.right]] = c.left;
            push(prv[c.left], c.left);
            push(c.left, nxt[c.left]);
        }
        for (int i = 0; i < n; i = nxt[i]) ids.push_back(sym[i]);
    }

    std::string text_;                              // the file, for save()
    std::unordered_map<std::string, int32_t> vocab_;  // piece as written in the file -> id
    std::unordered_map<std::string, int32_t> added_ids_;
    std::vector<std::string> bytes_;  // id -> the bytes it stands for
    std::vector<uint8_t> valid_;      // id -> has a token (ids may have holes)
    int64_t id_bound_ = 0;
    int32_t byte_id_[256];
    int32_t unk_ = -1;
    bool ignore_merges_ = false, nfc_ = false;
    std::unordered_map<uint64_t, Merge> merges_;
    AddedTokenMatcher raw_matcher_, norm_matcher_;
    std::vector<PreStep> steps_;
};

}  // namespace

std::unique_ptr<Tokenizer> bpe_tokenizer_from_json(const std::string& text,
                                                   const std::string& where) {
    try {
        return std::make_unique<BpeTokenizer>(text, where);
    } catch (const json::exception& e) {  // a type the checks above missed: still one clean line
        fail("{}: unexpected JSON structure ({}); {}", where, e.what(), kDamaged);
    }
}

std::vector<std::string> regex_split(const std::string& pattern, const std::string& text) {
    Regex re(pattern, false, "pattern");
    MatchData md;
    std::vector<std::pair<size_t, size_t>> cuts;
    re.split(text, 0, text.size(), cuts, md);
    std::vector<std::string> out;
    for (auto& c : cuts) out.push_back(text.substr(c.first, c.second - c.first));
    return out;
}

}  // namespace moe
