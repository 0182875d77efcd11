// Character and SentencePiece tokenizers (include/moe/tokenizer.h).
#include "moe/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "data/added_tokens.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/gguf.h"

namespace moe {

using json = nlohmann::json;

// Length of the UTF-8 code point starting at s[i]; 1 for a byte that does not start a valid one
// (so arbitrary bytes still tokenize, one symbol per stray byte).
size_t utf8_symbol_len(const std::string& s, size_t i) {
    unsigned char c = (unsigned char)s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) return 1;
    for (size_t j = 1; j < n; j++)
        if (((unsigned char)s[i + j] >> 6) != 0x2) return 1;
    return n;
}

// A symbol as a user can read it in an error message: 'x', or U+000A for control characters.
std::string show_symbol(const std::string& sym) {
    if (sym.size() == 1 && ((unsigned char)sym[0] < 0x20 || sym[0] == 0x7f))
        return fmt::format("U+{:04X}", (unsigned)(unsigned char)sym[0]);
    if (sym.size() == 1 && (unsigned char)sym[0] >= 0x80)
        return fmt::format("byte 0x{:02X}", (unsigned)(unsigned char)sym[0]);
    return "'" + sym + "'";
}

class CharTokenizer : public Tokenizer {
   public:
    explicit CharTokenizer(std::vector<std::string> symbols) : symbols_(std::move(symbols)) {
        std::fill(byte_id_, byte_id_ + 256, -1);
        for (size_t i = 0; i < symbols_.size(); i++) {
            const std::string& s = symbols_[i];
            if (s.empty()) fail("char vocabulary: symbol {} is empty", i);
            if (!ids_.emplace(s, (int32_t)i).second)
                fail("char vocabulary: symbol {} appears twice", show_symbol(s));
            if (s.size() == 1) byte_id_[(unsigned char)s[0]] = (int32_t)i;
        }
    }
    std::string kind() const override { return "char"; }
    int vocab_size() const override { return (int)symbols_.size(); }

    std::vector<int32_t> encode(const std::string& text) const override {
        std::vector<int32_t> out;
        out.reserve(text.size());
        for (size_t i = 0; i < text.size();) {
            size_t n = utf8_symbol_len(text, i);
            int32_t id = -1;
            if (n == 1) {
                id = byte_id_[(unsigned char)text[i]];
            } else {
                auto it = ids_.find(text.substr(i, n));
                if (it != ids_.end()) id = it->second;
            }
            if (id < 0)
                fail("symbol {} at byte {} is not in the character vocabulary ({} symbols)",
                     show_symbol(text.substr(i, n)), i, symbols_.size());
            out.push_back(id);
            i += n;
        }
        return out;
    }
    std::string decode(const std::vector<int32_t>& ids) const override {
        std::string s;
        for (int32_t id : ids) s += piece(id);
        return s;
    }
    std::string piece(int32_t id) const override {
        if (id < 0 || id >= (int32_t)symbols_.size())
            fail("token id {} outside the character vocabulary (0..{})", id, symbols_.size() - 1);
        return symbols_[id];
    }
    void save(const std::string& dir) const override {
        json j = symbols_;
        // Invalid UTF-8 bytes cannot go through JSON text; replace would lose them, so refuse.
        std::string text;
        try {
            text = j.dump() + "\n";
        } catch (const std::exception& e) {
            fail("char vocabulary: cannot save as JSON ({}): the corpus is not valid UTF-8",
                 e.what());
        }
        write_file_atomic(dir + "/vocab.json", text);
    }

   private:
    std::vector<std::string> symbols_;
    std::unordered_map<std::string, int32_t> ids_;
    int32_t byte_id_[256];
};

std::unique_ptr<Tokenizer> char_tokenizer_from_symbols(const std::vector<std::string>& symbols) {
    return std::make_unique<CharTokenizer>(symbols);
}

std::unique_ptr<Tokenizer> build_char_tokenizer(const std::string& corpus) {
    if (corpus.empty()) fail("cannot build a character vocabulary from an empty text");
    bool seen[256] = {};
    std::set<std::string> multi;
    for (size_t i = 0; i < corpus.size();) {
        size_t n = utf8_symbol_len(corpus, i);
        if (n == 1)
            seen[(unsigned char)corpus[i]] = true;
        else
            multi.insert(corpus.substr(i, n));
        i += n;
    }
    std::set<std::string> all(multi.begin(), multi.end());
    for (int b = 0; b < 256; b++)
        if (seen[b]) all.insert(std::string(1, (char)b));
    // std::set<std::string> orders by bytes: for UTF-8 that is code point order.
    return std::make_unique<CharTokenizer>(std::vector<std::string>(all.begin(), all.end()));
}

// ---- SentencePiece ----

// Two modes. moe.cpp's own models (trained by train_sentencepiece): lines are encoded one by one
// and each newline is the byte piece <0x0A>, as in training. A Hugging Face folder's model
// (Mixtral): the text between added tokens goes to the model whole, so the dummy prefix, byte
// fallback and unknown pieces are exactly as the model file sets them (as HF does).
class SpTokenizer : public Tokenizer {
   public:
    SpTokenizer(const std::string& serialized, const std::string& where, bool hf,
                const std::vector<std::pair<std::string, int32_t>>& added)
        : model_(serialized), hf_(hf) {
        auto st = sp_.LoadFromSerializedProto(serialized);
        if (!st.ok()) fail("{}: cannot load SentencePiece model: {}", where, st.ToString());
        newline_id_ = sp_.PieceToId("<0x0A>");
        if (!hf && newline_id_ == sp_.unk_id())
            fail("{}: SentencePiece model has no byte piece <0x0A> (train with byte_fallback)",
                 where);
        std::vector<AddedToken> tokens;
        for (auto& [content, id] : added) {
            if (content.empty() || id < 0 || id >= sp_.GetPieceSize())
                fail(
                    "{}: added token \"{}\" with id {} outside the model's {} pieces; use the "
                    "tokenizer files of one model",
                    where, content, id, sp_.GetPieceSize());
            AddedToken t;
            t.content = content, t.id = id;
            tokens.push_back(t);
            added_ids_[content] = id;
        }
        added_ = AddedTokenMatcher(tokens);
        // A dummy prefix shows as "▁" on the first piece of "a"; decoding then drops the first
        // leading space, which a streaming decoder must know.
        std::vector<std::string> pieces;
        if (sp_.Encode("a", &pieces).ok() && !pieces.empty())
            strips_space_ = pieces[0].rfind("\xe2\x96\x81", 0) == 0;
    }
    std::string kind() const override { return "sentencepiece"; }
    int vocab_size() const override { return sp_.GetPieceSize(); }
    std::vector<int32_t> encode(const std::string& text) const override {
        if (hf_) return encode_hf(text);
        std::vector<int32_t> out;
        size_t start = 0;
        while (start <= text.size()) {
            size_t nl = text.find('\n', start);
            size_t end = nl == std::string::npos ? text.size() : nl;
            if (end > start) {
                std::vector<int> ids;
                auto st = sp_.Encode(std::string_view(text.data() + start, end - start), &ids);
                if (!st.ok())
                    fail("SentencePiece encode failed at byte {}: {}", start, st.ToString());
                for (int id : ids) {
                    if (id == sp_.unk_id())
                        fail("SentencePiece: unknown symbol in the line starting at byte {}",
                             start);
                    out.push_back(id);
                }
            }
            if (nl == std::string::npos) break;
            out.push_back(newline_id_);
            start = nl + 1;
        }
        return out;
    }
    std::string decode(const std::vector<int32_t>& ids) const override {
        std::vector<int> v(ids.begin(), ids.end());
        for (int id : v) check_id(id);
        std::string s;
        auto st = sp_.Decode(v, &s);
        if (!st.ok()) fail("SentencePiece decode failed: {}", st.ToString());
        return s;
    }
    std::string piece(int32_t id) const override { return decode({id}); }
    // The piece's own bytes: "▁" is a space, <0xHH> is byte HH, control pieces (<s>) are empty,
    // as libsentencepiece decodes them, only without its first-space rule and byte grouping.
    std::string piece_bytes(int32_t id) const override {
        check_id(id);
        if (sp_.IsControl(id)) return "";
        if (sp_.IsUnknown(id)) return decode({id});
        const std::string& p = sp_.IdToPiece(id);
        if (sp_.IsByte(id) && p.size() == 6)
            return std::string(1, (char)std::stoi(p.substr(3, 2), nullptr, 16));
        std::string out;
        for (size_t i = 0; i < p.size();) {
            if (p.compare(i, 3, "\xe2\x96\x81") == 0) {
                out += ' ';
                i += 3;
            } else {
                out += p[i++];
            }
        }
        return out;
    }
    bool strips_leading_space() const override { return strips_space_; }
    int32_t token_id(const std::string& t) const override {
        auto a = added_ids_.find(t);
        if (a != added_ids_.end()) return a->second;
        int id = sp_.PieceToId(t);
        return id == sp_.unk_id() && sp_.IdToPiece(id) != t ? -1 : id;
    }
    void save(const std::string& dir) const override {
        write_file_atomic(dir + "/tokenizer.model", model_);
    }

   private:
    void check_id(int id) const {
        if (id < 0 || id >= sp_.GetPieceSize())
            fail(
                "token id {} outside the SentencePiece vocabulary (0..{}); use ids the model's "
                "tokenizer gave",
                id, sp_.GetPieceSize() - 1);
    }
    std::vector<int32_t> encode_hf(const std::string& text) const {
        std::vector<TextPiece> cuts;
        added_.split(text, 0, text.size(), cuts);
        std::vector<int32_t> out;
        std::vector<int> ids;
        for (const TextPiece& c : cuts) {
            if (c.id >= 0) {
                out.push_back(c.id);
                continue;
            }
            auto st = sp_.Encode(std::string_view(text.data() + c.begin, c.end - c.begin), &ids);
            if (!st.ok())
                fail("SentencePiece encode failed at byte {}: {}", c.begin, st.ToString());
            out.insert(out.end(), ids.begin(), ids.end());
        }
        return out;
    }

    std::string model_;
    sentencepiece::SentencePieceProcessor sp_;
    bool hf_ = false, strips_space_ = false;
    int newline_id_ = 0;
    AddedTokenMatcher added_;
    std::unordered_map<std::string, int32_t> added_ids_;
};

namespace {
// Feeds the corpus' lines to the SentencePiece trainer (newlines are handled outside the model).
class LineIterator : public sentencepiece::SentenceIterator {
   public:
    explicit LineIterator(const std::string& text) : text_(text) { Next(); }
    bool done() const override { return done_; }
    void Next() override {
        while (pos_ <= text_.size()) {
            size_t nl = text_.find('\n', pos_);
            size_t end = nl == std::string::npos ? text_.size() : nl;
            value_.assign(text_, pos_, end - pos_);
            pos_ = end + 1;
            if (!value_.empty()) return;
        }
        done_ = true;
    }
    const std::string& value() const override { return value_; }
    sentencepiece::util::Status status() const override { return {}; }

   private:
    const std::string& text_;
    size_t pos_ = 0;
    std::string value_;
    bool done_ = false;
};
}  // namespace

std::unique_ptr<Tokenizer> train_sentencepiece(const std::string& corpus, int vocab_size,
                                               const std::string& model_type) {
    if (corpus.empty()) fail("cannot train SentencePiece on an empty text");
    if (model_type != "bpe" && model_type != "unigram")
        fail("sentencepiece model type '{}' (bpe or unigram)", model_type);
    if (vocab_size < 260)
        fail("sentencepiece vocab_size={} too small: byte fallback needs 256 byte pieces + 4",
             vocab_size);
    LineIterator it(corpus);
    std::unordered_map<std::string, std::string> args = {
        {"model_type", model_type},
        {"vocab_size", std::to_string(vocab_size)},
        {"character_coverage", "1.0"},
        {"byte_fallback", "true"},
        {"normalization_rule_name", "identity"},
        {"remove_extra_whitespaces", "false"},
        {"add_dummy_prefix", "false"},
        {"split_digits", "true"},
        {"hard_vocab_limit", "false"},
        {"num_threads", "1"},  // deterministic
        {"minloglevel", "2"},
        {"model_prefix", ""},
    };
    std::string model;
    auto st = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
    if (!st.ok()) fail("SentencePiece training failed: {}", st.ToString());
    return std::make_unique<SpTokenizer>(model, "trained SentencePiece model", false,
                                         std::vector<std::pair<std::string, int32_t>>{});
}

std::unique_ptr<Tokenizer> sentencepiece_from_model(const std::string& serialized,
                                                    const std::string& where) {
    return std::make_unique<SpTokenizer>(serialized, where, false,
                                         std::vector<std::pair<std::string, int32_t>>{});
}

std::unique_ptr<Tokenizer> sentencepiece_hf_from_model(
    const std::string& serialized, const std::string& where,
    const std::vector<std::pair<std::string, int32_t>>& added) {
    return std::make_unique<SpTokenizer>(serialized, where, true, added);
}

std::unique_ptr<Tokenizer> char_tokenizer_from_json(const std::string& text,
                                                    const std::string& vocab) {
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded())
        fail("{}: not valid JSON; the checkpoint's tokenizer is damaged (restore vocab.json)",
             vocab);
    if (!j.is_array() || j.empty() || j.size() > (1u << 24))
        fail("{}: expected a non-empty JSON array of symbols; restore vocab.json", vocab);
    std::vector<std::string> syms;
    for (auto& s : j) {
        if (!s.is_string())
            fail("{}: every entry must be a string, got {}; restore vocab.json", vocab,
                 s.dump(-1, ' ', false, json::error_handler_t::replace));
        syms.push_back(s.get<std::string>());
    }
    try {
        return char_tokenizer_from_symbols(syms);
    } catch (const Error& e) {
        fail("{}: {}; restore vocab.json", vocab, e.what());
    }
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
    if (is_gguf_file(dir)) return gguf_tokenizer(GgufFile::open(dir));
    std::string vocab = dir + "/vocab.json", spm = dir + "/tokenizer.model";
    if (file_exists(vocab)) return char_tokenizer_from_json(read_file(vocab), vocab);
    // moe.cpp's checkpoints never write these two: their presence means a Hugging Face folder.
    bool hf = file_exists(dir + "/tokenizer.json") || file_exists(dir + "/tokenizer_config.json");
    if (file_exists(spm) && !hf) return sentencepiece_from_model(read_file(spm), spm);
    return load_hf_tokenizer(dir);
}

// ---- streaming decode ----

size_t utf8_complete_prefix(const std::string& s) {
    // Look back at most 3 bytes for the start of a character that the end cuts short.
    size_t n = s.size();
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xc0) == 0x80) continue;  // a continuation byte: look further back
        size_t need = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

std::string StreamDecoder::push(int32_t id) {
    std::string b = tok_.piece_bytes(id);
    if (!started_ && !b.empty()) {
        if (tok_.strips_leading_space() && b[0] == ' ') b.erase(0, 1);
        started_ = true;
    }
    pending_ += b;
    size_t k = utf8_complete_prefix(pending_);
    std::string out = pending_.substr(0, k);
    pending_.erase(0, k);
    return out;
}

std::string StreamDecoder::flush() {
    std::string out;
    out.swap(pending_);
    return out;
}

}  // namespace moe
