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

// Maps and checks the folder (silently: an error after it must stay the only line on stderr).
std::unique_ptr<HfModel> load_hf_model(const std::string& dir);
// Once the command's input is checked: (stderr) "model: DIR (olmoe, 6.9 G params, ..., 3
// files): mapped 13.8 GB, resident 0.1 GB, ready in 12 ms" (the load time of load_hf_model).
void print_hf_summary(const HfModel& m);

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
