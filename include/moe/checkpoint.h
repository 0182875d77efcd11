// Checkpoints: a folder with config.json (Hugging Face Mixtral keys + moe.cpp's own), 
// model.safetensors (HF Mixtral tensor names), the tokenizer (vocab.json or tokenizer.model),
// and for resuming optimizer.safetensors + trainer_state.json. Written atomically.
#pragma once
#include <memory>
#include <string>

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
LoadedModel load_model(const std::string& ckpt_or_run_dir);
std::string resolve_checkpoint_dir(const std::string& ckpt_or_run_dir);

}  // namespace moe
