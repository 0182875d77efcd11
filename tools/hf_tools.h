// What `moe generate`, `eval` and `inspect` share for Hugging Face model folders (src/infer/):
// loading with a one-line summary, --prompt-ids, and the --stats report (experts used per layer,
// mapped / resident bytes, page-in traffic).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/hf_model.h"

namespace moe::tools {

// Maps the folder and prints (stderr) "model: DIR (olmoe, 1.2 B params, BF16, 3 files): mapped
// 2.4 GB, resident 0.1 GB, ready in 12 ms".
std::unique_ptr<HfModel> load_hf_model(const std::string& dir);

// "--prompt-ids 1,2,3": ids in [0, vocab); errors name the flag and the bad entry.
std::vector<int32_t> parse_prompt_ids(const std::string& s, int vocab, const char* flag);

// Memory and page-in counters, taken before a run (snapshot) and reported after it.
struct HfRunCounters {
    uint64_t resident = 0;
    long major_faults = 0;
    double t = 0;
};
HfRunCounters hf_counters(const HfModel& m);
// Prints the table (stderr) and returns the same as JSON: per MoE layer the tokens each expert
// took, the experts used, the hot set (fewest experts taking 90% of the routed slots); mapped and
// resident bytes before/after, major page faults during the run.
nlohmann::json hf_stats(HfModel& m, const HfRunCounters& before, bool print);

}  // namespace moe::tools
