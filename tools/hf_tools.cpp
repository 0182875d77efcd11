#include "tools/hf_tools.h"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <numeric>

#include "io/file_map.h"
#include "moe/checked.h"
#include "moe/error.h"
#include "moe/runtime.h"

namespace moe::tools {

static std::string gb(double bytes) { return fmt::format("{:.2f} GB", bytes / 1e9); }

static double g_load_ms = 0;  // of the one model a command loads

std::unique_ptr<HfModel> load_hf_model(const std::string& dir) {
    const double t0 = now_seconds();
    auto m = std::make_unique<HfModel>(dir);
    g_load_ms = (now_seconds() - t0) * 1e3;
    return m;
}

void print_hf_summary(const HfModel& model) {
    HfModel* m = const_cast<HfModel*>(&model);
    const std::string& dir = m->dir();
    const HfConfig& c = m->config();
    // the files either mapped or copied into huge pages (io/file_map.h, MOE_HUGEPAGES)
    const FileMapTotals held = file_map_totals();
    const std::string how = held.huge == 0
                                ? fmt::format("mapped {}, resident {}",
                                              gb((double)m->weights().mapped_bytes()),
                                              gb((double)m->weights().resident_bytes()))
                                : fmt::format("{} copied into huge pages (MOE_HUGEPAGES=0: map)",
                                              gb((double)m->weights().mapped_bytes()));
    std::fprintf(stderr,
                 "model: %s (%s, %.3g M params, %d layers, %d experts top-%d, %zu file%s): %s, "
                 "ready in %.0f ms\n",
                 dir.c_str(), c.model_type.c_str(), c.n_params() / 1e6, c.n_layers, c.n_experts,
                 c.top_k, m->weights().n_files(), m->weights().n_files() == 1 ? "" : "s",
                 how.c_str(), g_load_ms);
}

std::vector<int32_t> parse_prompt_ids(const std::string& s, int vocab, const char* flag) {
    std::vector<int32_t> ids;
    size_t i = 0;
    while (i <= s.size()) {
        size_t j = s.find(',', i);
        if (j == std::string::npos) j = s.size();
        std::string item = s.substr(i, j - i);
        while (!item.empty() && item.front() == ' ') item.erase(item.begin());
        while (!item.empty() && item.back() == ' ') item.pop_back();
        if (item.empty())
            usage_fail("{}: empty entry at position {}; give ids like 1,2,3", flag, ids.size());
        ids.push_back((int32_t)parse_int(item, std::string(flag) + " entry " +
                                                   std::to_string(ids.size()),
                                         Range::in(0, vocab - 1)));
        if (ids.size() > (1u << 24)) usage_fail("{}: more than 16M ids", flag);
        i = j + 1;
    }
    return ids;
}

static long major_faults() {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_majflt;
}

HfRunCounters hf_counters(const HfModel& m) {
    HfRunCounters c;
    c.resident = const_cast<HfModel&>(m).weights().resident_bytes();
    c.major_faults = major_faults();
    c.t = now_seconds();
    return c;
}

nlohmann::json hf_stats(HfModel& m, const HfRunCounters& before, bool print) {
    const HfConfig& c = m.config();
    const ExpertUsage& u = m.usage();
    nlohmann::json layers = nlohmann::json::array();
    if (print)
        std::fprintf(stderr, "experts used over %lld tokens (layer: tokens per expert | used | "
                     "hot set taking 90%% of the slots)\n", (long long)u.tokens);
    for (int l = 0; l < c.n_layers; l++) {
        if (!c.moe_layer[l]) continue;
        const auto& cnt = u.count[l];
        int used = 0;
        int64_t total = 0;
        for (int64_t v : cnt) used += v > 0, total += v;
        std::vector<int> order(cnt.size());
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return cnt[a] > cnt[b]; });
        std::vector<int> hot;
        int64_t acc = 0;
        for (int e : order) {
            if (total == 0 || acc >= 0.9 * (double)total) break;
            hot.push_back(e);
            acc += cnt[e];
        }
        layers.push_back({{"layer", l}, {"tokens_per_expert", cnt}, {"experts_used", used},
                          {"hot_set", hot}});
        if (print) {
            std::string row;
            for (size_t e = 0; e < cnt.size() && e < 64; e++) row += fmt::format(" {}", cnt[e]);
            if (cnt.size() > 64) row += " ...";
            std::fprintf(stderr, "  layer %2d:%s | %d/%zu | %zu experts\n", l, row.c_str(), used,
                         cnt.size(), hot.size());
        }
    }
    const uint64_t resident = m.weights().resident_bytes();
    const long faults = major_faults() - before.major_faults;
    nlohmann::json j = {{"layers", layers},
                        {"tokens", u.tokens},
                        {"mapped_bytes", m.weights().mapped_bytes()},
                        {"resident_bytes_before", before.resident},
                        {"resident_bytes_after", resident},
                        {"major_page_faults", faults},
                        {"seconds", now_seconds() - before.t}};
    if (print)
        std::fprintf(stderr,
                     "weights: mapped %s, resident %s before and %s after; %ld major page faults "
                     "(pages read from disk) during the run\n",
                     gb((double)m.weights().mapped_bytes()).c_str(), gb((double)before.resident).c_str(),
                     gb((double)resident).c_str(), faults);
    return j;
}

}  // namespace moe::tools
