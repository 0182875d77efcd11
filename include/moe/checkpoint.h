// Checkpoints: a folder with config.json (Hugging Face Mixtral keys + moe.cpp's own),
// model.safetensors (HF Mixtral tensor names), the tokenizer (vocab.json or tokenizer.model),
// and for resuming optimizer.safetensors + trainer_state.json (docs/formats.md).
// Written atomically: every file goes into a temp folder beside the target, is fsynced, and the
// folder is then swapped into place, so a crash or a full disk never leaves half a checkpoint.
#pragma once
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/model.h"
#include "moe/tokenizer.h"

namespace moe {

struct LoadedModel {
    std::string dir;  // the checkpoint folder actually loaded
    std::unique_ptr<Model> model;
    std::unique_ptr<Tokenizer> tokenizer;
};

// Accepts a checkpoint folder or a run folder (then its best checkpoint). Throws moe::Error on a
// missing, truncated or mismatched checkpoint (missing tensor, wrong shape, bad header).
// shard: the routed experts to hold (several processes; default all): only those are read.
LoadedModel load_model(const std::string& ckpt_or_run_dir, ExpertShard shard = {});
std::string resolve_checkpoint_dir(const std::string& ckpt_or_run_dir);
// For resuming: a checkpoint folder, or a run folder's latest/ checkpoint.
std::string resolve_resume_dir(const std::string& ckpt_or_run_dir);

// Writes the checkpoint folder `dir` atomically. adam_m/adam_v (n_params floats each, or null)
// go to optimizer.safetensors under the parameter names; trainer_state (or null) to
// trainer_state.json. Test hooks (environment): MOE_TEST_CKPT_FAIL_AFTER_BYTES=N fails the write
// with "No space left on device" once N bytes are written (a full disk);
// MOE_TEST_CKPT_PAUSE_AT_STEP=S sleeps 30 s half-way through model.safetensors of a checkpoint
// with optimizer state (latest/) when trainer_state.step == S (a test kills -9 the writer there).
// state_offsets (per params() entry, or null = identity layout): where a tensor's AdamW moments
// start in adam_m/adam_v; -1 = a frozen tensor without optimizer state (not written).
//
// The files are streamed tensor by tensor (no copy of the model in memory). A model holding part
// of the experts (Model::expert_shard, several processes) is written whole: the tensors it lacks
// come from fetch.get(spec, which) with their full-table spec, which = 0 for the weights, 1 for
// exp_avg, 2 for exp_avg_sq, called in file order (every missing tensor's weights, then the two
// moments of each that has_state(spec), i.e. is not frozen); get returns the floats, valid until
// the next call.
struct TensorFetch {
    std::function<const float*(const ParamSpec& spec, int which)> get;
    std::function<bool(const ParamSpec& spec)> has_state;
};
void save_checkpoint(const std::string& dir, Model& model, const Tokenizer& tokenizer,
                     const float* adam_m, const float* adam_v, const nlohmann::json* trainer_state,
                     const std::vector<int64_t>* state_offsets = nullptr,
                     const TensorFetch* fetch = nullptr);

// Cleans up after a writer killed mid-save: removes dir.tmp-* folders; a dir.old-* left between
// the two renames of the fallback swap is moved back to dir when dir is missing, else removed.
void recover_checkpoint_dir(const std::string& dir);

ModelConfig load_model_config(const std::string& dir);  // config.json
// model.safetensors into model.param_data(): every parameter present with its exact shape, no
// tensor the model does not have. Errors name the file and the tensor.
void load_params(Model& model, const std::string& dir);
// Before a Model is built: config.json's shapes against model.safetensors' header (names the key
// that disagrees, with expected and actual shapes) and the memory it needs against the machine's
// (training: + gradients + AdamW moments). Reads only the header.
void check_checkpoint_sizes(const ModelConfig& cfg, const std::string& dir, bool training);
// state_offsets as for save_checkpoint: tensors at -1 are not read (and must not be in the file).
void load_optimizer(Model& model, const std::string& dir, float* adam_m, float* adam_v,
                    const std::vector<int64_t>* state_offsets = nullptr);
nlohmann::json load_trainer_state(const std::string& dir);
// trainer_state.json's text -> JSON (load_trainer_state and fuzzing); `where` names it in errors.
nlohmann::json parse_trainer_state(const std::string& text, const std::string& where);

}  // namespace moe
