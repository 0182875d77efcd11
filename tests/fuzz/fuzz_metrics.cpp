// metrics.jsonl as `moe report` reads it: parse_metrics, then the per-layer series the report
// builds from it (load shares, collapse and dominance runs; src/report/report.cpp layer_series).
#include <algorithm>

#include "fuzz.h"
#include "moe/report.h"
#include "moe/stats.h"

namespace moe::fuzz {

void metrics(const std::string& input) {
    MetricsLog log = parse_metrics(input, "fuzz/metrics.jsonl");
    MOE_FUZZ_ASSERT(!log.rows.empty() && log.lines_used == (int)log.rows.size());
    for (int layer : log.moe_layers()) {
        size_t E = 0;
        for (auto& row : log.rows)
            for (auto& l : row.layers)
                if (l.layer == layer) E = std::max(E, l.tokens_per_expert.size());
        std::vector<int64_t> steps;
        std::vector<std::vector<double>> shares;
        for (auto& row : log.rows)
            for (auto& l : row.layers) {
                if (l.layer != layer) continue;
                steps.push_back(row.step);
                std::vector<double> sh = load_share(l.tokens_per_expert);
                MOE_FUZZ_ASSERT(sh.size() == l.tokens_per_expert.size());
                sh.resize(E, 0.0);
                shares.push_back(sh);
            }
        if (E == 0) continue;
        (void)find_collapses(steps, shares, 0.1 / (double)E, 5);
        (void)find_dominance(steps, shares, std::max(0.5, 1.5 / (double)E), 5);
    }
}

}  // namespace moe::fuzz

MOE_FUZZ_TARGET(metrics)
