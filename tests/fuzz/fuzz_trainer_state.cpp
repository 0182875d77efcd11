// A checkpoint's trainer_state.json, read as `moe train --resume` reads it: the reads below are
// those of run_train (src/train/trainer.cpp) on the state, in the same order and with the same
// expressions, so a state that would break a resume breaks here.
#include "data/loader.h"
#include "fuzz.h"
#include "moe/checkpoint.h"
#include "moe/config.h"

namespace moe::fuzz {

void trainer_state(const std::string& input) {
    const std::string where = "fuzz/trainer_state.json";
    nlohmann::json state = parse_trainer_state(input, where);
    if (!state.contains("config") || !state.contains("step") || !state.contains("loader"))
        fail("{}: lacks config, step or loader", where);
    TrainConfig cfg;
    config_apply_json(cfg, state["config"], where);
    int64_t nt = state.value("train_tokens", (int64_t)-1),
            nv = state.value("val_tokens", (int64_t)-1);
    (void)nt;
    (void)nv;
    std::vector<int32_t> tokens(64, 0);
    BatchLoader loader(&tokens, 2, 8, 1);
    int64_t step = state["step"].get<int64_t>();
    (void)step;
    loader.set_state(state["loader"]);
    Rng rng(0);
    if (state.contains("moe_layer_rngs"))
        for (int l = 0; l < 4; l++)
            if (state["moe_layer_rngs"].contains(std::to_string(l)))
                rng_from_json(rng, state["moe_layer_rngs"][std::to_string(l)], where);
    double best_val = 0;
    if (state.contains("best_val_loss") && state["best_val_loss"].is_number())
        best_val = state["best_val_loss"].get<double>();
    (void)best_val;
    int64_t best_step = state.value("best_step", (int64_t)0);
    double train_time = state.value("elapsed_s", 0.0);
    (void)best_step;
    (void)train_time;
    int32_t x[16], y[16];
    loader.next(x, y);  // the restored sampler draws windows inside the data
    for (int i = 0; i < 16; i++) MOE_FUZZ_ASSERT(x[i] == 0 && y[i] == 0);
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(trainer_state)
