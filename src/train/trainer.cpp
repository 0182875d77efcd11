// The training loop (include/moe/trainer.h): one step = batch -> forward -> backward (CE + aux
// losses) -> global-norm clip -> AdamW (no decay on norms/biases) -> balance-bias update.
// Evaluation on fixed validation batches, best/ and latest/ checkpoints, metrics.jsonl.
#include "moe/trainer.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "data/loader.h"
#include "data/token_file.h"
#include "kernels/adamw.h"
#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/runtime.h"
#include "train/metrics.h"

namespace moe {

using json = nlohmann::json;

namespace {

// Contiguous parameter ranges with the same weight-decay setting: AdamW runs once per range.
struct DecayRun {
    size_t offset, n;
    bool decay;
};

std::vector<DecayRun> decay_runs(const Model& model) {
    std::vector<ParamSpec> specs = model.params();
    std::sort(specs.begin(), specs.end(), [](auto& a, auto& b) { return a.offset < b.offset; });
    std::vector<DecayRun> runs;
    for (auto& s : specs) {
        bool decay = !model.is_no_decay(s);
        size_t n = (size_t)s.shape.numel();
        if (!runs.empty() && runs.back().decay == decay &&
            runs.back().offset + runs.back().n == s.offset)
            runs.back().n += n;
        else
            runs.push_back({s.offset, n, decay});
    }
    return runs;
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

TrainResult run_train(const TrainOptions& opt) {
    const double t_setup0 = now_seconds();
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
    for (auto& [k, v] : opt.overrides) config_set(cfg, k, v);
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
    Corpus corpus = tokenize_corpus(text, cfg.val_fraction, *tok);
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
    make_dirs(run_dir + "/data");  // the run folder too: only once the data is known good
    if (!resuming) {
        write_token_file(run_dir + "/data/train.tok", corpus.train, tok->vocab_size(), tok->kind());
        write_token_file(run_dir + "/data/val.tok", corpus.val, tok->vocab_size(), tok->kind());
    }

    // ---- model and optimizer ----
    ModelConfig mcfg = model_config_for(cfg, tok->vocab_size());
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
        Model::layout(mcfg, &n);
        const double T = (double)cfg.batch_size * mcfg.block_size;
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
    Model model(mcfg);
    const size_t P = model.n_params();
    std::vector<float> adam_m(P, 0.f), adam_v(P, 0.f);
    BatchLoader loader(&corpus.train, B, S, cfg.seed, cfg.data + " (train split)");
    int64_t step = 0;
    double best_val = INFINITY, last_val = NAN, train_time = 0;
    int64_t best_step = 0;
    if (resuming) {
        load_params(model, resume_ckpt);
        if (file_exists(resume_ckpt + "/optimizer.safetensors")) {
            load_optimizer(model, resume_ckpt, adam_m.data(), adam_v.data());
        } else if (opt.progress) {
            std::fprintf(stderr,
                         "train: resuming from %s, which has no optimizer state (a run killed "
                         "during its first latest/ write): the AdamW moments restart from zero\n",
                         resume_ckpt.c_str());
        }
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
        truncate_metrics(metrics_path, step);
    } else {
        model.init_params(mcfg.seed);
        write_file_atomic(metrics_path, std::string());
    }
    write_file_atomic(run_dir + "/train_config.json", config_to_json(cfg).dump(2) + "\n");
    const std::vector<DecayRun> runs = decay_runs(model);

    // Fixed validation batches (same windows at every evaluation, so the curve is smooth).
    std::vector<int32_t> vx((size_t)cfg.eval_batches * B * S), vy(vx.size());
    {
        BatchLoader vl(&corpus.val, B, S, cfg.seed ^ 0x5a5a5a5a5a5a5a5aULL,
                       cfg.data + " (val split)");
        for (int i = 0; i < cfg.eval_batches; i++)
            vl.next(vx.data() + (size_t)i * B * S, vy.data() + (size_t)i * B * S);
    }
    auto evaluate = [&]() {
        double s = 0;
        for (int i = 0; i < cfg.eval_batches; i++) {
            double l = model.forward(vx.data() + (size_t)i * B * S, vy.data() + (size_t)i * B * S,
                                     B, S, /*training=*/false);
            s += l;
        }
        return s / cfg.eval_batches;
    };

    const int64_t last_step =
        cfg.stop_after > 0 ? std::min<int64_t>(cfg.stop_after, cfg.max_steps) : cfg.max_steps;
    const int save_every = cfg.save_every > 0 ? cfg.save_every : cfg.eval_every;
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
        return s;
    };
    auto save_latest = [&]() {
        json s = make_state(true);
        save_checkpoint(latest_dir, model, *tok, adam_m.data(), adam_v.data(), &s);
    };
    auto save_best = [&]() {
        json s = make_state(true);
        save_checkpoint(best_dir, model, *tok, nullptr, nullptr, &s);
    };

    MetricsWriter metrics(metrics_path, mcfg);
    const bool tty = opt.progress && isatty(2);
    const int64_t first_step = step;
    const double train_time0 = train_time;
    std::vector<int32_t> x((size_t)B * S), y((size_t)B * S);
    const char* nan_env = getenv("MOE_TEST_NAN_AT_STEP");
    const int64_t nan_at = nan_env ? atoll(nan_env) : -1;
    if (opt.progress)
        std::fprintf(
            stderr,
            "train: %s, %zu params, %zu train / %zu val tokens, vocab %d (%s), steps %lld..%lld, "
            "set-up %.1fs\n",
            run_dir.c_str(), P, corpus.train.size(), corpus.val.size(), tok->vocab_size(),
            tok->kind().c_str(), (long long)step + 1, (long long)last_step,
            now_seconds() - t_setup0);

    TrainResult res;
    double log_t0 = train_time;
    int64_t log_step0 = step;
    double last_print = 0;
    float loss = 0;
    const double wall0 = now_seconds();
    while (step < last_step) {
        const int64_t t = step + 1;
        const double t0 = now_seconds();
        loader.next(x.data(), y.data());
        if (t == nan_at) {  // test hook: poison the first parameter tensor
            const ParamSpec& s0 = model.params()[0];
            for (int64_t i = 0; i < s0.shape.numel(); i++) model.param_data()[s0.offset + i] = NAN;
        }
        model.zero_grad();
        try {
            loss = model.forward(x.data(), y.data(), B, S, /*training=*/true);
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
        float* g = model.grad_data();
        double gnorm = clip_grad_norm(g, P, cfg.grad_clip);
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
            adamw_update(p + r.offset, g + r.offset, adam_m.data() + r.offset,
                         adam_v.data() + r.offset, r.n, h);
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
            last_val = evaluate();
            if (last_val < best_val) {
                best_val = last_val;
                best_step = step;
                save_best();
            }
            MetricsLine l2 = metrics.collect(model, step, lr, loss, gnorm, 0, train_time);
            l2.val_loss = last_val;
            metrics.write(l2);
            save_latest();
            break;
        }
    }
    if (tty) std::fprintf(stderr, "\n");
    if (step == first_step && !dir_exists(latest_dir)) save_latest();

    res.run_dir = run_dir;
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
    res.wall_s = now_seconds() - t_setup0;
    return res;
}

}  // namespace moe
