// Checkpoint folders (include/moe/checkpoint.h, docs/formats.md).
#include "moe/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <thread>

#include "moe/config.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/safetensors.h"

namespace moe {

using json = nlohmann::json;
namespace fs = std::filesystem;

static std::string bias_name(int layer) {
    return fmt::format("model.layers.{}.block_sparse_moe.balance_bias", layer);
}

static bool has_balance_bias(const Model& m, int layer) {
    return m.config().is_moe_layer(layer) && m.config().moe.bias_update_rate > 0;
}

// ---- writing ----

namespace {
// Writes files into the temp folder, fsyncing each. Counts bytes for the disk-full test hook.
struct CkptWriter {
    int64_t fail_after = -1, written = 0, pause_at = -1;
    int64_t step = -1;

    CkptWriter() {
        if (const char* s = getenv("MOE_TEST_CKPT_FAIL_AFTER_BYTES")) fail_after = atoll(s);
        if (const char* s = getenv("MOE_TEST_CKPT_PAUSE_AT_STEP")) pause_at = atoll(s);
    }

    void write(const std::string& path, const std::string& data, bool may_pause = false) {
        int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) fail("cannot create {}: {}", path, std::strerror(errno));
        size_t off = 0;
        const size_t half = data.size() / 2;
        bool paused = false;
        while (off < data.size()) {
            size_t chunk = std::min<size_t>(data.size() - off, 1 << 20);
            if (may_pause && !paused && pause_at >= 0 && step == pause_at && off + chunk > half) {
                chunk = half - off;
                if (chunk == 0) {
                    paused = true;
                    std::fprintf(stderr, "checkpoint: test pause in %s\n", path.c_str());
                    std::this_thread::sleep_for(std::chrono::seconds(30));
                    continue;
                }
            }
            int e = 0;
            ssize_t n;
            if (fail_after >= 0 && written + (int64_t)chunk > fail_after) {
                chunk = (size_t)std::max<int64_t>(0, fail_after - written);
                n = chunk ? ::write(fd, data.data() + off, chunk) : 0;
                if (n >= 0) written += n;
                e = ENOSPC;  // simulated full disk
                n = -1;
            } else {
                n = ::write(fd, data.data() + off, chunk);
                if (n < 0) e = errno;
            }
            if (n < 0) {
                if (e == EINTR) continue;
                ::close(fd);
                fail("cannot write {}: {}", path, std::strerror(e));
            }
            off += (size_t)n;
            written += n;
        }
        if (::fsync(fd) != 0) {
            int e = errno;
            ::close(fd);
            fail("cannot flush {}: {}", path, std::strerror(e));
        }
        if (::close(fd) != 0) fail("cannot close {}: {}", path, std::strerror(errno));
    }
};
}  // namespace

static std::string parent_of(const std::string& p) {
    fs::path pp = fs::path(p).parent_path();
    return pp.empty() ? "." : pp.string();
}

void recover_checkpoint_dir(const std::string& dir) {
    fs::path target(dir);
    std::string base = target.filename().string();
    std::error_code ec;
    std::vector<fs::path> temps, olds;
    for (auto& e : fs::directory_iterator(parent_of(dir), ec)) {
        std::string n = e.path().filename().string();
        if (n.rfind(base + ".tmp-", 0) == 0) temps.push_back(e.path());
        if (n.rfind(base + ".old-", 0) == 0) olds.push_back(e.path());
    }
    for (auto& t : temps) fs::remove_all(t, ec);  // never complete: a writer died in them
    for (auto& o : olds) {
        if (!fs::exists(dir) && file_exists(o.string() + "/model.safetensors"))
            fs::rename(o, target, ec);  // died between the two renames: put the old one back
        else
            fs::remove_all(o, ec);
    }
}

// Puts the complete folder tmp at dir: one atomic exchange when dir exists (the old one is then
// deleted), one rename when it does not. Readers see the old checkpoint or the new, never a mix.
static void swap_into_place(const std::string& tmp, const std::string& dir) {
    if (!fs::exists(dir)) {
        if (::rename(tmp.c_str(), dir.c_str()) != 0)
            fail("cannot rename {} to {}: {}", tmp, dir, std::strerror(errno));
    } else if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
        fsync_dir(parent_of(dir));
        std::error_code ec;
        fs::remove_all(tmp, ec);  // now holds the previous checkpoint
    } else {
        // No RENAME_EXCHANGE on this filesystem: move the old one aside first. A crash between
        // the two renames leaves dir.old-<pid>, which resolve_*_dir falls back to.
        std::string old = dir + ".old-" + std::to_string(::getpid());
        if (::rename(dir.c_str(), old.c_str()) != 0)
            fail("cannot rename {} to {}: {}", dir, old, std::strerror(errno));
        if (::rename(tmp.c_str(), dir.c_str()) != 0)
            fail("cannot rename {} to {}: {}", tmp, dir, std::strerror(errno));
        fsync_dir(parent_of(dir));
        std::error_code ec;
        fs::remove_all(old, ec);
    }
    fsync_dir(parent_of(dir));
}

void save_checkpoint(const std::string& dir, Model& model, const Tokenizer& tokenizer,
                     const float* adam_m, const float* adam_v, const json* trainer_state) {
    make_dirs(parent_of(dir));
    recover_checkpoint_dir(dir);
    const std::string tmp = dir + ".tmp-" + std::to_string(::getpid());
    std::error_code ec;
    fs::remove_all(tmp, ec);
    make_dirs(tmp);
    CkptWriter w;
    if (trainer_state && trainer_state->contains("step"))
        w.step = (*trainer_state)["step"].get<int64_t>();
    try {
        const float* p = model.param_data();
        SafetensorsWriter st;
        st.set_metadata("format", "pt");
        for (auto& s : model.params()) st.add(s.name, s.shape, p + s.offset);
        for (int l = 0; l < model.config().n_layers; l++)
            if (has_balance_bias(model, l)) {
                auto& b = model.moe_layer(l)->balance_bias();
                st.add(bias_name(l), Shape{(int64_t)b.size()}, b.data());
            }
        w.write(tmp + "/model.safetensors", st.serialize(), /*may_pause=*/adam_m != nullptr);
        if (adam_m && adam_v) {
            SafetensorsWriter opt;
            for (auto& s : model.params()) {
                opt.add(s.name + ".exp_avg", s.shape, adam_m + s.offset);
                opt.add(s.name + ".exp_avg_sq", s.shape, adam_v + s.offset);
            }
            w.write(tmp + "/optimizer.safetensors", opt.serialize());
        }
        w.write(tmp + "/config.json", model_config_to_hf(model.config()).dump(2) + "\n");
        tokenizer.save(tmp);  // vocab.json or tokenizer.model
        if (trainer_state) w.write(tmp + "/trainer_state.json", trainer_state->dump(2) + "\n");
        fsync_dir(tmp);
        swap_into_place(tmp, dir);
    } catch (...) {
        fs::remove_all(tmp, ec);  // the previous checkpoint at dir is untouched
        throw;
    }
}

// ---- reading ----

static bool is_ckpt(const std::string& d) { return file_exists(d + "/model.safetensors"); }

// A run folder's checkpoint `name`, or the old copy a crash between two renames left behind.
static std::string find_in_run(const std::string& run, const std::string& name) {
    if (is_ckpt(run + "/" + name)) return run + "/" + name;
    std::error_code ec;
    for (auto& e : fs::directory_iterator(run, ec)) {
        std::string n = e.path().filename().string();
        if (n.rfind(name + ".old-", 0) == 0 && is_ckpt(e.path().string())) return e.path().string();
    }
    return "";
}

std::string resolve_checkpoint_dir(const std::string& path) {
    if (!dir_exists(path)) fail("{}: no such folder (expected a checkpoint or a run folder)", path);
    if (is_ckpt(path)) return path;
    for (const char* name : {"best", "latest"}) {
        std::string d = find_in_run(path, name);
        if (!d.empty()) return d;
    }
    fail(
        "{}: not a checkpoint folder (no model.safetensors) nor a run folder (no best/ or latest/)",
        path);
}

std::string resolve_resume_dir(const std::string& path) {
    if (!dir_exists(path)) fail("{}: no such folder (expected a checkpoint or a run folder)", path);
    if (is_ckpt(path)) return path;
    std::string d = find_in_run(path, "latest");
    if (!d.empty()) return d;
    fail("{}: nothing to resume: no latest/ checkpoint in this run folder", path);
}

ModelConfig load_model_config(const std::string& dir) {
    std::string path = dir + "/config.json";
    return model_config_from_text(read_file(path), path);
}

void load_params(Model& model, const std::string& dir) {
    const std::string path = dir + "/model.safetensors";
    SafetensorsReader r(path);
    float* p = model.param_data();
    for (auto& s : model.params()) {
        const StTensor& t = r.get(s.name, s.shape);
        std::memcpy(p + s.offset, t.data.data(), t.data.size() * 4);
    }
    std::set<std::string> known;
    for (auto& s : model.params()) known.insert(s.name);
    for (int l = 0; l < model.config().n_layers; l++) {
        if (!model.config().is_moe_layer(l)) continue;
        std::string bn = bias_name(l);
        known.insert(bn);
        if (r.has(bn)) {
            auto& b = model.moe_layer(l)->balance_bias();
            const StTensor& t = r.get(bn, Shape{(int64_t)b.size()});
            b.assign(t.data.begin(), t.data.end());
        }
    }
    for (auto& n : r.names())
        if (!known.count(n))
            fail("{}: unexpected tensor {} (the checkpoint does not match its config.json)", path,
                 n);
}

void load_optimizer(Model& model, const std::string& dir, float* adam_m, float* adam_v) {
    const std::string path = dir + "/optimizer.safetensors";
    if (!file_exists(path)) fail("{}: missing (this checkpoint cannot be resumed)", path);
    SafetensorsReader r(path);
    for (auto& s : model.params()) {
        const StTensor& m = r.get(s.name + ".exp_avg", s.shape);
        const StTensor& v = r.get(s.name + ".exp_avg_sq", s.shape);
        std::memcpy(adam_m + s.offset, m.data.data(), m.data.size() * 4);
        std::memcpy(adam_v + s.offset, v.data.data(), v.data.size() * 4);
    }
}

json load_trainer_state(const std::string& dir) {
    const std::string path = dir + "/trainer_state.json";
    return parse_trainer_state(read_file(path), path);
}

json parse_trainer_state(const std::string& text, const std::string& where) {
    json s;
    try {
        s = json::parse(text);
    } catch (const std::exception& e) {
        fail("{}: not valid JSON: {}", where, e.what());
    }
    // The types of the keys `moe train --resume` reads (docs/formats.md), checked here so a
    // damaged file is refused with the key's name instead of a JSON library exception.
    if (!s.is_object()) fail("{}: not a JSON object", where);
    auto check = [&](const char* key, bool (json::*is)() const noexcept, const char* type) {
        auto it = s.find(key);
        if (it != s.end() && !((*it).*is)())
            fail("{}: '{}' must be {}, got {}; the checkpoint is damaged: resume from another one",
                 where, key, type, it->dump());
    };
    check("step", &json::is_number_integer, "an integer");
    check("best_step", &json::is_number_integer, "an integer");
    check("train_tokens", &json::is_number_integer, "an integer");
    check("val_tokens", &json::is_number_integer, "an integer");
    check("elapsed_s", &json::is_number, "a number");
    check("config", &json::is_object, "an object");
    check("loader", &json::is_object, "an object");
    check("moe_layer_rngs", &json::is_object, "an object");
    return s;
}

LoadedModel load_model(const std::string& path) {
    LoadedModel out;
    out.dir = resolve_checkpoint_dir(path);
    ModelConfig cfg = load_model_config(out.dir);
    out.tokenizer = load_tokenizer(out.dir);
    if (out.tokenizer->vocab_size() != cfg.vocab_size)
        fail("{}: tokenizer has {} symbols but config.json says vocab_size={}", out.dir,
             out.tokenizer->vocab_size(), cfg.vocab_size);
    out.model = std::make_unique<Model>(cfg);
    load_params(*out.model, out.dir);
    return out;
}

}  // namespace moe
