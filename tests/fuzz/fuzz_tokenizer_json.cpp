// A Hugging Face tokenizer.json, as load_hf_tokenizer reads it (bpe_tokenizer_from_json); then
// what inference does with it: encode a fixed text (special tokens, CJK, emoji, a combining mark,
// invalid UTF-8), decode the ids, and decode them again token by token (StreamDecoder).
#include "fuzz.h"
#include "moe/tokenizer.h"

namespace moe::fuzz {

void tokenizer_json(const std::string& input) {
    std::unique_ptr<Tokenizer> tok = bpe_tokenizer_from_json(input, "fuzz/tokenizer.json");
    MOE_FUZZ_ASSERT(tok->vocab_size() > 0);
    static const std::string text =
        "Hello world's 123 <|endoftext|> it'S\n\n  x\t\xe6\xb1\x89\xe5\xad\x97 \xf0\x9f\x98\x80 "
        "e\xcc\x81 \xff\xfe<|im_start|>end";
    std::vector<int32_t> ids;
    try {
        ids = tok->encode(text);  // may refuse: a vocabulary without some byte and no unk_token
    } catch (const moe::Error&) {
        return;
    }
    for (int32_t id : ids) MOE_FUZZ_ASSERT(id >= 0 && id < tok->vocab_size());
    must_not_refuse("decoding the ids encode gave", [&] {
        std::string all = tok->decode(ids);
        StreamDecoder sd(*tok);
        std::string streamed;
        for (int32_t id : ids) streamed += sd.push(id);
        streamed += sd.flush();
        MOE_FUZZ_ASSERT(streamed == all);
    });
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(tokenizer_json)
