// moe train: train a language model from a JSON config (configs/*.json); every config key is
// also a flag (--lr 2e-3 --max-steps 500), applied over the file (docs/training.md).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "moe/config.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/process_group.h"
#include "moe/trainer.h"
#include "tools/checked_flags.h"
#include "tools/command.h"

namespace moe::tools {

struct TrainCmdOptions {
    std::string config, out, resume;
    bool json = false, quiet = false;
    int expert_parallel = 1;  // under mpirun: ranks per expert group (the rest data parallel)
    int overlap = 1;          // all-to-all chunks (1 = off)
};

// "--key value" or "--key=value" pairs from the arguments CLI11 did not recognise.
static std::vector<std::pair<std::string, std::string>> parse_overrides(
    const std::vector<std::string>& args) {
    std::vector<std::pair<std::string, std::string>> out;
    for (size_t i = 0; i < args.size(); i++) {
        const std::string& a = args[i];
        if (a.rfind("--", 0) != 0 || a.size() < 3)
            usage_fail("'{}': unexpected argument (config keys are given as --key value)", a);
        std::string key = a.substr(2), value;
        auto eq = key.find('=');
        if (eq != std::string::npos) {
            value = key.substr(eq + 1);
            key = key.substr(0, eq);
        } else {
            if (i + 1 >= args.size()) usage_fail("--{}: needs a value", key);
            value = args[++i];
        }
        out.emplace_back(key, value);
    }
    return out;
}

// A flag's value outside its type or range is a usage error (exit 2).
static void check_flags(TrainConfig& probe,
                        const std::vector<std::pair<std::string, std::string>>& overrides) {
    for (auto& [k, v] : overrides) {
        try {
            config_set(probe, k, v);
        } catch (const UsageError&) {
            throw;
        } catch (const Error& e) {
            throw UsageError(e.what());
        }
    }
}

static int run_train_cmd(const TrainCmdOptions& o, const std::vector<std::string>& extras) {
    TrainOptions t;
    t.overrides = parse_overrides(extras);
    if (o.resume.empty()) {
        bool from_ckpt = false;  // --init-from / --upcycle-from: a config file is optional
        for (auto& [k, v] : t.overrides)
            from_ckpt = from_ckpt || k == "init-from" || k == "init_from" ||
                        k == "upcycle-from" || k == "upcycle_from";
        if (o.config.empty() && !from_ckpt)
            usage_fail("moe train: give --config FILE (or --resume DIR, or --init-from CKPT)");
        if (!o.config.empty()) {
            t.cfg = config_load(o.config);
            // The keys the file sets: with --init-from, the model keys it does not set come
            // from the checkpoint.
            nlohmann::json j = nlohmann::json::parse(read_file(o.config), nullptr, true, true);
            for (auto& [k, v] : j.items())
                if (k != "comment" && k.rfind("_", 0) != 0) t.given_keys.push_back(k);
        } else if (o.out.empty()) {
            usage_fail("moe train: give --out DIR (the run folder) with --init-from and no --config");
        }
        // Check the flags now, so a typo fails before any work.
        TrainConfig probe = t.cfg;
        check_flags(probe, t.overrides);
        t.out_dir = o.out;
        if (t.out_dir.empty()) {
            std::string base = o.config.substr(o.config.find_last_of('/') + 1);
            if (base.size() > 5 && base.substr(base.size() - 5) == ".json")
                base.resize(base.size() - 5);
            t.out_dir = "runs/" + base;
        }
    } else {
        if (!o.config.empty())
            usage_fail(
                "--config: --resume takes the config from the checkpoint; give changes as flags");
        t.resume_dir = o.resume;
        t.out_dir = o.out;
        TrainConfig probe;  // types and ranges of the flags (the run's config is read later)
        check_flags(probe, t.overrides);
    }
    t.progress = !o.quiet;
    // Under mpirun every rank runs this; a rank that fails ends the job (MPI_Abort) so no other
    // rank waits forever in a collective.
    t.groups = init_parallel(launched_by_mpirun(), o.expert_parallel);
    t.overlap = o.overlap;
    TrainResult r;
    try {
        r = run_train(t);
    } catch (const Error& e) {
        if (t.groups.world_size() > 1) t.groups.world->abort(e.what());
        throw;
    }
    const bool rank0 = t.groups.world_rank() == 0;
    finalize_parallel();
    if (!rank0) return 0;
    if (r.already_finished) {
        std::printf(
            "%s: already finished at step %lld (max_steps); nothing to do. To train "
            "further: moe train --resume %s --max-steps N (N > %lld)\n",
            r.run_dir.c_str(), (long long)r.step, r.run_dir.c_str(), (long long)r.step);
    } else {
        std::printf(
            "trained %lld steps in %.1f s of training (%.0f tokens/s, %.1f GFLOP/s); val loss "
            "%.4f, best %.4f at step %lld\nrun folder: %s (best checkpoint: %s, metrics: "
            "%s/metrics.jsonl)\n",
            (long long)r.step, r.train_time_s, r.tokens_per_s, r.gflops, r.val_loss, r.best_val_loss,
            (long long)r.best_step, r.run_dir.c_str(), r.best_dir.c_str(), r.run_dir.c_str());
    }
    if (o.json) {
        nlohmann::json j = {{"run_dir", r.run_dir},
                            {"best_dir", r.best_dir},
                            {"step", r.step},
                            {"train_loss", r.train_loss},
                            {"val_loss", r.val_loss},
                            {"best_val_loss", r.best_val_loss},
                            {"best_step", r.best_step},
                            {"train_time_s", r.train_time_s},
                            {"tokens_per_s", r.tokens_per_s},
                            {"flops_per_token", r.flops_per_token},
                            {"gflops", r.gflops},
                            {"wall_s", r.wall_s},
                            {"already_finished", r.already_finished},
                            {"precision", r.precision},
                            {"router_precision", r.router_precision}};
        std::printf("%s\n", j.dump().c_str());
    }
    return 0;
}

static void register_train(CLI::App& app) {
    auto opts = std::make_shared<TrainCmdOptions>();
    CLI::App* sub = app.add_subcommand(
        "train",
        "Train a language model (dense or MoE) from a JSON config; any config key is a flag.\n"
        "Example: moe train --config configs/shakespeare-char-moe.json --out runs/moe "
        "--max-steps 500 --lr 2e-3\n"
        "Resume:  moe train --resume runs/moe [--max-steps 3000]\n"
        "Fine-tune: moe train --init-from runs/moe --data data/kjv.txt --unknown-symbol , "
        "--freeze non-expert --out runs/kjv --max-steps 500\n"
        "Several processes: mpirun -np 4 build/moe train --config configs/tiny-test.json "
        "--expert-parallel 2 (docs/distributed.md)");
    sub->add_option("--config", opts->config, "training config (JSON, configs/*.json)");
    sub->add_option("--out", opts->out, "run folder (default runs/<config name>)");
    sub->add_option("--resume", opts->resume, "continue a run folder (its latest/) or checkpoint");
    sub->add_flag("--json", opts->json, "last stdout line: one JSON object of the results");
    sub->add_flag("--quiet", opts->quiet, "no progress lines on stderr");
    add_checked(sub, "--expert-parallel", opts->expert_parallel, Range::in(1, 1 << 20),
                "under mpirun: ranks that split each MoE layer's experts; the rest of the ranks "
                "are data parallel");
    add_checked(sub, "--overlap", opts->overlap, Range::in(1, 1024),
                "under mpirun: all-to-all chunks overlapped with the expert GEMMs (1 = off; at "
                "most the experts per rank)");
    sub->allow_extras();
    sub->footer(config_keys_help() +
                "Relative paths in a config file (data) are relative to "
                "that file's folder. See docs/training.md.");
    sub->callback([opts, sub]() { exit_code() = run_train_cmd(*opts, sub->remaining()); });
}

static RegisterCommand reg_train("train", register_train);

}  // namespace moe::tools
