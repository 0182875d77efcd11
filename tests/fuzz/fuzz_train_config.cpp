// A training config (configs/*.json, `moe train --config`): parsed as config_load does, then
// validated and dumped as `moe train` does before it writes train_config.json.
#include "fuzz.h"
#include "moe/config.h"

namespace moe::fuzz {

void train_config(const std::string& input) {
    TrainConfig c = config_from_text(input, "fuzz.json");
    config_validate(c);
    nlohmann::json dumped = config_to_json(c);
    // An accepted config survives its own dump: the run folder's train_config.json reloads.
    must_not_refuse("reloading the dumped config", [&] {
        TrainConfig again = config_from_text(dumped.dump(), "fuzz dump");
        MOE_FUZZ_ASSERT(config_to_json(again) == dumped);
    });
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(train_config)
