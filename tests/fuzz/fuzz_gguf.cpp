// A whole .gguf file, as `moe generate X.gguf` reads it: the container (GgufFile::parse: every
// count and length bounded by the bytes, tensors inside the data), then the model it describes
// (metadata -> HfConfig, tensors -> views checked against it, q/k un-permuted for arch llama),
// two tokens through the engine, and the tokenizer in its metadata.
#include <memory>

#include "fuzz.h"
#include "moe/gguf.h"
#include "moe/hf_model.h"
#include "moe/tokenizer.h"

namespace moe::fuzz {

void gguf(const std::string& input) {
    const uint8_t* p = (const uint8_t*)input.data();
    auto f = std::make_shared<GgufFile>(GgufFile::parse(p, input.size(), "fuzz.gguf"));
    MOE_FUZZ_ASSERT(f->data_offset() <= input.size() || f->tensors().empty());
    for (const GgufTensor& t : f->tensors()) {
        MOE_FUZZ_ASSERT(t.data >= p && t.data + t.bytes <= p + input.size());
        MOE_FUZZ_ASSERT(t.offset % f->alignment() == 0 && t.bytes > 0);
    }
    try {
        (void)gguf_tokenizer(*f);
    } catch (const Error&) {
    }
    HfConfig c;
    std::unique_ptr<WeightStore> ws = WeightStore::from_gguf(f, &c);
    MOE_FUZZ_ASSERT(c.n_layers > 0 && c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0);
    MOE_FUZZ_ASSERT(c.top_k >= 1 && c.top_k <= c.n_experts);
    HfModel m(c, std::move(ws), "fuzz.gguf");
    const int32_t ids[2] = {0, c.vocab_size - 1};
    m.cache_feed(ids, c.max_positions >= 2 ? 2 : 1);
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(gguf)
