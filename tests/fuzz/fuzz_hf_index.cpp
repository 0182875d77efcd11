// model.safetensors.index.json of a sharded Hugging Face folder, as WeightStore reads it: every
// accepted entry names a plain file inside the folder.
#include "fuzz.h"
#include "moe/hf_model.h"

namespace moe::fuzz {

void hf_index(const std::string& input) {
    auto m = parse_safetensors_index(input, "fuzz/model.safetensors.index.json");
    MOE_FUZZ_ASSERT(!m.empty());
    for (auto& [name, file] : m)
        MOE_FUZZ_ASSERT(!file.empty() && file.find('/') == std::string::npos && file != ".." &&
                        file != ".");
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(hf_index)
