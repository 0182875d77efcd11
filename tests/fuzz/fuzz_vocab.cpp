// A char tokenizer's vocab.json (a JSON array of symbols in id order), as load_tokenizer reads
// it; then what inference does with it: every piece, and encode(decode(ids)) == ids.
#include "fuzz.h"
#include "moe/tokenizer.h"

namespace moe::fuzz {

void vocab(const std::string& input) {
    std::unique_ptr<Tokenizer> tok = char_tokenizer_from_json(input, "fuzz/vocab.json");
    MOE_FUZZ_ASSERT(tok->vocab_size() > 0);
    std::vector<int32_t> ids;
    for (int32_t v = 0; v < tok->vocab_size(); v++) ids.push_back(v);
    std::string text = tok->decode(ids);
    // Symbols that are prefixes of one another's bytes can tokenize differently; encode must then
    // refuse cleanly or give ids that decode to the same text.
    std::vector<int32_t> back = tok->encode(text);
    MOE_FUZZ_ASSERT(tok->decode(back) == text);
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(vocab)
