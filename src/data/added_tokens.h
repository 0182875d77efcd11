// Added tokens of a Hugging Face tokenizer ("<|im_start|>", "<s>", runs of spaces in GPT-NeoX's
// vocabulary): matched verbatim in the input before any other step, leftmost first and the
// longest at one position, as HF's AddedVocabulary does. Shared by the byte-level BPE and the
// SentencePiece tokenizer of HF folders.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/error.h"

namespace moe {

// A tokenizer.json that is valid but not byte-level BPE (WordPiece, Unigram, a Metaspace /
// byte-fallback BPE such as Mixtral's): load_hf_tokenizer then tries tokenizer.model.
struct NotByteLevelError : Error {
    using Error::Error;
};

struct AddedToken {
    std::string content;
    int32_t id = -1;
    bool lstrip = false, rstrip = false;  // also take the whitespace left / right of the match
    bool normalized = false;              // matched in the normalized text (after NFC)
    bool special = false;
};

// A cut of a text: [begin, end) is plain text (id < 0) or one added token (id >= 0).
struct TextPiece {
    size_t begin = 0, end = 0;
    int32_t id = -1;
};

class AddedTokenMatcher {
   public:
    AddedTokenMatcher() = default;
    explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);
    bool empty() const { return tokens_.empty(); }
    // Cuts s[begin, end) into plain text and added tokens, appending to `out`.
    void split(const std::string& s, size_t begin, size_t end, std::vector<TextPiece>& out) const;

   private:
    std::vector<AddedToken> tokens_;
    std::vector<std::vector<int>> by_first_byte_;  // [256] -> tokens, longest first
};

// Strict UTF-8: the length of the valid character at s[i] (1..4), or 0 when it is not one
// (stray continuation byte, overlong form, surrogate, beyond U+10FFFF, cut short).
size_t utf8_valid_len(const std::string& s, size_t i);
void append_utf8(std::string& out, uint32_t cp);

}  // namespace moe
