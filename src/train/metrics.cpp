#include "train/metrics.h"

#include <cerrno>
#include <cstring>

#include "moe/error.h"

namespace moe {

using json = nlohmann::json;

MetricsWriter::MetricsWriter(const std::string& path, const ModelConfig& cfg)
    : path_(path), cfg_(cfg) {
    f_ = std::fopen(path.c_str(), "ab");
    if (!f_) fail("cannot open {}: {}", path, std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
    if (f_) std::fclose(f_);
}

MetricsLine MetricsWriter::collect(const Model& model, int64_t step, double lr, double train_loss,
                                   double grad_norm, double tokens_per_s, double elapsed_s) const {
    const MoeConfig& e = cfg_.moe;
    double imp = 0, load = 0, sw = 0, z = 0, total = 0;
    json layers = json::array();
    for (const LayerRouting& r : model.routing_stats()) {
        imp += e.w_importance * r.aux.importance;
        load += e.w_load * r.aux.load;
        sw += e.w_switch * r.aux.switch_loss;
        z += e.w_zloss * r.aux.z_loss;
        total += r.aux.weighted_total;
        layers.push_back({{"layer", r.layer},
                          {"tokens_per_expert", r.stats.tokens_per_expert},
                          {"dropped", r.stats.dropped},
                          {"routed", r.stats.routed},
                          {"load_cv", r.stats.load_cv},
                          {"router_entropy", r.stats.router_entropy},
                          {"mean_top1_weight", r.stats.mean_top1_weight},
                          {"router_logit_max", r.stats.max_router_logit},
                          {"experts_per_token",
                           {{"mean", r.stats.mean_experts_per_token},
                            {"histogram", r.stats.experts_per_token}}}});
    }
    MetricsLine l;
    l.j = {{"step", step},
           {"lr", lr},
           {"train_loss", train_loss},
           {"tokens_per_s", tokens_per_s},
           {"elapsed_s", elapsed_s},
           {"grad_norm", grad_norm},
           {"aux_importance", imp},
           {"aux_load", load},
           {"aux_switch", sw},
           {"aux_z", z},
           {"aux_total", total},
           {"layers", layers}};
    return l;
}

void MetricsWriter::write(const MetricsLine& line) {
    json j = line.j;
    if (std::isfinite(line.val_loss)) j["val_loss"] = line.val_loss;
    std::string s = j.dump() + "\n";
    if (std::fwrite(s.data(), 1, s.size(), f_) != s.size() || std::fflush(f_) != 0)
        fail("cannot write {}: {}", path_, std::strerror(errno));
}

}  // namespace moe
