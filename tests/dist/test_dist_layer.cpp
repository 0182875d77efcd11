// Expert parallelism gives the single-process numbers (issue 10): run under
//   mpirun -np W test_dist_layer P
// Every rank builds the same layer twice: a single-process reference on the whole global batch
// (every rank's tokens, in rank order) and an expert-parallel one (P ranks per expert group,
// W / P data-parallel groups) on its own slice. Outputs, dx, aux losses, statistics and, after
// the gradient reduction, the router, shared-expert and owned-expert gradients must agree within
// reduction-order tolerance, for every router, with capacity (both priorities) and dropless, over
// two steps (the noise streams stay in step). Ranks get unequal token counts on purpose.
// Not GoogleTest: one process per rank, the exit code is the verdict (mpirun returns non-zero
// when any rank does).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "moe/error.h"
#include "moe/moe_layer.h"
#include "moe/process_group.h"
#include "moe/rng.h"

using namespace moe;

static int g_fail = 0;
static int g_rank = 0;

// max |a - b| <= tol * (max |b| + 1e-3): the scale of the tensor, not of each entry, because
// cancellations in sums make single entries tiny.
static void check_close(const std::string& what, const float* a, const float* b, size_t n,
                        double tol) {
    double mx = 0, md = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        mx = std::max(mx, std::fabs((double)b[i]));
        double dd = std::fabs((double)a[i] - (double)b[i]);
        if (!(dd <= md)) {
            md = dd;
            at = i;
        }
    }
    if (!(md <= tol * (mx + 1e-3))) {
        std::fprintf(stderr,
                     "rank %d: FAIL %s: max diff %.3g at [%zu] (got %.8g want %.8g), scale %.3g\n",
                     g_rank, what.c_str(), md, at, a[at], b[at], mx);
        g_fail++;
    }
}

static void check_bits(const std::string& what, const float* a, const float* b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (std::memcmp(a + i, b + i, sizeof(float)) != 0) {
            std::fprintf(stderr, "rank %d: FAIL %s: [%zu] %.9g vs %.9g (bits differ)\n", g_rank,
                         what.c_str(), i, a[i], b[i]);
            g_fail++;
            return;
        }
}

static void check_eq(const std::string& what, double a, double b, double tol) {
    if (!(std::fabs(a - b) <= tol * (std::fabs(b) + 1e-6))) {
        std::fprintf(stderr, "rank %d: FAIL %s: got %.10g want %.10g\n", g_rank, what.c_str(), a,
                     b);
        g_fail++;
    }
}

struct Case {
    std::string name;
    MoeConfig cfg;
};

static MoeConfig base(const std::string& router, int E) {
    MoeConfig c;
    c.d_model = 24;
    c.d_ff = 20;
    c.n_experts = E;
    c.top_k = 2;
    c.router = router;
    c.w_importance = 0.1f;
    c.w_switch = 0.01f;
    c.w_zloss = 0.001f;
    c.w_load = 0.1f;
    c.seed = 77;
    return c;
}

static std::vector<Case> cases(int E) {
    std::vector<Case> v;
    for (const char* r : {"topk", "switch", "gshard", "noisy-topk", "softmax", "expert-choice",
                          "hierarchical", "top-p"}) {
        MoeConfig c = base(r, E);
        if (std::string(r) == "switch") c.top_k = 1;
        if (std::string(r) == "softmax") c.top_k = E;
        if (std::string(r) == "hierarchical") {
            c.n_groups = 2;
            c.topk_groups = 1;
        }
        if (std::string(r) == "top-p") c.top_k = 3;
        if (std::string(r) == "expert-choice") c.capacity_factor = 1.0f;
        v.push_back({std::string(r) + "/dropless", c});
        if (std::string(r) != "expert-choice" && std::string(r) != "softmax") {
            MoeConfig k = c;
            k.dropless = false;
            k.capacity_factor = 0.75f;
            v.push_back({std::string(r) + "/capacity", k});
            k.priority = "weight";
            v.push_back({std::string(r) + "/capacity-weight", k});
        }
    }
    MoeConfig j = base("topk", E);
    j.jitter = 0.1f;
    j.gate_dropout = 0.2f;
    j.n_shared_experts = 1;
    j.dropless = false;
    j.capacity_factor = 1.0f;
    v.push_back({"topk/jitter+dropout+shared", j});
    MoeConfig s = base("topk", E);
    s.score = "sigmoid";
    s.activation = Activation::gelu;
    s.bias_update_rate = 0.01f;
    v.push_back({"topk/sigmoid+gelu+bias", s});
    return v;
}

static void run_case(const Case& cs, const ParallelGroups& g) {
    const int W = g.world_size(), r = g.world_rank();
    const MoeConfig& cfg = cs.cfg;
    const int d = cfg.d_model;
    std::vector<int64_t> start(W + 1, 0);
    for (int q = 0; q < W; q++) start[q + 1] = start[q] + 11 + 3 * q;  // unequal slices
    const int Tg = (int)start[W], T = (int)(start[r + 1] - start[r]);
    // par holds only its experts (as the trainer's layers do); ovl too, with the all-to-all in
    // chunks (as many as its experts): the same bits as par. full keeps every expert's buffer.
    const ExpertShard shard{g.ep_size(), g.ep_size() > 1 ? g.expert->rank() : 0};
    MoeLayer ref(cfg), par(cfg, true, shard), ovl(cfg, true, shard), full(cfg);
    par.set_parallel(g);
    ovl.set_parallel(g);
    ovl.set_overlap(cfg.n_experts / shard.parts);
    full.set_parallel(g);
    Rng data(4242);
    for (int step = 0; step < 2; step++) {
        std::vector<float> x((size_t)Tg * d), dy((size_t)Tg * d);
        data.fill_normal(x.data(), (int64_t)x.size());
        data.fill_normal(dy.data(), (int64_t)dy.size());
        std::vector<float> y_ref((size_t)Tg * d), dx_ref((size_t)Tg * d);
        ref.zero_grad();
        ref.forward(ConstTensorView(x.data(), {Tg, d}), TensorView(y_ref.data(), {Tg, d}), true);
        ref.backward(ConstTensorView(dy.data(), {Tg, d}), TensorView(dx_ref.data(), {Tg, d}));

        const float* xs = x.data() + start[r] * d;
        const float* dys = dy.data() + start[r] * d;
        std::vector<float> y((size_t)T * d), dx((size_t)T * d);
        std::vector<float> yo(y.size()), dxo(dx.size()), yf(y.size()), dxf(dx.size());
        for (MoeLayer* l : {&par, &ovl, &full}) {
            float* yy = l == &par ? y.data() : l == &ovl ? yo.data() : yf.data();
            float* dd = l == &par ? dx.data() : l == &ovl ? dxo.data() : dxf.data();
            l->zero_grad();
            l->forward(ConstTensorView(xs, {T, d}), TensorView(yy, {T, d}), true);
            l->backward(ConstTensorView(dys, {T, d}), TensorView(dd, {T, d}));
            l->allreduce_grads();
        }
        const std::string at = cs.name + " step " + std::to_string(step);
        // Overlapped chunks and the full buffer: bit for bit the sharded layer's numbers.
        check_bits(at + " overlap y", yo.data(), y.data(), y.size());
        check_bits(at + " overlap dx", dxo.data(), dx.data(), dx.size());
        check_bits(at + " overlap grads", ovl.grad_data(), par.grad_data(), par.n_params());
        check_bits(at + " full-buffer y", yf.data(), y.data(), y.size());
        check_bits(at + " full-buffer dx", dxf.data(), dx.data(), dx.size());
        check_close(at + " y", y.data(), y_ref.data() + start[r] * d, (size_t)T * d, 1e-5);
        check_close(at + " dx", dx.data(), dx_ref.data() + start[r] * d, (size_t)T * d, 1e-5);
        check_eq(at + " aux", par.aux().weighted_total, ref.aux().weighted_total, 1e-6);
        check_eq(at + " dropped", (double)par.stats().dropped, (double)ref.stats().dropped, 0);
        for (int e = 0; e < cfg.n_experts; e++)
            check_eq(at + " tokens of expert " + std::to_string(e),
                     (double)par.stats().tokens_per_expert[e],
                     (double)ref.stats().tokens_per_expert[e], 0);
        // Gradients: every replicated tensor, and the experts this rank owns.
        MoeLayer::ExpertRange o = par.owned_experts();
        for (const ParamSpec& p : ref.params()) {
            const bool expert = p.name.rfind("experts.", 0) == 0;
            if (expert) {
                int e = std::atoi(p.name.c_str() + 8);
                if (e < o.first || e >= o.first + o.count) continue;
            }
            check_close(at + " grad " + p.name, par.grad_data() + par.param(p.name).offset,
                        ref.grad_data() + p.offset, (size_t)p.shape.numel(), 2e-5);
            check_bits(at + " full-buffer grad " + p.name,
                       full.grad_data() + full.param(p.name).offset,
                       par.grad_data() + par.param(p.name).offset, (size_t)p.shape.numel());
        }
        ref.update_balance_bias();
        par.update_balance_bias();
        ovl.update_balance_bias();
        full.update_balance_bias();
    }
    if (cfg.router == "expert-choice") return;  // not causal: no generation
    // Inference (moe generate under mpirun): every rank of an expert group passes the whole
    // batch; the sharded layer must give the single-process bits.
    MoeLayer inf(cfg, false, shard);
    inf.bind(par.param_data(), nullptr);
    inf.balance_bias() = par.balance_bias();
    inf.set_parallel(g, false, /*replicated_tokens=*/true);
    ref.balance_bias() = par.balance_bias();
    std::vector<float> x((size_t)Tg * d), y_ref(x.size()), y_inf(x.size());
    data.fill_normal(x.data(), (int64_t)x.size());
    // ref's weights at this point equal par's (neither was updated): the same model.
    ref.forward(ConstTensorView(x.data(), {Tg, d}), TensorView(y_ref.data(), {Tg, d}), false);
    inf.forward(ConstTensorView(x.data(), {Tg, d}), TensorView(y_inf.data(), {Tg, d}), false);
    check_bits(cs.name + " inference (replicated tokens) y", y_inf.data(), y_ref.data(), x.size());
}

// E not divisible by the expert-parallel size, and more expert ranks than experts: clear errors.
static void check_refusals(const ParallelGroups& g) {
    const int P = g.ep_size();
    if (P < 2) return;
    for (int E : {P + 1, P - 1}) {
        MoeConfig c = base("topk", E);
        c.top_k = 1;
        MoeLayer l(c);
        try {
            l.set_parallel(g);
            std::fprintf(stderr,
                         "rank %d: FAIL: n_experts=%d under --expert-parallel %d accepted\n",
                         g_rank, E, P);
            g_fail++;
        } catch (const Error& e) {
            if (std::string(e.what()).find("--expert-parallel") == std::string::npos) {
                std::fprintf(stderr, "rank %d: FAIL: unclear message: %s\n", g_rank, e.what());
                g_fail++;
            }
        }
    }
}

int main(int argc, char** argv) {
    const int P = argc > 1 ? std::atoi(argv[1]) : 1;
    ParallelGroups g;
    try {
        g = init_parallel(mpi_available(), P);
    } catch (const Error& e) {
        std::fprintf(stderr, "moe: error: %s\n", e.what());
        return 1;
    }
    g_rank = g.world_rank();
    const int E = 4 * std::max(P, 1);
    try {
        for (const Case& c : cases(E)) run_case(c, g);
        check_refusals(g);
    } catch (const Error& e) {
        g.world->abort(e.what());
    }
    int64_t fails[1] = {g_fail};
    std::vector<int64_t> all(g.world_size());
    g.world->allgather(fails[0], all.data());
    int64_t total = 0;
    for (auto v : all) total += v;
    if (g_rank == 0)
        std::printf("test_dist_layer: %d ranks, expert-parallel %d (%s): %s (%lld failures)\n",
                    g.world_size(), P, g.layout().c_str(), total ? "FAIL" : "ok", (long long)total);
    finalize_parallel();
    return total ? 1 : 0;
}
