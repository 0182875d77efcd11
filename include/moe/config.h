// Training configuration (configs/*.json) and the checkpoint's config.json.
//
// A training config is one flat JSON object; every key is also a `moe train` flag (--key VALUE),
// and one field table (config_fields) gives the defaults, the parser, the flags and the dump, so
// a key is declared once. Unknown keys are errors that name the key.
//
// A checkpoint's config.json uses the Hugging Face Mixtral keys (hidden_size, num_local_experts,
// ...) plus moe.cpp's own keys under "moe_cpp" (docs/formats.md).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/checked.h"
#include "moe/model.h"

namespace moe {

struct TrainConfig {
    // data and tokenizer
    std::string data =
        "data/tinyshakespeare.txt";  // relative: to the config file's folder, else cwd
    double val_fraction = 0.1;                      // the last 10% is validation (nanoGPT's split)
    std::string tokenizer = "char";                 // "char" or "sentencepiece"
    int vocab_size = 512;               // sentencepiece only (char: the corpus' symbols)
    std::string sp_model_type = "bpe";  // sentencepiece: "bpe" or "unigram"

    ModelConfig model;  // its fields appear flattened (n_layers, n_experts, router, ...)

    // optimisation
    int batch_size = 12;
    int max_steps = 2000;       // the schedule's length
    int stop_after = 0;         // > 0: stop (and save) after this step even if max_steps is later
    double lr = 1e-3;           // peak learning rate
    double min_lr = 1e-4;       // cosine floor
    int warmup_steps = 100;     // linear warmup from 0
    int lr_decay_steps = 0;     // cosine length (0: max_steps)
    double weight_decay = 0.1;  // decoupled (AdamW), not on norms or biases
    double beta1 = 0.9, beta2 = 0.99, adam_eps = 1e-8;
    double grad_clip = 1.0;  // global-norm clipping, 0 = off

    // evaluation, logging, checkpoints
    int eval_every = 250;   // steps; 0 = only at the end
    int eval_batches = 20;  // fixed validation batches used during training
    int log_every = 10;     // metrics.jsonl line every N steps
    int save_every = 0;     // latest/ checkpoint every N steps (0: at each evaluation)
    int print_every = 100;  // plain progress line when stderr is not a terminal
    double max_time_s = 0;  // > 0: stop when training time exceeds this (then save)

    // fine-tuning (docs/training.md "Fine-tuning, freezing, upcycling")
    std::string init_from;       // checkpoint or run folder (its best/): start from its weights
    std::string upcycle_from;    // dense checkpoint or run folder: experts start as its FFNs
    double upcycle_noise = 0;    // upcycled expert weights *= 1 + noise * N(0,1)
    std::string freeze;          // comma-separated groups and tensor-name globs
    std::string unknown_symbol;  // char vocab: symbol replacing those outside it ("": error)
    std::string eval_also;       // a second text: its validation split at every evaluation

    // arithmetic (docs/precision.md): GEMM operands fp32 or bf16 (fp32 accumulation, fp32
    // master weights, gradients and AdamW state); the MoE router's GEMM separately (bf16 only
    // for the stability experiment).
    std::string precision = "fp32";
    std::string router_precision = "fp32";

    uint64_t seed = 1337;
    int threads = 0;  // 0 = all cores
};

// Config keys that fix the model's tensors or their meaning: with init_from they come from the
// checkpoint, and a config or flag giving another value is an error naming the key.
const std::vector<std::string>& model_shape_keys();
// Every key that describes the model (shape keys + router and balancing options): with
// init_from, those not given take the checkpoint's values.
bool is_model_key(const std::string& key);

// One row per key: its type, where it lives, its help line and its allowed range (Range::in,
// at_least, above, one_of ...; include/moe/checked.h). JSON and flags are both read through the
// checked-number functions with this range, and `moe train --help` prints it. A row without a
// range accepts any finite number / any string.
struct ConfigField {
    enum Type { Int, U64, Double, Float, Bool, String };
    const char* name;
    Type type;
    void* ptr;
    const char* help;
    Range range = {};
};

// The key table as text (key, type, default, range, help), for `moe train --help`.
std::string config_keys_help();

// The table of every key (pointers into cfg).
std::vector<ConfigField> config_fields(TrainConfig& cfg);

// Parse a JSON object into cfg (keys not named keep their value). `where` names the source in
// errors ("configs/x.json"). Unknown keys and wrong types throw moe::Error naming the key.
void config_apply_json(TrainConfig& cfg, const nlohmann::json& j, const std::string& where);
TrainConfig config_load(const std::string& path);  // defaults + file; data relative to the file
// A JSON file, with errors that name the file (missing, a folder, empty, not JSON at byte N);
// `what` says what the file should be ("a training config").
nlohmann::json read_json_file(const std::string& path, const char* what);
// The same from the file's text; `where` names the source in errors (config_load and fuzzing).
TrainConfig config_from_text(const std::string& text, const std::string& where);
// Set one key from a command-line string ("--lr 2e-3"): dashes in key become underscores.
void config_set(TrainConfig& cfg, const std::string& key, const std::string& value);
nlohmann::json config_to_json(const TrainConfig& cfg);
// Checks shapes and ranges (and ModelConfig::validate): heads not dividing d, k > E, ...
void config_validate(const TrainConfig& cfg);

// Checkpoint config.json (HF Mixtral keys + "moe_cpp"). Dense-only models record
// num_local_experts = 0, num_experts_per_tok = 0 and intermediate_size = the dense d_ff.
nlohmann::json model_config_to_hf(const ModelConfig& m);
ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& where);
// config.json's text -> ModelConfig (load_model_config and fuzzing): invalid JSON is a moe::Error.
ModelConfig model_config_from_text(const std::string& text, const std::string& where);

}  // namespace moe
