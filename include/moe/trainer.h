// Training (issue 4): data -> batches -> Model forward/backward -> clipping -> AdamW, evaluation,
// checkpoints (best/ and latest/, atomic) and metrics.jsonl in a run folder. `moe train` is a
// thin wrapper over run_train; tests call it directly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/config.h"
#include "moe/model.h"
#include "moe/process_group.h"
#include "moe/tokenizer.h"

namespace moe {

struct TrainOptions {
    TrainConfig cfg;
    std::vector<std::pair<std::string, std::string>> overrides;  // flags, applied after resume
    // Keys the config file set (with the overrides' keys: what the user chose). init_from uses
    // them: model keys not given come from the checkpoint, shape keys given must agree with it.
    std::vector<std::string> given_keys;
    std::string out_dir;     // run folder ("" with resume: the resumed run's folder)
    std::string resume_dir;  // run folder (its latest/) or checkpoint folder; "" = fresh run
    bool progress = true;    // progress lines on stderr
    // Several processes (docs/distributed.md): empty = one process. With a world of W ranks,
    // each rank trains on its 1/W of every batch (batch_size divisible by W), the MoE layers
    // split their experts over the expert group, gradients are averaged; rank 0 alone prints,
    // writes metrics (each line with "layout") and checkpoints (the same files whatever the
    // layout). Every rank must call run_train with the same options.
    ParallelGroups groups;
    // All-to-all chunks overlapped with the expert GEMMs (MoeLayer::set_overlap; 1 = off). The
    // same numbers whatever it is.
    int overlap = 1;
};

struct TrainResult {
    std::string run_dir, best_dir, latest_dir;
    int64_t step = 0;       // last step done
    double train_loss = 0;  // last step's
    double val_loss = 0;    // last evaluation's (fixed val batches)
    double best_val_loss = 0;
    int64_t best_step = 0;
    double train_time_s = 0;  // elapsed_s: steps only (no set-up, eval or checkpoints)
    double tokens_per_s = 0;  // over this invocation's steps
    // The arithmetic of those steps: 3 x the forwards' GEMM + attention FLOPs
    // (Model::last_forward_flops, all processes together) per token and per second of training.
    double flops_per_token = 0, gflops = 0;
    double wall_s = 0;
    bool already_finished = false;  // a resumed run that had nothing left to do (nothing touched)
    std::string precision = "fp32", router_precision = "fp32";  // the run's GEMM precisions
};

TrainResult run_train(const TrainOptions& opt);

// Throws moe::Error "<path>: not UTF-8 text: invalid byte 0x.. at byte N (line L); ..." for a
// training text that is not valid UTF-8.
void check_utf8(const std::string& text, const std::string& path);

// nanoGPT's schedule, for the 1-based step t (it = t - 1): linear warmup lr*(it+1)/(warmup+1)
// while it < warmup, cosine from lr to min_lr until lr_decay_steps (default max_steps), then
// min_lr.
double lr_at(const TrainConfig& cfg, int64_t step);

// The corpus split (first 1 - val_fraction of the text for training, the rest for validation,
// cut at a UTF-8 boundary), each part tokenized on its own. Throws on a missing or empty file.
struct Corpus {
    std::vector<int32_t> train, val;
};
std::string read_corpus_text(const std::string& path);
void split_text(const std::string& text, double val_fraction, std::string* train, std::string* val);
Corpus tokenize_corpus(const std::string& text, double val_fraction, const Tokenizer& tok);

// Mean cross-entropy over tokens cut into consecutive non-overlapping windows of S + 1 tokens,
// each predicting its last S tokens, averaged over all predicted tokens (`moe eval`). Runs
// `batch` windows per forward. n_predicted (optional) returns the number of predicted tokens.
double evaluate_windows(Model& model, const std::vector<int32_t>& tokens, int S, int batch,
                        int64_t* n_predicted = nullptr);

}  // namespace moe
