// Seeing inside a run (issue 5): metrics.jsonl and routing traces read back, `moe report`
// (one self-contained HTML file + PNG copies of every figure, drawn by gnuplot) and
// `moe inspect` (which experts take which tokens). docs/report.md explains every figure;
// docs/metrics.md is the contract for the files read here.
#pragma once
#include <cmath>
#include <cstdint>
#include <map>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moe {

class HfModel;
class Model;
class MoeLayer;
class Tokenizer;

// ---- metrics.jsonl ----------------------------------------------------------------------------

struct LayerMetrics {
    int layer = 0;
    std::vector<int64_t> tokens_per_expert;
    int64_t dropped = 0, routed = 0;
    double load_cv = NAN, router_entropy = NAN, mean_top1_weight = NAN;
    // experts_per_token: histogram (tokens by number of experts run, 0..max) and its mean;
    // empty / NaN in logs written before the key existed.
    std::vector<int64_t> experts_per_token;
    double experts_per_token_mean = NAN;
    // Router stability (docs/precision.md): the largest |raw router logit| of the step's batch,
    // and on evaluation lines the share of probe tokens whose top-1 expert changed since the
    // previous evaluation. NaN where not logged (older logs; routing_change on other lines).
    double router_logit_max = NAN, routing_change = NAN;
};

// One logged line. Fields absent from the line are NaN (an evaluation line may carry only
// step and val_loss); every other numeric key lands in `extra` (aux_* keys included there too).
struct MetricsRow {
    int64_t step = 0;
    double lr = NAN, train_loss = NAN, val_loss = NAN, tokens_per_s = NAN, elapsed_s = NAN;
    std::map<std::string, double> scalars;  // every numeric top-level key, by name
    std::vector<LayerMetrics> layers;
};

struct MetricsLog {
    std::string path;
    std::vector<MetricsRow> rows;  // in file order
    int lines_used = 0;
    int lines_skipped = 0;                // truncated or corrupt lines (not JSON, no step, ...)
    std::vector<std::string> skipped;     // "line 17: <why>" for each, at most 20 kept
    std::vector<int> moe_layers() const;  // layer indices seen in any row, ascending
};

// Parses JSON lines; `where` names the source in messages. Blank lines are ignored; a line that
// is not a JSON object with an integer "step" is skipped and counted (a run killed mid-write
// leaves a truncated last line). Throws moe::Error when no line is usable.
MetricsLog parse_metrics(const std::string& text, const std::string& where);
// RUN_DIR/metrics.jsonl; throws moe::Error naming the path when it is missing.
MetricsLog read_metrics(const std::string& run_dir);

// ---- routing traces (moe generate --trace) -----------------------------------------------------

struct LayerChoice {
    int layer = 0;
    std::vector<int> experts;  // by decreasing weight
    std::vector<float> weights;
    std::vector<char> kept;  // 0 where capacity dropped the slot (traces: all 1)
};

struct TokenRouting {
    int pos = 0;
    int32_t token = 0;
    std::string text;  // the token's text
    std::vector<LayerChoice> layers;
};

// JSON lines {"pos","token","text","layers":[{"layer","experts","weights"}]}; a truncated last
// line is skipped and counted in *skipped (when given). Throws moe::Error when the file is missing
// or has no usable line.
std::vector<TokenRouting> parse_trace(const std::string& text, const std::string& where,
                                      int* skipped = nullptr);
std::vector<TokenRouting> read_trace(const std::string& path, int* skipped = nullptr);

// ---- moe report ------------------------------------------------------------------------------

struct ReportOptions {
    std::string run_dir;
    std::string out;               // default RUN_DIR/report/report.html; PNGs beside it
    double collapse_share = 0.1;   // collapse: share < collapse_share / E ...
    int collapse_steps = 5;        // ... for this many consecutive logged steps
    double dominance_share = 0.5;  // dominance: share > max(dominance_share, 1.5/E) ...
    int dominance_steps = 5;       // ... for this many consecutive logged steps
    double redundant = 0.8;        // cosine similarity above which two experts are named redundant
    int probe_tokens = 512;        // tokens pushed through the model for output similarity
    std::string probe_text;        // file with probe text; default: the run's validation text
    bool similarity = true;        // false: skip the checkpoint section
    int max_heatmap_steps = 200;   // load heatmap bins (long runs are averaged into bins)
};

struct ReportResult {
    std::string html;
    std::vector<std::string> pngs;
    int lines_used = 0, lines_skipped = 0;
    std::vector<std::string> warnings;  // collapse, dominance, redundant experts, skipped lines
    std::string checkpoint;             // the checkpoint used for similarity ("" when none)
    std::string similarity_note;        // why the similarity section is missing, if it is
    int n_traces = 0;
};

// Throws moe::Error: no metrics, gnuplot missing (install gnuplot-nox), gnuplot failing.
ReportResult run_report(const ReportOptions& opt);

// Path of gnuplot (env MOE_GNUPLOT overrides PATH lookup); throws moe::Error saying to install
// gnuplot-nox when absent.
std::string find_gnuplot();

// ---- expert similarity (needs a model) -------------------------------------------------------

struct LayerSimilarity {
    int layer = 0;
    int n_experts = 0;
    std::vector<double> weight_sim;  // [E, E] cosine of the flattened expert weights
    std::vector<double> output_sim;  // [E, E] cosine of the experts' outputs on the probe tokens
    int probe_rows = 0;
};

// Every expert's output on `x` [T, d] (the layer's FFN input), [E, T, d] row-major. Computed
// directly from the layer's parameters (not through routing): each expert sees every row.
std::vector<float> expert_outputs(MoeLayer& layer, const float* x, int T);
// Runs `tokens` through the model (chunks of block_size) and compares experts per MoE layer.
std::vector<LayerSimilarity> expert_similarity(Model& model, const std::vector<int32_t>& tokens);

// ---- moe inspect -------------------------------------------------------------------------------

// Runs text through the model (chunks of block_size, each from an empty context) and returns
// per-token routing of every MoE layer. Throws moe::Error when the tokenizer cannot encode text.
// batch > 1 runs that many full chunks per forward (faster over a corpus); routing that depends
// on the whole batch (capacity limits, expert choice) then sees batch*block_size tokens at once.
std::vector<TokenRouting> route_text(Model& model, const Tokenizer& tok, const std::string& text,
                                     int max_tokens = -1, int batch = 1);

// The same for a Hugging Face model (src/infer/) on ids the caller encoded (BOS as its tokenizer
// says): chunks of `chunk` tokens, each from an empty cache. Dropless top-k: every slot kept.
std::vector<TokenRouting> route_ids_hf(HfModel& model, const std::vector<int32_t>& ids,
                                       const std::function<std::string(int32_t)>& piece,
                                       int chunk);

// Aggregate of routing over a corpus, per MoE layer.
struct RoutingAggregate {
    std::string by;  // "char-class" or "token"
    int n_tokens = 0;
    int n_experts = 0;
    std::vector<std::string> classes;  // class names (char-class) or token texts (token)
    struct Layer {
        int layer = 0;
        std::vector<double> counts;   // [E, C] token-slots
        std::vector<double> shares;   // class_shares(counts): per class, its split over experts
        std::vector<double> profile;  // expert_class_profile(counts): per expert, its split
        std::vector<double> token_counts;  // [E, V] for the top tokens
        // [C] tokens of each class: kept slots of the class / its tokens = the mean experts per
        // token of the class (the dynamic router top-p gives some classes more experts).
        std::vector<double> class_tokens;
    };
    std::vector<Layer> layers;
    int vocab = 0;
    std::vector<std::string> vocab_text;  // piece of each token id
};

RoutingAggregate aggregate_routing(const std::vector<TokenRouting>& routing,
                                   const std::vector<std::string>& vocab_text, int n_experts,
                                   const std::string& by);

// Renderers (pure functions of the data, tested without a model).
std::string routing_terminal(const std::vector<TokenRouting>& r, int only_layer, bool color);
std::string routing_html(const std::vector<TokenRouting>& r, int only_layer,
                         const std::string& title);
std::string aggregate_text(const RoutingAggregate& a, int only_layer, int top_n);
std::string aggregate_json(const RoutingAggregate& a, int only_layer, int top_n);
std::string aggregate_html(const RoutingAggregate& a, int only_layer, int top_n,
                           const std::string& title);
// The routing-trace section body (also used by the report): a token strip per layer.
std::string routing_html_body(const std::vector<TokenRouting>& r, int only_layer);

}  // namespace moe
