// Expert similarity (issue 5): cosine similarity of the experts' weights and of their outputs on
// a probe batch. Outputs are computed here from the layer's parameters with plain sgemm calls and
// our own activation loops, not through the layer's dispatch: every expert sees every probe row,
// so two experts are compared on the same inputs (routing would give each different ones).
#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/gemm.h"
#include "moe/error.h"
#include "moe/model.h"
#include "moe/moe_layer.h"
#include "moe/report.h"
#include "moe/stats.h"

namespace moe {

std::vector<float> expert_outputs(MoeLayer& layer, const float* x, int T) {
    const MoeConfig& c = layer.config();
    const int d = c.d_model, f = c.d_ff, E = c.n_experts;
    const bool glu = c.activation == Activation::swiglu;
    std::vector<float> out((size_t)E * T * d), h1((size_t)T * f), h3(glu ? (size_t)T * f : 0);
    const float* p = layer.param_data();
    for (int e = 0; e < E; e++) {
        std::string pre = "experts." + std::to_string(e) + ".";
        const float* w1 = p + layer.param(pre + "w1").offset;  // [f, d]
        const float* w2 = p + layer.param(pre + "w2").offset;  // [d, f]
        sgemm(false, true, T, f, d, 1.f, x, d, w1, d, 0.f, h1.data(), f);
        if (glu) {
            const float* w3 = p + layer.param(pre + "w3").offset;
            sgemm(false, true, T, f, d, 1.f, x, d, w3, d, 0.f, h3.data(), f);
        }
        for (size_t i = 0; i < h1.size(); i++) {
            float v = h1[i];
            switch (c.activation) {
                case Activation::relu:
                    h1[i] = v > 0 ? v : 0.f;
                    break;
                case Activation::gelu:  // exact (erf) GELU, as the layer uses
                    h1[i] = 0.5f * v * (1.f + std::erf(v * 0.70710678118f));
                    break;
                case Activation::swiglu:
                    h1[i] = v / (1.f + std::exp(-v)) * h3[i];
                    break;
            }
        }
        sgemm(false, true, T, d, f, 1.f, h1.data(), f, w2, f, 0.f, out.data() + (size_t)e * T * d,
              d);
    }
    return out;
}

// Cosine similarity of the experts' flattened weights (w1, w3, w2). The layer stores each
// expert's matrices back to back and the experts one after another, so the rows are read in place
// (a copy would double the memory of a large model); a different layout is copied row by row.
static std::vector<double> expert_weight_similarity(MoeLayer& layer) {
    const MoeConfig& c = layer.config();
    const bool glu = c.activation == Activation::swiglu;
    std::vector<std::string> names = {"w1"};
    if (glu) names.push_back("w3");
    names.push_back("w2");
    int64_t per = 0;
    for (auto& n : names) per += layer.param("experts.0." + n).shape.numel();
    const float* p = layer.param_data();
    const size_t base = layer.param("experts.0.w1").offset;
    bool in_place = true;
    for (int e = 0; e < c.n_experts && in_place; e++) {
        size_t off = base + (size_t)e * per;
        for (auto& n : names) {
            const ParamSpec& s = layer.param("experts." + std::to_string(e) + "." + n);
            in_place &= s.offset == off;
            off += s.shape.numel();
        }
    }
    if (in_place) return cosine_similarity_matrix(p + base, c.n_experts, per);
    std::vector<float> rows((size_t)c.n_experts * per);
    for (int e = 0; e < c.n_experts; e++) {
        float* dst = rows.data() + (size_t)e * per;
        for (auto& n : names) {
            const ParamSpec& s = layer.param("experts." + std::to_string(e) + "." + n);
            std::copy(p + s.offset, p + s.offset + s.shape.numel(), dst);
            dst += s.shape.numel();
        }
    }
    return cosine_similarity_matrix(rows.data(), c.n_experts, per);
}

std::vector<LayerSimilarity> expert_similarity(Model& model, const std::vector<int32_t>& tokens) {
    const ModelConfig& mc = model.config();
    if (tokens.empty()) fail("expert_similarity: no probe tokens");
    const int d = mc.d_model, S = mc.block_size;
    std::vector<int> layers;
    for (int l = 0; l < mc.n_layers; l++)
        if (model.moe_layer(l)) layers.push_back(l);
    // FFN inputs of every MoE layer on the probe, gathered chunk by chunk.
    std::vector<std::vector<float>> xs(layers.size());
    for (size_t start = 0; start < tokens.size(); start += S) {
        int n = (int)std::min<size_t>(S, tokens.size() - start);
        model.forward(tokens.data() + start, nullptr, 1, n, /*training=*/false);
        for (size_t i = 0; i < layers.size(); i++) {
            const float* x = model.ffn_input(layers[i]);
            xs[i].insert(xs[i].end(), x, x + (size_t)n * d);
        }
    }
    std::vector<LayerSimilarity> out;
    for (size_t i = 0; i < layers.size(); i++) {
        MoeLayer& layer = *model.moe_layer(layers[i]);
        LayerSimilarity s;
        s.layer = layers[i];
        s.n_experts = layer.config().n_experts;
        s.weight_sim = expert_weight_similarity(layer);
        int T = (int)(xs[i].size() / d);
        std::vector<float> y = expert_outputs(layer, xs[i].data(), T);
        s.output_sim = cosine_similarity_matrix(y.data(), s.n_experts, (int64_t)T * d);
        s.probe_rows = T;
        out.push_back(std::move(s));
    }
    return out;
}

}  // namespace moe
