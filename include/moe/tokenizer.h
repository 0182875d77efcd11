// Tokenizers: character level (vocab = the corpus' symbols, saved as vocab.json, a JSON array of
// the symbols in id order), SentencePiece (BPE or unigram, saved as tokenizer.model), and the
// tokenizers of Hugging Face model folders (byte-level BPE from tokenizer.json, SentencePiece from
// tokenizer.model, special tokens from tokenizer_config.json; docs/tokenizers.md).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe {

// What a model's own files say about its special tokens (tokenizer_config.json,
// generation_config.json). encode() never adds any of them: the caller puts `bos` first when
// `add_bos` is set (and `eos[0]` last when `add_eos`), and stops generating at any id of `eos`.
struct SpecialTokens {
    int32_t bos = -1;           // -1: none
    std::vector<int32_t> eos;   // every id that ends a generation (generation_config first)
    bool add_bos = false;       // tokenizer_config.json add_bos_token
    bool add_eos = false;       // tokenizer_config.json add_eos_token
    std::string chat_template;  // Jinja text, empty when there is none
};

class Tokenizer {
   public:
    virtual ~Tokenizer() = default;
    // "char", "sentencepiece" or "bpe" (byte-level BPE of a tokenizer.json)
    virtual std::string kind() const = 0;
    virtual int vocab_size() const = 0;
    // Throws moe::Error naming the first symbol outside the vocabulary and its byte offset.
    // Special tokens written in the text ("<|im_start|>") become their ids (HF tokenizers do the
    // same); BOS/EOS are never added here (see SpecialTokens).
    virtual std::vector<int32_t> encode(const std::string& text) const = 0;
    // Throws moe::Error for an id outside 0..vocab_size()-1 (or a hole in the vocabulary).
    virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
    virtual std::string piece(int32_t id) const = 0;      // the text of one token
    virtual void save(const std::string& dir) const = 0;  // vocab.json or tokenizer.model, atomic

    // The bytes one token adds to the decoded text, for printing token by token: may end inside
    // a UTF-8 character (a byte-level or byte-fallback token), so buffer them (StreamDecoder).
    // Concatenated they give decode(ids), except that a SentencePiece model with a dummy prefix
    // drops the first leading space (strips_leading_space()).
    virtual std::string piece_bytes(int32_t id) const { return piece(id); }
    virtual bool strips_leading_space() const { return false; }
    // The id of a token given by its exact text (a special token such as "<|im_end|>", or a
    // vocabulary piece as the model files spell it); -1 when there is none.
    virtual int32_t token_id(const std::string& text) const { return -1; }

    virtual const SpecialTokens& special() const { return special_; }
    void set_special(SpecialTokens s) { special_ = std::move(s); }

   protected:
    SpecialTokens special_;
};

// Streaming decode: push() the generated ids one at a time and print what it returns; a UTF-8
// character split over several tokens is held back until complete, so the printed text never
// shows half a character. flush() returns what is left (bytes of an incomplete character at the
// end). The concatenation of all returns equals tok.decode(ids) for valid UTF-8 output.
class StreamDecoder {
   public:
    explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
    std::string push(int32_t id);
    std::string flush();

   private:
    const Tokenizer& tok_;
    std::string pending_;
    bool started_ = false;
};

// The length of the longest prefix of s that does not end inside a UTF-8 character (a valid
// sequence cut short at the end); invalid bytes count as complete.
size_t utf8_complete_prefix(const std::string& s);

// Loads whichever tokenizer a folder holds. moe.cpp's own checkpoints: vocab.json (char) or
// tokenizer.model alone (SentencePiece, moe's settings). A folder with tokenizer.json or
// tokenizer_config.json, or with none of these files, goes to load_hf_tokenizer (our checkpoints
// never write those two files).
// A .gguf file instead of a folder: the tokenizer in its metadata (gguf_tokenizer).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);

// The tokenizer in a GGUF file's metadata (src/data/gguf_tokenizer.cpp): tokenizer.ggml.model
// gpt2 -> byte-level BPE, llama -> SentencePiece, moe.cpp's char / SentencePiece checkpoints
// exactly; bos/eos/eot ids, add_bos_token (llama.cpp's defaults), the chat template.
class GgufFile;
std::unique_ptr<Tokenizer> gguf_tokenizer(const GgufFile& f);
// That tokenizer as a model folder's files in `dir`, which load_tokenizer(dir) reads back as the
// same tokenizer (checked; what a folder cannot hold is a moe::Error naming the file): moe.cpp's
// char / SentencePiece vocabularies as vocab.json / tokenizer.model; gpt2 as tokenizer.json and
// llama as tokenizer.model, each with tokenizer_config.json (add_bos_token, special texts, the
// chat template, SentencePiece's user-defined tokens) and generation_config.json (bos and eos
// ids). false (nothing written) for a file without tokenizer.ggml.tokens.
bool save_gguf_tokenizer(const GgufFile& f, const std::string& dir);

// A Hugging Face model folder: tokenizer.json whose model is byte-level BPE (Qwen2, Qwen3, OLMoE)
// -> kind "bpe"; else tokenizer.model -> SentencePiece as HF uses it (Mixtral: the whole text to
// the model, dummy prefix and byte fallback as the model says); else a moe::Error naming the
// files looked for (and why tokenizer.json was not used). Special tokens from
// tokenizer_config.json and generation_config.json (both optional).
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& dir);

// The byte-level BPE of a tokenizer.json's text; `where` names it in errors. Refuses (moe::Error
// naming the key and value) what it does not implement: docs/tokenizers.md.
std::unique_ptr<Tokenizer> bpe_tokenizer_from_json(const std::string& text,
                                                   const std::string& where);
// SentencePiece as a HF folder uses it: the whole text to the model (no line splitting), `added`
// (content -> id) matched in the text first. No byte piece <0x0A> is required.
std::unique_ptr<Tokenizer> sentencepiece_hf_from_model(
    const std::string& serialized_model, const std::string& where,
    const std::vector<std::pair<std::string, int32_t>>& added);

// The pieces a pre-tokenizer regex (PCRE2, UTF + UCP; HF Split with behavior Isolated) cuts
// `text` into: the matches and the gaps between them, in order. For tests and tools.
std::vector<std::string> regex_split(const std::string& pattern, const std::string& text);
// GPT-2's byte -> printable code point map that byte-level BPE vocabularies are written in.
uint32_t byte_to_unicode(uint8_t b);

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
