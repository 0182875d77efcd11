// metrics.jsonl lines (docs/metrics.md is the contract `moe report` and scripts read).
#pragma once
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "moe/model.h"

namespace moe {

struct MetricsLine {
    nlohmann::json j;
    double val_loss = NAN;  // set on evaluation lines
};

class MetricsWriter {
   public:
    MetricsWriter(const std::string& path, const ModelConfig& cfg);  // appends
    ~MetricsWriter();
    // Reads Model::routing_stats() of the last training forward.
    MetricsLine collect(const Model& model, int64_t step, double lr, double train_loss,
                        double grad_norm, double tokens_per_s, double elapsed_s) const;
    void write(const MetricsLine& line);  // one line, flushed

   private:
    std::string path_;
    ModelConfig cfg_;
    FILE* f_ = nullptr;
};

}  // namespace moe
