// The training loop (include/moe/trainer.h): one step = batch -> forward -> backward (CE + aux
// losses) -> global-norm clip -> AdamW (no decay on norms/biases) -> balance-bias update.
// Evaluation on fixed validation batches, best/ and latest/ checkpoints, metrics.jsonl.
#include "moe/trainer.h"

#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "data/loader.h"
#include "data/token_file.h"
#include "kernels/adamw.h"
#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/finetune.h"
#include "moe/runtime.h"
#include "train/metrics.h"

namespace moe {

using json = nlohmann::json;

namespace {

// Contiguous trainable parameter ranges with the same weight-decay setting: AdamW runs once per
// range. Frozen tensors are in no range (no update, no clipping, no optimizer state); the AdamW
// moments are compact, a range's state starting at state_offset.
struct DecayRun {
    size_t offset, n;
    bool decay;
    size_t state_offset;
};

std::vector<DecayRun> decay_runs(const Model& model, const std::vector<uint8_t>& frozen) {
    std::vector<size_t> order(model.params().size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    const auto& specs = model.params();
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return specs[a].offset < specs[b].offset; });
    std::vector<DecayRun> runs;
    size_t state = 0;
    for (size_t i : order) {
        const ParamSpec& s = specs[i];
        if (!frozen.empty() && frozen[i]) continue;
        bool decay = !model.is_no_decay(s);
        size_t n = (size_t)s.shape.numel();
        if (!runs.empty() && runs.back().decay == decay &&
            runs.back().offset + runs.back().n == s.offset)
            runs.back().n += n;
        else
            runs.push_back({s.offset, n, decay, state});
        state += n;
    }
    return runs;
}

// Global-norm clipping over the trainable ranges only (clip_grad_norm's arithmetic: squares
// summed in double, range by range in offset order).
double clip_grad_norm_runs(float* g, const std::vector<DecayRun>& runs, double max_norm) {
    double ss = 0;
    for (auto& r : runs) {
        double n = l2_norm(g + r.offset, r.n);
        ss += n * n;
    }
    double norm = std::sqrt(ss);
    if (max_norm > 0 && std::isfinite(norm) && norm > max_norm)
        for (auto& r : runs) scale_inplace(g + r.offset, r.n, (float)(max_norm / (norm + 1e-6)));
    return norm;
}

// --init-from: the model keys come from the checkpoint. A shape key the user gave (config file
// or flag) with another value is an error naming it; other model keys (routing options,
// balancing weights) keep the user's value when given, else take the checkpoint's.
void take_model_keys(TrainConfig& cfg, const ModelConfig& ck, const std::set<std::string>& given,
                     const std::string& ckpt) {
    TrainConfig ref = cfg;
    ref.model = ck;
    json jr = config_to_json(ref), jc = config_to_json(cfg);
    const auto& shape = model_shape_keys();
    for (auto& [k, v] : jr.items()) {
        if (!is_model_key(k) || k == "init_std") continue;
        const bool is_shape = std::find(shape.begin(), shape.end(), k) != shape.end();
        if (given.count(k)) {
            if (is_shape && jc[k] != v)
                fail(
                    "{}: {} but the checkpoint {} has {}; init_from takes the model shape from "
                    "the checkpoint: drop the key (or use upcycle_from to change the FFN)",
                    k, jc[k].dump(), ckpt, v.dump());
            continue;
        }
        config_apply_json(cfg, json{{k, v}}, ckpt + "/config.json");
    }
}

// The tokenizer of a checkpoint a fresh run starts from: the config must not ask for another.
void check_tokenizer_keys(TrainConfig& cfg, const Tokenizer& tok, int ck_vocab,
                          const std::set<std::string>& given, const std::string& ckpt) {
    // Hugging Face models pad the embedding past their tokenizer.json's ids (Qwen: 151936 rows
    // for 151665 ids): fewer ids than rows is fine there (those rows never see a token); moe.cpp's
    // own char and SentencePiece vocabularies always have exactly vocab_size symbols.
    const bool padded_ok = tok.kind() == "bpe";
    if (padded_ok ? tok.vocab_size() > ck_vocab : tok.vocab_size() != ck_vocab)
        fail("{}: its tokenizer has {} symbols but its config.json says vocab_size={}", ckpt,
             tok.vocab_size(), ck_vocab);
    if (given.count("tokenizer") && cfg.tokenizer != tok.kind())
        fail("tokenizer: '{}' but the checkpoint {} has a {} tokenizer ({} symbols); the run uses "
             "the checkpoint's: drop the key",
             cfg.tokenizer, ckpt, tok.kind(), tok.vocab_size());
    if (tok.kind() == "sentencepiece" && given.count("vocab_size") &&
        cfg.vocab_size != tok.vocab_size())
        fail("vocab_size: {} but the checkpoint {} has a vocabulary of {}; the run uses the "
             "checkpoint's: drop the key",
             cfg.vocab_size, ckpt, tok.vocab_size());
    cfg.tokenizer = tok.kind();
    if (tok.kind() == "sentencepiece") cfg.vocab_size = tok.vocab_size();
}

// A corpus' validation split as fixed batches (the same windows at every evaluation).
void fixed_batches(const std::vector<int32_t>& val, int n, int B, int S, uint64_t seed,
                   const std::string& name, std::vector<int32_t>* x, std::vector<int32_t>* y) {
    x->assign((size_t)n * B * S, 0);
    y->assign(x->size(), 0);
    BatchLoader vl(&val, B, S, seed, name);
    for (int i = 0; i < n; i++) vl.next(x->data() + (size_t)i * B * S, y->data() + (size_t)i * B * S);
}

ModelConfig model_config_for(const TrainConfig& c, int vocab) {
    ModelConfig m = c.model;
    m.vocab_size = vocab;
    m.moe.d_model = m.d_model;
    m.seed = c.seed;
    m.moe.seed = c.seed * 0x9e3779b97f4a7c15ULL + 1;  // router noise stream, distinct from init
    return m;
}

std::string fmt_duration(double s) {
    if (s < 0 || !std::isfinite(s)) return "?";
    int t = (int)(s + 0.5);
    if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
    if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
    return fmt::format("{}s", t);
}

// ---- several processes (docs/distributed.md) ----

// FNV-1a over bytes: the config hash compared across ranks and the per-expert checksums.
uint64_t fnv1a(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ULL) {
    const unsigned char* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

// Every rank must run the same training: a config (or resume point) that differs would make
// the collectives disagree, so it is a clear error at start-up rather than a hang later.
void check_same_config(const ParallelGroups& g, const std::string& what) {
    const int W = g.world_size();
    const uint64_t h = fnv1a(what.data(), what.size());
    std::vector<uint64_t> all(W);
    g.world->allgather_bytes(&h, sizeof(h), all.data());
    for (int q = 0; q < W; q++)
        if (all[q] != all[0])
            fail("the ranks were started with different configs, flags or checkpoints (rank {} "
                 "hash {:016x}, rank 0 hash {:016x}); start every rank with the same flags and "
                 "files",
                 q, all[q], all[0]);
}

// The routed experts' block of each MoE layer, in model buffer offsets.
struct ExpertBlocks {
    struct Layer {
        int layer;
        size_t all_offset, all_floats;  // every routed expert
        size_t per_expert;
        int count;                      // experts per expert-group rank
        size_t own_offset;              // this rank's experts
    };
    std::vector<Layer> layers;
};

ExpertBlocks expert_blocks(Model& model) {
    ExpertBlocks b;
    for (int l = 0; l < model.config().n_layers; l++) {
        MoeLayer* ml = model.moe_layer(l);
        if (!ml) continue;
        const size_t base = (size_t)(ml->param_data() - model.param_data());
        MoeLayer::ExpertRange o = ml->owned_experts();
        b.layers.push_back({l, base + o.all_offset, o.all_floats, o.floats_per_expert, o.count,
                            base + o.offset});
    }
    return b;
}

// Gradients of every rank averaged: the replicated parameters (all but the routed experts) over
// the world in flat buckets, each owned expert block over its data group; then / W (each rank's
// loss is the mean over its own tokens). Non-owned expert gradients are 0 and stay so.
void reduce_gradients(const ParallelGroups& g, const ExpertBlocks& eb, float* grad, size_t n) {
    size_t at = 0;
    const int64_t kBucket = 1 << 22;  // 16 MiB per call
    auto world_range = [&](size_t lo, size_t hi) {
        for (size_t o = lo; o < hi; o += kBucket)
            g.world->allreduce_sum(grad + o, (int64_t)std::min<size_t>(kBucket, hi - o));
    };
    for (auto& L : eb.layers) {
        world_range(at, L.all_offset);
        if (g.dp_size() > 1)
            g.data->allreduce_sum(grad + L.own_offset, (int64_t)(L.per_expert * L.count));
        at = L.all_offset + L.all_floats;
    }
    world_range(at, n);
    scale_inplace(grad, n, 1.f / (float)g.world_size());
}

// Global-norm clipping when the expert gradients are split over the expert group: the squares
// of this rank's experts are summed over the group; the replicated rest is the same everywhere.
// Only the trainable ranges count (frozen tensors have no defined gradient), as in one process.
double clip_grad_norm_parallel(const ParallelGroups& g, const ExpertBlocks& eb,
                               const std::vector<DecayRun>& runs, float* grad, double max_norm) {
    // Squares over [lo, hi) intersected with the runs.
    auto squares = [&](size_t lo, size_t hi) {
        double ss = 0;
        for (auto& r : runs) {
            const size_t a = std::max(lo, r.offset), b = std::min(hi, r.offset + r.n);
            if (a < b) {
                double v = l2_norm(grad + a, b - a);
                ss += v * v;
            }
        }
        return ss;
    };
    double all = squares(0, SIZE_MAX), own = 0;
    for (auto& L : eb.layers) own += squares(L.own_offset, L.own_offset + L.per_expert * L.count);
    double own_sum = own;
    g.expert->allreduce_sum(&own_sum, 1);
    const double norm = std::sqrt(std::max(0.0, all - own + own_sum));
    if (max_norm > 0 && std::isfinite(norm) && norm > max_norm)
        for (auto& r : runs) scale_inplace(grad + r.offset, r.n, (float)(max_norm / (norm + 1e-6)));
    return norm;
}

// The expert index J of a routed expert tensor ("...experts.J.w1.weight"), or -1.
int expert_of(const std::string& name) {
    const size_t at = name.find(".experts.");
    return at == std::string::npos ? -1 : std::atoi(name.c_str() + at + 9);
}

// Saving a sharded model (each rank holds its experts only): rank 0 writes the whole table, the
// experts of the other ranks of its expert group broadcast by their owners one tensor at a time,
// in file order (checkpoint.h, TensorFetch). The other ranks of expert group 0 run the same
// sequence (serve_checkpoint); the data-parallel replicas hold copies and take no part.
struct ExpertServer {
    const ParallelGroups* g = nullptr;
    Model* model = nullptr;
    const float *m = nullptr, *v = nullptr;  // AdamW moments (null: weights only)
    const std::vector<int64_t>* state_offsets = nullptr;
    std::set<std::string> frozen;        // full-table names
    std::map<std::string, size_t> held;  // name -> params() index
    int per_rank = 1;                    // experts per expert-group rank
    Buffer scratch;

    const float* serve(const ParamSpec& s, int which) {
        if (which > 0 && (frozen.count(s.name) || !m)) return nullptr;
        const int owner = expert_of(s.name) / per_rank;
        const int64_t n = s.shape.numel();
        float* data;
        if (owner == g->expert->rank()) {
            const size_t i = held.at(s.name);
            const size_t o = which == 0 ? model->params()[i].offset : (size_t)(*state_offsets)[i];
            data = const_cast<float*>(which == 0   ? model->param_data() + o
                                      : which == 1 ? m + o
                                                   : v + o);
        } else {
            if ((int64_t)scratch.size() < n) scratch.resize((size_t)n);
            data = scratch.data();
        }
        g->expert->bcast(data, n, owner);
        return data;
    }
    // The sequence save_checkpoint asks for, on a rank that does not write.
    void serve_all(int writer_rank_in_group) {
        const std::vector<ParamSpec> full = Model::layout(model->config(), nullptr);
        auto lacks = [&](const ParamSpec& s) {
            const int e = expert_of(s.name);
            return e >= 0 && e / per_rank != writer_rank_in_group;
        };
        for (auto& s : full)
            if (lacks(s)) serve(s, 0);
        if (m)
            for (auto& s : full)
                if (lacks(s) && serve(s, 1)) serve(s, 2);
    }
};

// A checksum per expert tensor (trainer_state.json "expert_checksums"), verified on load: a
// checkpoint assembled from several ranks must hold what each owner had. Each rank hashes the
// experts it holds; the expert group gathers them (each rank the same number: E/P experts).
json expert_checksums(const ParallelGroups& g, Model& model) {
    std::vector<uint64_t> mine;
    for (const ParamSpec& p : model.params())
        if (expert_of(p.name) >= 0)
            mine.push_back(
                fnv1a(model.param_data() + p.offset, sizeof(float) * (size_t)p.shape.numel()));
    const int P = model.expert_shard().parts;
    std::vector<uint64_t> all(mine.size() * P);
    if (P > 1)
        g.expert->allgather_bytes(mine.data(), (int64_t)(mine.size() * sizeof(uint64_t)),
                                  all.data());
    else
        all = mine;
    json j = json::object();
    const int per_rank = model.config().moe.n_experts / P;
    std::vector<size_t> next(P, 0);
    for (const ParamSpec& p : Model::layout(model.config(), nullptr)) {
        const int e = expert_of(p.name);
        if (e < 0) continue;
        const int q = e / per_rank;
        j[p.name] = fmt::format("{:016x}", all[(size_t)q * mine.size() + next[q]++]);
    }
    return j;
}

// Each rank checks the experts it holds (every expert is held by some rank).
void verify_expert_checksums(Model& model, const json& state, const std::string& ckpt) {
    if (!state.contains("expert_checksums")) return;  // written before issue 10
    const json want = state["expert_checksums"];
    json got = json::object();
    for (const ParamSpec& p : model.params())
        if (expert_of(p.name) >= 0)
            got[p.name] = fmt::format("{:016x}", fnv1a(model.param_data() + p.offset,
                                                       sizeof(float) * (size_t)p.shape.numel()));
    std::set<std::string> names;
    for (const ParamSpec& p : Model::layout(model.config(), nullptr)) names.insert(p.name);
    for (auto& [name, h] : want.items()) {
        if (!names.count(name))
            fail("{}/trainer_state.json: expert_checksums names {}, which the model does not have; "
                 "the checkpoint is damaged",
                 ckpt, name);
        if (!got.contains(name)) continue;  // another rank's expert
        if (!h.is_string())
            fail(
                "{}/trainer_state.json: expert_checksums[{}] is not a string; the checkpoint is "
                "damaged",
                ckpt, name);
        if (got[name] != h)
            fail("{}/model.safetensors: {} does not match its checksum in trainer_state.json ({} "
                 "vs {}); the checkpoint is damaged, resume from another one",
                 ckpt, name, got[name].get<std::string>(), h.get<std::string>());
    }
}

// Keeps metrics.jsonl consistent with the checkpoint being resumed: lines logged after it (by
// a run killed later) are dropped.
void truncate_metrics(const std::string& path, int64_t step) {
    if (!file_exists(path)) return;
    std::istringstream in(read_file(path));
    std::string line, kept;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        try {
            json j = json::parse(line);
            if (j.value("step", (int64_t)0) > step) continue;
        } catch (const std::exception&) {
            continue;  // a line cut by a kill
        }
        kept += line + "\n";
    }
    write_file_atomic(path, kept);
}

}  // namespace

TrainResult run_train(const TrainOptions& opt_in) {
    const double t_setup0 = now_seconds();
    // Several processes: rank 0 alone prints and writes files (docs/distributed.md).
    ParallelGroups groups = opt_in.groups;
    if (!groups.world) groups.world = groups.expert = groups.data = make_local_group();
    const int W = groups.world_size(), wrank = groups.world_rank();
    const bool writer = wrank == 0;
    TrainOptions opt = opt_in;
    opt.progress = opt_in.progress && writer;
    if (W > 1) {
        std::string what = config_to_json(opt.cfg).dump() + "|" + opt.resume_dir + "|" +
                           opt.out_dir + "|" + groups.layout() + "|" + std::to_string(opt.overlap);
        for (auto& [k, v] : opt.overrides) what += "|" + k + "=" + v;
        check_same_config(groups, what);
    }
    const bool resuming = !opt.resume_dir.empty();
    TrainConfig cfg = opt.cfg;
    std::string resume_ckpt;
    json state;
    if (resuming) {
        if (dir_exists(opt.resume_dir) && !file_exists(opt.resume_dir + "/model.safetensors")) {
            recover_checkpoint_dir(opt.resume_dir + "/latest");  // a run folder: tidy up first
            recover_checkpoint_dir(opt.resume_dir + "/best");
        }
        resume_ckpt = resolve_resume_dir(opt.resume_dir);
        state = load_trainer_state(resume_ckpt);
        if (!state.contains("config") || !state.contains("step") || !state.contains("loader"))
            fail(
                "{}/trainer_state.json: lacks config, step or loader; the checkpoint is damaged, "
                "resume from another one",
                resume_ckpt);
        cfg = TrainConfig();
        config_apply_json(cfg, state["config"], resume_ckpt + "/trainer_state.json: config");
        cfg.stop_after = 0;  // an invocation's own stop point, not part of the run
    }
    const TrainConfig recorded = cfg;
    std::set<std::string> given(opt.given_keys.begin(), opt.given_keys.end());
    for (auto& [k, v] : opt.overrides) {
        config_set(cfg, k, v);
        std::string key = k;
        for (auto& ch : key)
            if (ch == '-') ch = '_';
        given.insert(key);
    }
    if (resuming) {
        // What the run started from and what it freezes are part of the run.
        if (cfg.freeze != recorded.freeze)
            fail("--freeze: '{}' but the run being resumed freezes '{}'; a resumed run keeps its "
                 "freeze (start a new run with --init-from {} to change it)",
                 cfg.freeze, recorded.freeze, resume_ckpt);
        if (cfg.init_from != recorded.init_from || cfg.upcycle_from != recorded.upcycle_from ||
            cfg.upcycle_noise != recorded.upcycle_noise)
            fail("--init-from / --upcycle-from: a resumed run continues from its own checkpoint {}; "
                 "drop the flag",
                 resume_ckpt);
    }
    // Fine-tuning: the weights (and tokenizer) come from a checkpoint.
    std::string init_ckpt, upcycle_ckpt;
    std::unique_ptr<Tokenizer> ck_tok;
    if (!resuming && !cfg.init_from.empty()) {
        init_ckpt = resolve_checkpoint_dir(cfg.init_from);
        ModelConfig ck = load_model_config(init_ckpt);
        take_model_keys(cfg, ck, given, init_ckpt);
        ck_tok = load_tokenizer(init_ckpt);
        check_tokenizer_keys(cfg, *ck_tok, ck.vocab_size, given, init_ckpt);
    } else if (!resuming && !cfg.upcycle_from.empty()) {
        upcycle_ckpt = resolve_checkpoint_dir(cfg.upcycle_from);
        ModelConfig dense = load_model_config(upcycle_ckpt);
        ck_tok = load_tokenizer(upcycle_ckpt);
        check_tokenizer_keys(cfg, *ck_tok, dense.vocab_size, given, upcycle_ckpt);
    }
    config_validate(cfg);
    if (resuming) {
        // A finished run: say so and touch nothing (no data files, no metrics, no checkpoint).
        const int64_t saved_step = state["step"].get<int64_t>();
        const int64_t end =
            cfg.stop_after > 0 ? std::min<int64_t>(cfg.stop_after, cfg.max_steps) : cfg.max_steps;
        if (saved_step >= end) {
            TrainResult r;
            std::string parent = resume_ckpt.substr(0, resume_ckpt.find_last_of('/'));
            r.run_dir = opt.out_dir.empty() ? parent : opt.out_dir;
            r.best_dir = dir_exists(r.run_dir + "/best") ? r.run_dir + "/best" : resume_ckpt;
            r.latest_dir = resume_ckpt;
            r.step = saved_step;
            r.val_loss = state.contains("val_loss") && state["val_loss"].is_number()
                             ? state["val_loss"].get<double>()
                             : NAN;
            r.best_val_loss = state.contains("best_val_loss") && state["best_val_loss"].is_number()
                                  ? state["best_val_loss"].get<double>()
                                  : NAN;
            r.best_step = state.value("best_step", (int64_t)0);
            r.train_time_s = state.value("elapsed_s", 0.0);
            r.already_finished = true;
            return r;
        }
    }
    set_threads(cfg.threads);
    if (W > 1) {
        if (cfg.batch_size % W != 0)
            fail(
                "batch_size={}: must be divisible by the {} ranks (each rank trains on batch_size "
                "/ ranks sequences of every batch); choose a multiple of {}",
                cfg.batch_size, W, W);
    }

    std::string run_dir = opt.out_dir;
    if (run_dir.empty() && resuming) {
        // A run's checkpoint lives at RUN/latest: continue in RUN.
        std::string parent = resume_ckpt.substr(0, resume_ckpt.find_last_of('/'));
        run_dir = resume_ckpt.find('/') == std::string::npos ? "." : parent;
    }
    if (run_dir.empty()) usage_fail("--out: no run folder; give --out DIR");
    const std::string best_dir = run_dir + "/best", latest_dir = run_dir + "/latest";
    const std::string metrics_path = run_dir + "/metrics.jsonl";
    recover_checkpoint_dir(best_dir);
    recover_checkpoint_dir(latest_dir);
    if (!resuming && (dir_exists(best_dir) || dir_exists(latest_dir)))
        fail(
            "--out {}: already holds a run (best/ or latest/); continue it with --resume {}, or "
            "choose another --out, or delete it first",
            run_dir, run_dir);

    // ---- data and tokenizer ----
    std::string text = read_corpus_text(cfg.data);
    check_utf8(text, cfg.data);  // found now, not at the first checkpoint save
    std::unique_ptr<Tokenizer> tok;
    if (resuming) {
        tok = load_tokenizer(resume_ckpt);
    } else if (ck_tok) {
        tok = std::move(ck_tok);
    } else if (cfg.tokenizer == "bpe") {
        fail("tokenizer: 'bpe' (a Hugging Face tokenizer.json) comes from a checkpoint; give "
             "--init-from a Hugging Face folder, or use char or sentencepiece");
    } else if (cfg.tokenizer == "char") {
        tok = build_char_tokenizer(text);  // vocab over the whole corpus (nanoGPT)
    } else {
        std::string tr, va;
        split_text(text, cfg.val_fraction, &tr, &va);
        if (opt.progress)
            std::fprintf(stderr, "train: training SentencePiece (%s, %d)...\n",
                         cfg.sp_model_type.c_str(), cfg.vocab_size);
        tok = train_sentencepiece(tr, cfg.vocab_size, cfg.sp_model_type);
    }
    // A vocabulary that did not come from this text may lack some of its symbols.
    int64_t n_mapped = 0;
    if (resuming || !init_ckpt.empty() || !upcycle_ckpt.empty())
        text = map_unknown_symbols(text, *tok, cfg.unknown_symbol, cfg.data, &n_mapped);
    if (n_mapped > 0 && opt.progress)
        std::fprintf(stderr, "train: %s: %lld symbols outside the vocabulary mapped to '%s'\n",
                     cfg.data.c_str(), (long long)n_mapped, cfg.unknown_symbol.c_str());
    Corpus corpus = tokenize_corpus(text, cfg.val_fraction, *tok);
    // A second domain evaluated beside the main validation split (forgetting while fine-tuning).
    std::vector<int32_t> also_val;
    if (!cfg.eval_also.empty()) {
        std::string t2 = map_unknown_symbols(read_corpus_text(cfg.eval_also), *tok,
                                             cfg.unknown_symbol, cfg.eval_also);
        std::string tr2, va2;
        split_text(t2, cfg.val_fraction, &tr2, &va2);
        try {
            also_val = tok->encode(va2);
        } catch (const Error& e) {
            fail("{}: {}", cfg.eval_also, e.what());
        }
        if (also_val.size() < (size_t)cfg.model.block_size + 1)
            fail("{}: the validation split has {} tokens, fewer than block_size + 1 = {}",
                 cfg.eval_also, also_val.size(), cfg.model.block_size + 1);
    }
    const int B = cfg.batch_size, S = cfg.model.block_size;
    if (corpus.train.size() < (size_t)S + 1)
        fail(
            "{}: the training split has {} tokens, fewer than block_size + 1 = {}; give a longer "
            "text or a smaller block_size",
            cfg.data, corpus.train.size(), S + 1);
    if (corpus.val.size() < (size_t)S + 1)
        fail(
            "{}: the validation split has {} tokens, fewer than block_size + 1 = {}; give a "
            "longer text, a larger val_fraction or a smaller block_size",
            cfg.data, corpus.val.size(), S + 1);
    if (resuming) {
        int64_t nt = state.value("train_tokens", (int64_t)-1),
                nv = state.value("val_tokens", (int64_t)-1);
        if (nt != (int64_t)corpus.train.size() || nv != (int64_t)corpus.val.size())
            fail(
                "{}: the data changed since the checkpoint ({} / {} train / val tokens now, {} / "
                "{} then); resume with the same data, or start a new run",
                cfg.data, corpus.train.size(), corpus.val.size(), nt, nv);
    }
    // The embedding's rows: the tokenizer's ids, or a checkpoint's (padded) vocab_size when the
    // run starts from, or resumes, a model with more rows than its tokenizer has ids.
    int model_vocab = tok->vocab_size();
    if (!init_ckpt.empty()) model_vocab = std::max(model_vocab, load_model_config(init_ckpt).vocab_size);
    if (resuming)
        model_vocab = std::max(model_vocab, load_model_config(resume_ckpt).vocab_size);
    // A bad freeze spec or a checkpoint that does not fit fails before the run folder exists.
    {
        ModelConfig m0 = model_config_for(cfg, model_vocab);
        size_t n0 = 0;
        if (!cfg.freeze.empty()) resolve_freeze(Model::layout(m0, &n0), cfg.freeze, "freeze");
        if (!init_ckpt.empty()) check_checkpoint_sizes(m0, init_ckpt, /*training=*/true);
        if (!upcycle_ckpt.empty()) {
            Model probe(m0);  // the shapes checked on a throw-away copy
            upcycle_params(probe, upcycle_ckpt, 0.f, cfg.seed);
        }
    }
    if (writer) make_dirs(run_dir + "/data");  // the run folder too: once the data is known good
    if (!resuming && writer) {
        write_token_file(run_dir + "/data/train.tok", corpus.train, tok->vocab_size(), tok->kind());
        write_token_file(run_dir + "/data/val.tok", corpus.val, tok->vocab_size(), tok->kind());
    }

    // ---- model and optimizer ----
    ModelConfig mcfg = model_config_for(cfg, model_vocab);
    // Expert parallelism: each rank allocates only the experts it owns (ExpertShard); the
    // checkpoints still hold every expert (gathered on save, each rank reading its own on load).
    const ExpertShard shard = groups.ep_size() > 1 && mcfg.any_moe()
                                  ? ExpertShard{groups.ep_size(), groups.expert->rank()}
                                  : ExpertShard{};
    if (shard.sharded()) {
        size_t n = 0;
        MoeLayer::layout(
            [&] {
                MoeConfig c = mcfg.moe;
                c.d_model = mcfg.d_model;
                return c;
            }(),
            &n, shard);  // E divisible by P: a clear error before anything else
    }
    if (resuming) {
        ModelConfig saved = load_model_config(resume_ckpt);
        if (model_config_to_hf(saved).dump() != model_config_to_hf(mcfg).dump())
            fail(
                "{}/config.json: does not match the training config (a model key changed by a "
                "flag, or an edited config.json); resume without model flags, or start a new run",
                resume_ckpt);
    }
    if (resuming) check_checkpoint_sizes(mcfg, resume_ckpt, /*training=*/true);
    {
        // Parameters, gradients, two AdamW moments, and the activations of one step (per layer
        // about 12 d + 3 f + heads x S floats per token, plus the logits): refused before
        // anything is allocated when the machine cannot hold them.
        size_t n = 0;
        Model::layout(mcfg, &n, shard);  // this rank's share of the experts
        const double T = (double)cfg.batch_size / W * mcfg.block_size;
        const double f = std::max(mcfg.d_ff, mcfg.moe.d_ff * std::max(1, mcfg.moe.top_k));
        const double act = T * (mcfg.n_layers * (12.0 * mcfg.d_model + 3 * f +
                                                 (double)mcfg.n_heads * mcfg.block_size) +
                                2.0 * mcfg.vocab_size);
        check_fits_in_memory(4.0 * (4.0 * n + act),
                             fmt::format("config: the model ({:.3g} parameters) and a batch of "
                                         "batch_size={} x block_size={}",
                                         (double)n, cfg.batch_size, mcfg.block_size),
                             "lower d_model, n_layers, n_experts, batch_size or block_size");
    }
    Model model(mcfg, /*trainable=*/true, shard);
    const size_t P = model.n_params();  // this rank's
    size_t P_all = P;
    const std::vector<ParamSpec> full_specs = Model::layout(mcfg, &P_all);
    for (int l = 0; l < mcfg.n_layers; l++)
        if (MoeLayer* ml = model.moe_layer(l)) {
            ml->set_parallel(groups, /*mean_grads=*/true);
            ml->set_overlap(opt.overlap);
        }
    const ExpertBlocks eblocks = expert_blocks(model);
    // The freeze is resolved on the full table (the same tensors whatever the layout), then
    // mapped onto the tensors this rank holds.
    std::vector<uint8_t> frozen, frozen_full;
    std::set<std::string> frozen_names;
    if (!cfg.freeze.empty()) {
        frozen_full = resolve_freeze(full_specs, cfg.freeze, "freeze");
        for (size_t i = 0; i < full_specs.size(); i++)
            if (frozen_full[i]) frozen_names.insert(full_specs[i].name);
        for (const ParamSpec& p : model.params()) frozen.push_back(frozen_names.count(p.name));
    }
    model.set_frozen(frozen);
    model.set_precision(precision_from_string(cfg.precision),
                        precision_from_string(cfg.router_precision));
    const std::vector<DecayRun> runs = decay_runs(model, frozen);
    size_t n_trainable = 0;
    for (auto& r : runs) n_trainable += r.n;
    // AdamW moments only for trainable tensors (state_offsets maps a tensor to its state).
    std::vector<int64_t> state_offsets(model.params().size(), -1);
    {
        size_t st = 0;
        std::vector<size_t> order(model.params().size());
        for (size_t i = 0; i < order.size(); i++) order[i] = i;
        std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
            return model.params()[a].offset < model.params()[b].offset;
        });
        for (size_t i : order)
            if (frozen.empty() || !frozen[i]) {
                state_offsets[i] = (int64_t)st;
                st += (size_t)model.params()[i].shape.numel();
            }
    }
    std::vector<float> adam_m(n_trainable, 0.f), adam_v(n_trainable, 0.f);
    BatchLoader loader(&corpus.train, B, S, cfg.seed, cfg.data + " (train split)");
    int64_t step = 0;
    double best_val = INFINITY, last_val = NAN, train_time = 0;
    int64_t best_step = 0;
    if (resuming) {
        load_params(model, resume_ckpt);
        if (file_exists(resume_ckpt + "/optimizer.safetensors")) {
            load_optimizer(model, resume_ckpt, adam_m.data(), adam_v.data(), &state_offsets);
        } else if (opt.progress) {
            std::fprintf(stderr,
                         "train: resuming from %s, which has no optimizer state (a run killed "
                         "during its first latest/ write): the AdamW moments restart from zero\n",
                         resume_ckpt.c_str());
        }
        verify_expert_checksums(model, state, resume_ckpt);
        step = state["step"].get<int64_t>();
        loader.set_state(state["loader"]);
        if (state.contains("moe_layer_rngs"))  // router noise streams (noisy routers resume exactly)
            for (int l = 0; l < mcfg.n_layers; l++)
                if (MoeLayer* ml = model.moe_layer(l); ml && state["moe_layer_rngs"].contains(std::to_string(l)))
                    rng_from_json(ml->rng(), state["moe_layer_rngs"][std::to_string(l)],
                                  resume_ckpt + "/trainer_state.json");
        if (state.contains("best_val_loss") && state["best_val_loss"].is_number())
            best_val = state["best_val_loss"].get<double>();
        best_step = state.value("best_step", (int64_t)0);
        train_time = state.value("elapsed_s", 0.0);
        if (writer) truncate_metrics(metrics_path, step);
    } else {
        model.init_params(mcfg.seed);
        if (!init_ckpt.empty()) {
            load_params(model, init_ckpt);
            if (opt.progress)
                std::fprintf(stderr, "train: init_from %s (weights and tokenizer; fresh optimizer "
                             "and schedule)\n", init_ckpt.c_str());
        } else if (!upcycle_ckpt.empty()) {
            int n = upcycle_params(model, upcycle_ckpt, (float)cfg.upcycle_noise, cfg.seed);
            if (opt.progress)
                std::fprintf(stderr, "train: upcycled %s: %d expert copies of its dense FFNs "
                             "(noise %g), routers fresh\n", upcycle_ckpt.c_str(), n,
                             cfg.upcycle_noise);
        }
        if (writer) write_file_atomic(metrics_path, std::string());
    }
    if (writer)
        write_file_atomic(run_dir + "/train_config.json", config_to_json(cfg).dump(2) + "\n");
    // What is frozen, for the record (and `moe report`).
    // The whole model's figures (every rank's experts), whatever the layout.
    size_t frozen_all = 0;
    for (size_t i = 0; i < frozen_full.size(); i++)
        if (frozen_full[i]) frozen_all += (size_t)full_specs[i].shape.numel();
    const size_t trainable_all = P_all - frozen_all;
    const double opt_bytes = 2.0 * sizeof(float) * (double)trainable_all,
                 opt_saved = 2.0 * sizeof(float) * (double)frozen_all;
    {
        json fz = {{"freeze", cfg.freeze},
                   {"init_from", init_ckpt},
                   {"upcycle_from", upcycle_ckpt},
                   {"n_params", P_all},
                   {"trainable_params", trainable_all},
                   {"frozen_params", frozen_all},
                   {"optimizer_state_bytes", (int64_t)opt_bytes},
                   {"optimizer_state_bytes_saved", (int64_t)opt_saved}};
        json names = json::array();
        for (size_t i = 0; i < frozen_full.size(); i++)
            if (frozen_full[i]) names.push_back(full_specs[i].name);
        fz["frozen_tensors"] = names;
        if (writer) write_file_atomic(run_dir + "/frozen.json", fz.dump(2) + "\n");
        if (opt.progress && !cfg.freeze.empty())
            std::fprintf(stderr,
                         "train: freeze '%s': %zu tensors, %zu of %zu params frozen; AdamW state "
                         "%.2f MiB (saves %.2f MiB)\n",
                         cfg.freeze.c_str(), names.size(), frozen_all, P_all, opt_bytes / (1 << 20),
                         opt_saved / (1 << 20));
    }

    // Fixed validation batches (same windows at every evaluation, so the curve is smooth).
    std::vector<int32_t> vx((size_t)cfg.eval_batches * B * S), vy(vx.size());
    {
        BatchLoader vl(&corpus.val, B, S, cfg.seed ^ 0x5a5a5a5a5a5a5a5aULL,
                       cfg.data + " (val split)");
        for (int i = 0; i < cfg.eval_batches; i++)
            vl.next(vx.data() + (size_t)i * B * S, vy.data() + (size_t)i * B * S);
    }
    std::vector<int32_t> ax, ay;
    if (!also_val.empty())
        fixed_batches(also_val, cfg.eval_batches, B, S, cfg.seed ^ 0x5a5a5a5a5a5a5a5aULL,
                      cfg.eval_also + " (val split)", &ax, &ay);
    // Each rank runs its slice (Bl sequences) of every batch: the same windows as one process.
    const int Bl = B / W;
    const size_t slice = (size_t)wrank * Bl * S;
    // Routing changes between evaluations (docs/metrics.md, routing_change): the first
    // validation batch is a fixed probe; each evaluation keeps every MoE layer's top-1 expert
    // per token on it, and the next one counts the tokens whose top-1 moved. The same tokens
    // each time, so only the weights can move it (not a new batch's content).
    std::vector<std::vector<int32_t>> probe_top1, probe_prev;
    auto eval_on = [&](const std::vector<int32_t>& ex, const std::vector<int32_t>& ey,
                       bool probe) {
        double s = 0;
        for (int i = 0; i < cfg.eval_batches; i++) {
            double l = model.forward(ex.data() + (size_t)i * B * S + slice,
                                     ey.data() + (size_t)i * B * S + slice, Bl, S,
                                     /*training=*/false);
            if (probe && i == 0) {
                probe_top1.clear();
                for (LayerRouting& r : model.routing_stats())
                    probe_top1.push_back(std::move(r.stats.top1_expert));
            }
            if (W > 1) {
                groups.world->allreduce_sum(&l, 1);
                l /= W;
            }
            s += l;
        }
        return s / cfg.eval_batches;
    };
    auto evaluate = [&]() { return eval_on(vx, vy, /*probe=*/true); };
    // After evaluate(): routing_change per MoE layer of the line, against the evaluation before
    // (none on the first evaluation of this invocation; a resumed run starts afresh).
    // A second evaluation at the same step (max_time_s reached on an eval step) says nothing.
    int64_t probe_prev_step = -1;
    auto note_routing_change = [&](MetricsLine& line) {
        if (probe_prev_step == step) return;
        if (!probe_prev.empty() && probe_prev.size() == probe_top1.size() &&
            line.j.contains("layers") && line.j["layers"].size() == probe_top1.size())
            for (size_t i = 0; i < probe_top1.size(); i++)
                line.j["layers"][i]["routing_change"] =
                    routing_change_fraction(probe_prev[i], probe_top1[i]);
        probe_prev = probe_top1;
        probe_prev_step = step;
    };
    auto eval_also = [&](MetricsLine& line) {
        if (ax.empty()) return;
        double l = eval_on(ax, ay, /*probe=*/false);
        if (!std::isfinite(l))
            fail("step {}: eval_also loss on {} is {}", step, cfg.eval_also, l);
        line.j["eval_also_loss"] = l;
    };

    const int64_t last_step =
        cfg.stop_after > 0 ? std::min<int64_t>(cfg.stop_after, cfg.max_steps) : cfg.max_steps;
    const int save_every = cfg.save_every > 0 ? cfg.save_every : cfg.eval_every;
    json checksums;  // of every expert tensor, gathered before each save (make_state)
    auto make_state = [&](bool with_loader) {
        json s = {{"format_version", 1},
                  {"step", step},
                  {"config", config_to_json(cfg)},
                  {"best_val_loss", std::isfinite(best_val) ? json(best_val) : json(nullptr)},
                  {"best_step", best_step},
                  {"val_loss", std::isfinite(last_val) ? json(last_val) : json(nullptr)},
                  {"elapsed_s", train_time},
                  {"tokens_seen", (int64_t)step * B * S},
                  {"train_tokens", (int64_t)corpus.train.size()},
                  {"val_tokens", (int64_t)corpus.val.size()},
                  {"tokenizer", tok->kind()}};
        if (with_loader) s["loader"] = loader.state();
        json layer_rngs = json::object();
        for (int l = 0; l < mcfg.n_layers; l++)
            if (MoeLayer* ml = model.moe_layer(l)) layer_rngs[std::to_string(l)] = rng_to_json(ml->rng());
        s["moe_layer_rngs"] = layer_rngs;
        s["expert_checksums"] = checksums;
        s["layout"] = groups.layout();
        return s;
    };
    // Under expert parallelism each rank holds its experts only: rank 0 writes the whole model,
    // the other experts broadcast by their owners in expert group 0 tensor by tensor while it
    // writes (ExpertServer); the data-parallel replicas (other expert groups) wait.
    ExpertServer server;
    server.g = &groups;
    server.model = &model;
    server.state_offsets = &state_offsets;
    server.frozen = frozen_names;
    server.per_rank = mcfg.moe.n_experts / shard.parts;
    for (size_t i = 0; i < model.params().size(); i++) server.held[model.params()[i].name] = i;
    auto save = [&](const std::string& dir, bool with_optimizer) {
        checksums = expert_checksums(groups, model);
        server.m = with_optimizer ? adam_m.data() : nullptr;
        server.v = with_optimizer ? adam_v.data() : nullptr;
        if (writer) {
            json s = make_state(true);
            TensorFetch fetch;
            fetch.get = [&](const ParamSpec& sp, int which) { return server.serve(sp, which); };
            fetch.has_state = [&](const ParamSpec& sp) { return !server.frozen.count(sp.name); };
            save_checkpoint(dir, model, *tok, server.m, server.v, &s,
                            with_optimizer ? &state_offsets : nullptr,
                            shard.sharded() ? &fetch : nullptr);
        } else if (shard.sharded() && groups.data->rank() == 0) {
            server.serve_all(0);
        }
    };
    auto save_latest = [&]() { save(latest_dir, true); };
    auto save_best = [&]() { save(best_dir, false); };

    MetricsWriter metrics(writer ? metrics_path : std::string("/dev/null"), mcfg);
    // Time and bytes in collectives since the last metrics line (several processes).
    double allreduce_s = 0;
    auto comm_json = [&](int64_t steps) {
        double a2a = 0, rt = 0;
        int64_t a2a_b = 0, rt_b = 0;
        for (int l = 0; l < mcfg.n_layers; l++)
            if (MoeLayer* ml = model.moe_layer(l)) {
                MoeCommStats& c = ml->comm_stats();
                a2a += c.alltoall_s;
                rt += c.router_s;
                a2a_b += c.alltoall_bytes;
                rt_b += c.router_bytes;
                c = MoeCommStats{};
            }
        const double n = (double)std::max<int64_t>(steps, 1);
        json j = {{"alltoall_s_per_step", a2a / n},
                  {"router_comm_s_per_step", rt / n},
                  {"allreduce_s_per_step", allreduce_s / n},
                  {"alltoall_bytes_per_step", (int64_t)(a2a_b / n)},
                  {"router_bytes_per_step", (int64_t)(rt_b / n)},
                  {"allreduce_bytes_per_step", (int64_t)(sizeof(float) * P)}};
        allreduce_s = 0;
        return j;
    };
    const bool tty = opt.progress && isatty(2);
    const int64_t first_step = step;
    const double train_time0 = train_time;
    std::vector<int32_t> x((size_t)B * S), y((size_t)B * S);
    const char* nan_env = getenv("MOE_TEST_NAN_AT_STEP");
    const int64_t nan_at = nan_env ? atoll(nan_env) : -1;
    // Test hook (tests/dist): "RANK:STEP" kills that rank with SIGKILL at that step.
    int64_t kill_rank = -1, kill_step = -1;
    if (const char* k = getenv("MOE_TEST_KILL_RANK_AT_STEP"))
        if (std::sscanf(k, "%lld:%lld", (long long*)&kill_rank, (long long*)&kill_step) != 2)
            kill_rank = -1;
    if (opt.progress)
        std::fprintf(stderr,
                     "train: %s, %zu params (%zu trainable), %zu train / %zu val tokens, vocab %d "
                     "(%s), steps %lld..%lld, "
                     "set-up %.1fs\n",
                     run_dir.c_str(), P_all, trainable_all, corpus.train.size(), corpus.val.size(),
                     tok->vocab_size(), tok->kind().c_str(), (long long)step + 1,
                     (long long)last_step, now_seconds() - t_setup0);
    if (opt.progress && shard.sharded())
        std::fprintf(stderr,
                     "train: %s: %zu params per rank of %zu (experts split over %d ranks)\n",
                     groups.layout().c_str(), P, P_all, shard.parts);

    // Starting from a checkpoint: evaluate it first (step 0), so the curves start where it was.
    if (!resuming && (!init_ckpt.empty() || !upcycle_ckpt.empty())) {
        MetricsLine l0;
        l0.j = {{"step", 0}, {"elapsed_s", 0.0}, {"layout", groups.layout()}};
        l0.val_loss = evaluate();
        note_routing_change(l0);  // keeps the probe: the first evaluation compares with it
        eval_also(l0);
        metrics.write(l0);
        if (opt.progress)
            std::fprintf(stderr, "step 0 (the checkpoint's weights): val %.4f%s\n", l0.val_loss,
                         l0.j.contains("eval_also_loss")
                             ? fmt::format(", eval_also {:.4f}", l0.j["eval_also_loss"].get<double>())
                                   .c_str()
                             : "");
    }

    TrainResult res;
    double log_t0 = train_time;
    int64_t log_step0 = step;
    double last_print = 0;
    float loss = 0;
    const double wall0 = now_seconds();
    double step_flops = 0;  // this process's, this invocation's steps
    while (step < last_step) {
        const int64_t t = step + 1;
        const double t0 = now_seconds();
        loader.next(x.data(), y.data());  // the whole batch on every rank; each runs its slice
        if (kill_rank == wrank && t == kill_step) raise(SIGKILL);
        if (t == nan_at) {  // test hook: poison the first parameter tensor
            const ParamSpec& s0 = model.params()[0];
            for (int64_t i = 0; i < s0.shape.numel(); i++) model.param_data()[s0.offset + i] = NAN;
        }
        model.zero_grad();
        try {
            loss = model.forward(x.data() + slice, y.data() + slice, Bl, S, /*training=*/true);
            if (W > 1) {
                double l = loss;
                groups.world->allreduce_sum(&l, 1);
                loss = (float)(l / W);
            }
        } catch (const Error& e) {
            // The input tokens are checked; non-finite values inside the model come from the
            // parameters, i.e. from the previous updates: the learning rate is the likely cause.
            fail(
                "step {}: the model produced non-finite values ({}); the learning rate {:.3g} is "
                "probably too high: lower --lr (or keep --grad-clip on) and resume from the last "
                "good checkpoint, {}",
                t, e.what(), lr_at(cfg, t),
                dir_exists(latest_dir) ? latest_dir : "none (start again)");
        }
        if (!std::isfinite(loss))
            fail(
                "step {}: training loss is {}; the learning rate {:.3g} is probably too high: "
                "lower --lr and resume from the last good checkpoint, {}",
                t, loss, lr_at(cfg, t),
                dir_exists(latest_dir) ? latest_dir : "none (none saved yet)");
        model.backward();
        step_flops += 3 * model.last_forward_flops();
        float* g = model.grad_data();
        double gnorm = 0;
        if (W > 1) {
            const double ta = now_seconds();
            reduce_gradients(groups, eblocks, g, P);
            allreduce_s += now_seconds() - ta;
            gnorm = clip_grad_norm_parallel(groups, eblocks, runs, g, cfg.grad_clip);
        } else {
            gnorm = frozen.empty() ? clip_grad_norm(g, P, cfg.grad_clip)
                                   : clip_grad_norm_runs(g, runs, cfg.grad_clip);
        }
        if (!std::isfinite(gnorm))
            fail(
                "step {}: gradient norm is {}; the learning rate {:.3g} is probably too high: "
                "lower --lr (keep --grad-clip on) and resume from the last good checkpoint, {}",
                t, gnorm, lr_at(cfg, t), dir_exists(latest_dir) ? latest_dir : "none");
        const double lr = lr_at(cfg, t);
        AdamWParams h;
        h.lr = (float)lr;
        h.beta1 = (float)cfg.beta1;
        h.beta2 = (float)cfg.beta2;
        h.eps = (float)cfg.adam_eps;
        h.step = t;
        float* p = model.param_data();
        for (auto& r : runs) {
            h.weight_decay = r.decay ? (float)cfg.weight_decay : 0.f;
            adamw_update(p + r.offset, g + r.offset, adam_m.data() + r.state_offset,
                         adam_v.data() + r.state_offset, r.n, h);
        }
        model.update_balance_bias();
        step = t;
        train_time += now_seconds() - t0;

        const bool is_last = step == last_step;
        const bool do_eval = is_last || (cfg.eval_every > 0 && step % cfg.eval_every == 0);
        const bool do_log = do_eval || step % cfg.log_every == 0;
        MetricsLine line;
        if (do_log) {
            double dt = train_time - log_t0;
            line =
                metrics.collect(model, step, lr, loss, gnorm,
                                dt > 0 ? (double)(step - log_step0) * B * S / dt : 0, train_time);
            line.j["layout"] = groups.layout();
            if (W > 1) line.j["comm"] = comm_json(step - log_step0);
            log_t0 = train_time;
            log_step0 = step;
        }
        if (do_eval) {
            last_val = evaluate();
            if (!std::isfinite(last_val))
                fail(
                    "step {}: validation loss is {}; the learning rate {:.3g} is probably too "
                    "high: lower --lr and resume from the last good checkpoint, {}",
                    step, last_val, lr_at(cfg, step), dir_exists(latest_dir) ? latest_dir : "none");
            line.val_loss = last_val;
            note_routing_change(line);
            eval_also(line);
            if (last_val < best_val) {
                best_val = last_val;
                best_step = step;
                save_best();
            }
        }
        if (do_log) metrics.write(line);
        if (is_last || (save_every > 0 && step % save_every == 0)) save_latest();

        const bool time_up = cfg.max_time_s > 0 && train_time >= cfg.max_time_s;
        if (opt.progress) {
            double now = now_seconds();
            double rate = (step - first_step) / std::max(1e-9, now - wall0);
            double eta = (last_step - step) / std::max(1e-9, rate);
            std::string msg = fmt::format(
                "step {}/{} loss {:.4f}{} lr {:.2e} {:.0f} tok/s elapsed {} ETA {}", step,
                last_step, loss, do_eval ? fmt::format(" val {:.4f}", last_val) : "", lr,
                (step - first_step) * (double)B * S / std::max(1e-9, train_time - train_time0),
                fmt_duration(train_time), fmt_duration(eta));
            if (tty) {
                if (now - last_print > 0.25 || is_last || do_eval || time_up) {
                    std::fprintf(stderr, "\r\033[K%s%s", msg.c_str(), do_eval ? "\n" : "");
                    last_print = now;
                }
            } else if (do_eval || (cfg.print_every > 0 && step % cfg.print_every == 0)) {
                std::fprintf(stderr, "%s\n", msg.c_str());
            }
        }
        if (time_up && !is_last) {
            if (opt.progress)
                std::fprintf(stderr, "\ntrain: max_time_s=%.0f reached at step %lld\n",
                             cfg.max_time_s, (long long)step);
            // Collected before evaluate(): the routing statistics are the last training
            // forward's, as on every other line (evaluation forwards overwrite them).
            MetricsLine l2 = metrics.collect(model, step, lr, loss, gnorm, 0, train_time);
            last_val = evaluate();
            if (last_val < best_val) {
                best_val = last_val;
                best_step = step;
                save_best();
            }
            l2.j["layout"] = groups.layout();
            l2.val_loss = last_val;
            note_routing_change(l2);
            eval_also(l2);
            metrics.write(l2);
            save_latest();
            break;
        }
    }
    if (tty) std::fprintf(stderr, "\n");
    {
        // Rank 0 decides (the others must join save_latest's collectives or skip it together).
        uint8_t none = step == first_step && !dir_exists(latest_dir);
        groups.world->bcast_bytes(&none, 1, 0);
        if (none) save_latest();
    }

    res.run_dir = run_dir;
    res.precision = cfg.precision;
    res.router_precision = cfg.router_precision;
    res.best_dir = dir_exists(best_dir) ? best_dir : latest_dir;
    res.latest_dir = latest_dir;
    res.step = step;
    res.train_loss = loss;
    res.val_loss = last_val;
    res.best_val_loss = best_val;
    res.best_step = best_step;
    res.train_time_s = train_time;
    double this_time = train_time - train_time0;
    res.tokens_per_s = this_time > 0 ? (double)(step - first_step) * B * S / this_time : 0;
    if (W > 1) groups.world->allreduce_sum(&step_flops, 1);  // every rank arrives here once
    if (step > first_step) res.flops_per_token = step_flops / ((double)(step - first_step) * B * S);
    res.gflops = this_time > 0 ? step_flops / this_time / 1e9 : 0;
    res.wall_s = now_seconds() - t_setup0;
    return res;
}

}  // namespace moe
