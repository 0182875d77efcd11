// Tokenizers: character level (vocab = the corpus' symbols, saved as vocab.json, a JSON array of
// the symbols in id order) and SentencePiece (BPE or unigram, saved as tokenizer.model).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe {

class Tokenizer {
   public:
    virtual ~Tokenizer() = default;
    virtual std::string kind() const = 0;  // "char" or "sentencepiece"
    virtual int vocab_size() const = 0;
    // Throws moe::Error naming the first symbol outside the vocabulary and its byte offset.
    virtual std::vector<int32_t> encode(const std::string& text) const = 0;
    virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
    virtual std::string piece(int32_t id) const = 0;      // the text of one token
    virtual void save(const std::string& dir) const = 0;  // vocab.json or tokenizer.model, atomic
};

// Loads whichever tokenizer a checkpoint folder holds (vocab.json or tokenizer.model).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);

// Character level: a symbol is one UTF-8 code point (bytes for invalid UTF-8); the vocabulary is
// the sorted distinct symbols of `corpus` (byte order = code point order for UTF-8), so Tiny
// Shakespeare gives nanoGPT's 65 ids in nanoGPT's order.
std::unique_ptr<Tokenizer> build_char_tokenizer(const std::string& corpus);
std::unique_ptr<Tokenizer> char_tokenizer_from_symbols(const std::vector<std::string>& symbols);
// vocab.json's text (a JSON array of the symbols in id order); `where` names it in errors.
std::unique_ptr<Tokenizer> char_tokenizer_from_json(const std::string& text,
                                                    const std::string& where);

// SentencePiece trained on `corpus` (model_type "bpe" or "unigram"). Identity normalisation,
// no dummy prefix and byte fallback, so decode(encode(text)) == text for any text; newlines are
// the byte piece <0x0A>. Deterministic for a given corpus and settings.
std::unique_ptr<Tokenizer> train_sentencepiece(const std::string& corpus, int vocab_size,
                                               const std::string& model_type);
std::unique_ptr<Tokenizer> sentencepiece_from_model(const std::string& serialized_model,
                                                    const std::string& where);

// The char tokenizer's symbols: the length of the UTF-8 code point at s[i] (1 for a stray byte),
// and a symbol as a user reads it in an error message ('x', U+000A, byte 0xFF).
size_t utf8_symbol_len(const std::string& s, size_t i);
std::string show_symbol(const std::string& sym);

}  // namespace moe
