// A checkpoint's config.json (Hugging Face Mixtral keys + "moe_cpp"), as load_model_config reads
// it; an accepted config must survive the round trip through model_config_to_hf.
#include "fuzz.h"
#include "moe/config.h"

namespace moe::fuzz {

void hf_config(const std::string& input) {
    ModelConfig m = model_config_from_text(input, "fuzz/config.json");
    MOE_FUZZ_ASSERT(m.d_model > 0 && m.n_heads > 0 && m.n_layers > 0);
    nlohmann::json j = model_config_to_hf(m);
    must_not_refuse("reloading the written config.json", [&] {
        ModelConfig again = model_config_from_text(j.dump(), "fuzz dump");
        MOE_FUZZ_ASSERT(model_config_to_hf(again) == j);
    });
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(hf_config)
