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
    virtual std::string piece(int32_t id) const = 0;  // the text of one token
    virtual void save(const std::string& dir) const = 0;  // vocab.json or tokenizer.model, atomic
};

// Loads whichever tokenizer a checkpoint folder holds (vocab.json or tokenizer.model).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);

}  // namespace moe
