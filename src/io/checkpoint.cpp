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
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "moe/checked.h"
#include "moe/config.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/hf_model.h"
#include "moe/safetensors.h"
#include "kernels/typed_gemm.h"

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

    // A file written in pieces: open, append..., finish (streamed tensors). `total` is its final
    // size (the pause hook stops half-way through it).
    struct File {
        int fd = -1;
        std::string path;
        size_t total = 0, off = 0;
        bool may_pause = false, paused = false;
    };
    File open(const std::string& path, size_t total, bool may_pause) {
        File f;
        f.fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (f.fd < 0) fail("cannot create {}: {}", path, std::strerror(errno));
        f.path = path;
        f.total = total;
        f.may_pause = may_pause;
        return f;
    }
    void append(File& f, const char* data, size_t n) {
        size_t i = 0;
        const size_t half = f.total / 2;
        while (i < n) {
            size_t chunk = std::min<size_t>(n - i, 1 << 20);
            if (f.may_pause && !f.paused && pause_at >= 0 && step == pause_at &&
                f.off + chunk > half && f.off <= half) {
                chunk = half - f.off;
                if (chunk == 0) {
                    f.paused = true;
                    std::fprintf(stderr, "checkpoint: test pause in %s\n", f.path.c_str());
                    std::this_thread::sleep_for(std::chrono::seconds(30));
                    continue;
                }
            }
            int e = 0;
            ssize_t k;
            if (fail_after >= 0 && written + (int64_t)chunk > fail_after) {
                chunk = (size_t)std::max<int64_t>(0, fail_after - written);
                k = chunk ? ::write(f.fd, data + i, chunk) : 0;
                if (k >= 0) written += k;
                e = ENOSPC;  // simulated full disk
                k = -1;
            } else {
                k = ::write(f.fd, data + i, chunk);
                if (k < 0) e = errno;
            }
            if (k < 0) {
                if (e == EINTR) continue;
                ::close(f.fd);
                fail("cannot write {}: {}", f.path, std::strerror(e));
            }
            i += (size_t)k;
            f.off += (size_t)k;
            written += k;
        }
    }
    void finish(File& f) {
        if (::fsync(f.fd) != 0) {
            int e = errno;
            ::close(f.fd);
            fail("cannot flush {}: {}", f.path, std::strerror(e));
        }
        if (::close(f.fd) != 0) fail("cannot close {}: {}", f.path, std::strerror(errno));
    }
    void write(const std::string& path, const std::string& data, bool may_pause = false) {
        File f = open(path, data.size(), may_pause);
        append(f, data.data(), data.size());
        finish(f);
    }
};

// A safetensors file of F32 tensors written tensor by tensor, each tensor's floats asked for
// when its turn comes: the bytes SafetensorsWriter::serialize makes, without a copy of the whole
// model in memory (a rank of an expert-parallel job writes experts it receives one at a time).
struct StreamTensor {
    std::string name;
    Shape shape;
    std::function<const float*()> data;
};

void write_safetensors_streamed(CkptWriter& w, const std::string& path,
                                const std::map<std::string, std::string>& metadata,
                                const std::vector<StreamTensor>& ts, bool may_pause) {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    uint64_t off = 0;
    for (auto& t : ts) {
        const uint64_t bytes = 4 * (uint64_t)t.shape.numel();
        header[t.name] = {{"dtype", "F32"},
                          {"shape", t.shape.dims},
                          {"data_offsets", {off, off + bytes}}};
        off += bytes;
    }
    std::string h = header.dump();
    while ((8 + h.size()) % 8) h += ' ';  // the data starts 8-byte aligned
    const uint64_t hlen = h.size();
    CkptWriter::File f = w.open(path, 8 + h.size() + off, may_pause);
    w.append(f, reinterpret_cast<const char*>(&hlen), 8);
    w.append(f, h.data(), h.size());
    for (auto& t : ts)
        w.append(f, reinterpret_cast<const char*>(t.data()), 4 * (size_t)t.shape.numel());
    w.finish(f);
}
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
                     const float* adam_m, const float* adam_v, const json* trainer_state,
                     const std::vector<int64_t>* state_offsets, const TensorFetch* fetch) {
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
        // A sharded model (expert parallelism) writes the full table, the experts it lacks
        // fetched from their owners: the file does not depend on the layout.
        const bool sharded = model.expert_shard().sharded();
        MOE_CHECK(!sharded || fetch, "save_checkpoint: a sharded model needs a fetch");
        const std::vector<ParamSpec> full =
            sharded ? Model::layout(model.config(), nullptr) : model.params();
        std::map<std::string, size_t> held;  // name -> index in model.params()
        for (size_t i = 0; i < model.params().size(); i++) held[model.params()[i].name] = i;
        std::vector<StreamTensor> ts;
        for (const ParamSpec& s : full) {
            auto it = held.find(s.name);
            if (it != held.end()) {
                const float* at = p + model.params()[it->second].offset;
                ts.push_back({s.name, s.shape, [at] { return at; }});
            } else {
                ts.push_back({s.name, s.shape, [&, s] { return fetch->get(s, 0); }});
            }
        }
        for (int l = 0; l < model.config().n_layers; l++)
            if (has_balance_bias(model, l)) {
                const float* b = model.moe_layer(l)->balance_bias().data();
                ts.push_back({bias_name(l), Shape{(int64_t)model.moe_layer(l)->balance_bias().size()},
                              [b] { return b; }});
            }
        write_safetensors_streamed(w, tmp + "/model.safetensors", {{"format", "pt"}}, ts,
                                   /*may_pause=*/adam_m != nullptr);
        if (adam_m && adam_v) {
            ts.clear();
            const auto& specs = model.params();
            for (const ParamSpec& fs : full) {
                auto it = held.find(fs.name);
                if (it == held.end()) {  // another rank's expert
                    if (!fetch->has_state(fs)) continue;  // frozen
                    ts.push_back({fs.name + ".exp_avg", fs.shape, [&, fs] { return fetch->get(fs, 1); }});
                    ts.push_back({fs.name + ".exp_avg_sq", fs.shape,
                                  [&, fs] { return fetch->get(fs, 2); }});
                    continue;
                }
                const size_t i = it->second;
                const ParamSpec& s = specs[i];
                int64_t o = state_offsets ? (*state_offsets)[i] : (int64_t)s.offset;
                if (o < 0) continue;  // frozen: no optimizer state
                const float *m = adam_m + o, *v = adam_v + o;
                ts.push_back({s.name + ".exp_avg", s.shape, [m] { return m; }});
                ts.push_back({s.name + ".exp_avg_sq", s.shape, [v] { return v; }});
            }
            write_safetensors_streamed(w, tmp + "/optimizer.safetensors", {}, ts, false);
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

// A Hugging Face folder's weights (what the engine reads: shards with an index, BF16/F16/F32),
// as opposed to moe.cpp's own checkpoint (config.json with "moe_cpp" + one F32 model.safetensors,
// which keeps its reader: balance biases, exact messages).
static bool hf_weights(const std::string& d) {
    if (file_exists(d + "/model.safetensors.index.json")) return true;
    if (!file_exists(d + "/config.json")) return false;
    try {
        json j = json::parse(read_file(d + "/config.json"));
        return j.is_object() && !j.contains("moe_cpp");
    } catch (const std::exception&) {
        return false;  // the config reader reports it
    }
}

static bool is_ckpt(const std::string& d) {
    return file_exists(d + "/model.safetensors") ||
           (file_exists(d + "/config.json") && file_exists(d + "/model.safetensors.index.json"));
}

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

static void need_folder(const std::string& path) {
    if (dir_exists(path)) return;
    if (::access(path.c_str(), F_OK) == 0)
        fail("{}: is a file, not a folder; give a checkpoint folder or a run folder", path);
    fail("{}: no such folder; give a checkpoint folder or a run folder", path);
}

std::string resolve_checkpoint_dir(const std::string& path) {
    need_folder(path);
    if (is_ckpt(path)) return path;
    for (const char* name : {"best", "latest"}) {
        std::string d = find_in_run(path, name);
        if (!d.empty()) return d;
    }
    fail(
        "{}: not a checkpoint folder (no model.safetensors) nor a run folder (no best/ or "
        "latest/); give the folder `moe train --out` wrote",
        path);
}

std::string resolve_resume_dir(const std::string& path) {
    need_folder(path);
    if (is_ckpt(path)) return path;
    std::string d = find_in_run(path, "latest");
    if (!d.empty()) return d;
    // A run killed during its very first latest/ write has only best/ (written just before):
    // resume from there (the trainer says so; best/ holds no optimizer moments).
    d = find_in_run(path, "best");
    if (!d.empty() && file_exists(d + "/trainer_state.json")) return d;
    fail(
        "{}: nothing to resume: no latest/ or best/ checkpoint in this run folder; start a new "
        "run with --config",
        path);
}

ModelConfig load_model_config(const std::string& dir) {
    std::string path = dir + "/config.json";
    return model_config_from_text(read_file(path), path);
}

// Every parameter finite, checked once on load (one pass, ~1 ms per 10M floats): NaN router or
// Inf norm weights would otherwise generate garbage with exit 0.
static void check_finite(const std::string& path, const std::string& name, const float* x,
                         size_t n) {
    int64_t i = first_non_finite(x, n);
    if (i >= 0)
        fail(
            "{}: tensor {}: value {} at index {} is not finite; the checkpoint is damaged (or "
            "saved from a diverged run): use another checkpoint",
            path, name, x[i], i);
}

// Rough count of parameters and tensors a config describes, in doubles: computed before
// Model::layout builds its table, so an absurd config.json (hidden_size 8192 beside a small
// file, 65536 experts) is refused before any allocation sized by it.
static void rough_size(const ModelConfig& c, double* n_params, double* n_tensors) {
    const double d = c.d_model, V = c.vocab_size, hd = c.hd();
    const double qd = c.n_heads * hd, kvd = c.n_kv_heads * hd, E = c.moe.n_experts;
    const double glu = c.moe.activation == Activation::swiglu ? 3 : 2;
    const double fs = c.moe.d_ff_shared > 0 ? c.moe.d_ff_shared : c.moe.d_ff;
    double p = V * d * (c.tie_embeddings ? 1 : 2) + d, t = c.tie_embeddings ? 2 : 3;
    for (int l = 0; l < c.n_layers; l++) {
        p += 2 * d + 2 * qd * d + 2 * kvd * d;
        t += 6;
        if (c.is_moe_layer(l)) {
            p += E * d + E * glu * c.moe.d_ff * d + c.moe.n_shared_experts * glu * fs * d;
            t += 1 + E * glu + c.moe.n_shared_experts * glu;
        } else {
            p += 3.0 * c.d_ff * d;
            t += 3;
        }
    }
    *n_params = p;
    *n_tensors = t;
}

// The config.json keys whose values appear in an expected shape, to name what disagrees.
static std::string keys_of_dims(const ModelConfig& c, const Shape& want, const Shape& got) {
    std::vector<std::pair<const char*, int64_t>> keys = {{"hidden_size", c.d_model},
                                                         {"vocab_size", c.vocab_size},
                                                         {"intermediate_size", c.moe.d_ff},
                                                         {"dense_intermediate_size", c.d_ff},
                                                         {"num_local_experts", c.moe.n_experts},
                                                         {"num_attention_heads", c.n_heads},
                                                         {"num_key_value_heads", c.n_kv_heads}};
    std::string out;
    for (int i = 0; i < want.rank(); i++) {
        if (i < got.rank() && want[i] == got[i]) continue;
        for (auto& [k, v] : keys)
            if (v == want[i] && out.find(k) == std::string::npos)
                out += fmt::format("{}{}={}", out.empty() ? "" : ", ", k, v);
    }
    return out.empty() ? std::string("its shape keys") : out;
}

// HF folders: every tensor of the layout present with its shape and a float dtype (the engine's
// WeightStore: shards, index, truncation checked on the headers), none left over.
static void check_hf_sizes(const ModelConfig& cfg, const std::string& dir, bool training) {
    WeightStore store(dir);
    double n_rough = 0, t_rough = 0;
    rough_size(cfg, &n_rough, &t_rough);
    const size_t in_files = store.unused().size();  // nothing asked for yet: every name
    if (t_rough > (double)in_files + 64)
        fail("{}/config.json: num_hidden_layers={} and the expert count {} imply {:.3g} tensors, "
             "the weight files hold {}; restore config.json",
             dir, cfg.n_layers, cfg.moe.n_experts, t_rough, in_files);
    size_t n = 0;
    for (const ParamSpec& s : Model::layout(cfg, &n)) store.get(s.name, s.shape.dims);
    if (cfg.tie_embeddings && store.has("lm_head.weight"))
        store.get("lm_head.weight", {cfg.vocab_size, cfg.d_model});  // tied: HF ignores it too
    for (const std::string& name : store.unused()) {
        if (name.size() >= 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0)
            continue;  // a buffer older HF versions saved; recomputed from rope_theta
        fail("{}: tensor {} is not part of a {} model as config.json describes it; restore "
             "config.json (or the weights)",
             dir, name, cfg.family);
    }
    // The weights stay mapped; the model holds them as fp32 (+ gradients and AdamW moments).
    check_fits_in_memory(4.0 * n * (training ? 5 : 2), dir,
                         "use a machine with more memory (or a smaller checkpoint)");
}

void check_checkpoint_sizes(const ModelConfig& cfg, const std::string& dir, bool training) {
    if (hf_weights(dir)) return check_hf_sizes(cfg, dir, training);
    const std::string st_path = dir + "/model.safetensors", cj = dir + "/config.json";
    uint64_t file_bytes = 0;
    auto header = read_safetensors_header(st_path, &file_bytes);
    double n_rough = 0, t_rough = 0;
    rough_size(cfg, &n_rough, &t_rough);
    auto describe = [&] {
        return fmt::format(
            "config.json describes {:.3g} parameters ({:.3g} MB as F32), "
            "model.safetensors has {:.3g} MB",
            n_rough, n_rough * 4 / 1e6, file_bytes / 1e6);
    };
    // One header entry per tensor: a config implying far more tensors than the file holds is
    // refused before its table is built.
    if (t_rough > (double)header.size() + 64)
        fail(
            "{}: num_hidden_layers={} and num_local_experts={} do not match the weights: they "
            "imply {:.3g} tensors, model.safetensors holds {}; restore the checkpoint's "
            "config.json",
            cj, cfg.n_layers, cfg.moe.n_experts, t_rough, header.size());
    size_t n = 0;
    std::vector<ParamSpec> specs = Model::layout(cfg, &n);
    int layers_in_file = 0;
    for (auto& [name, e] : header)
        if (name.rfind("model.layers.", 0) == 0)
            layers_in_file = std::max(layers_in_file, 1 + std::atoi(name.c_str() + 13));
    if (layers_in_file > 0 && layers_in_file != cfg.n_layers)
        fail(
            "{}: key 'num_hidden_layers' is {} but model.safetensors holds {} layers; restore the "
            "checkpoint's config.json",
            cj, cfg.n_layers, layers_in_file);
    for (auto& s : specs) {
        auto it = header.find(s.name);
        if (it == header.end())
            fail(
                "{}: missing tensor {} (config.json implies it); restore the checkpoint's "
                "config.json (or its weights)",
                st_path, s.name);
        if (it->second.shape != s.shape)
            fail(
                "{}: {} do not match the weights: tensor {}: expected shape {} (from "
                "config.json), model.safetensors has {}; restore the checkpoint's config.json",
                cj, keys_of_dims(cfg, s.shape, it->second.shape), s.name, s.shape.str(),
                it->second.shape.str());
    }
    // Every parameter takes at least 2 bytes (BF16/F16).
    if (n_rough * 2 > (double)file_bytes)
        fail(
            "{}: the shape keys do not match the weights: {}; restore the checkpoint's "
            "config.json",
            cj, describe());
    // The file is read whole and converted (file + floats), then the model's buffers; training
    // adds gradients and two AdamW moments.
    double need = (double)file_bytes + 4.0 * n * (training ? 5 : 2);
    check_fits_in_memory(need, dir, "use a machine with more memory (or a smaller checkpoint)");
}

// An HF folder's weights widened to fp32 into the flat buffer (a copy: training updates it).
static void load_hf_params(Model& model, const std::string& dir) {
    WeightStore store(dir);
    const ModelConfig& c = model.config();
    float* p = model.param_data();
    for (const ParamSpec& s : model.params()) {
        const WeightView v = store.get(s.name, s.shape.dims);
        widen_rows(p + s.offset, v, 0, v.rows);
        check_finite(dir, s.name, p + s.offset, (size_t)s.shape.numel());
    }
    if (c.tie_embeddings && store.has("lm_head.weight"))
        store.get("lm_head.weight", {c.vocab_size, c.d_model});
    std::set<std::string> others;  // a sharded model's: the experts other ranks read
    if (model.expert_shard().sharded())
        for (const ParamSpec& s : Model::layout(c, nullptr)) others.insert(s.name);
    for (const std::string& name : store.unused()) {
        if (name.size() >= 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0)
            continue;
        if (others.count(name)) continue;
        fail("{}: unexpected tensor {}: the weights do not match config.json; restore the "
             "folder",
             dir, name);
    }
}

// A model holding part of the experts (several processes) reads only its tensors from a
// safetensors file: the header, then each tensor's bytes at its offset, so no rank holds the
// whole file (moe.cpp writes F32).
namespace {
struct PartialReader {
    std::string path;
    std::map<std::string, StHeaderEntry> header;
    std::ifstream in;
    uint64_t base = 0;
    explicit PartialReader(const std::string& p) : path(p) {
        header = read_safetensors_header(path);
        in.open(path, std::ios::binary);
        uint64_t hlen = 0;
        in.read(reinterpret_cast<char*>(&hlen), 8);
        if (!in) fail("{}: cannot read", path);
        base = 8 + hlen;
    }
    bool has(const std::string& name) const { return header.count(name) != 0; }
    void read(const std::string& name, const Shape& shape, float* out) {
        auto it = header.find(name);
        if (it == header.end())
            fail("{}: missing tensor {}; the checkpoint does not match its config.json", path, name);
        const StHeaderEntry& e = it->second;
        if (e.shape != shape)
            fail("{}: tensor {}: expected shape {}, got {}", path, name, shape.str(), e.shape.str());
        if (e.dtype != "F32" || e.end - e.begin != (uint64_t)shape.numel() * 4)
            fail("{}: tensor {}: dtype {} (moe.cpp checkpoints hold F32); restore the checkpoint",
                 path, name, e.dtype);
        in.seekg((std::streamoff)(base + e.begin));
        in.read(reinterpret_cast<char*>(out), (std::streamsize)(e.end - e.begin));
        if (!in) fail("{}: tensor {}: cannot read {} bytes; the file is truncated", path, name,
                      e.end - e.begin);
        check_finite(path, name, out, (size_t)shape.numel());
    }
};
}  // namespace

static void load_params_partial(Model& model, const std::string& path) {
    PartialReader r(path);
    float* p = model.param_data();
    for (auto& s : model.params()) r.read(s.name, s.shape, p + s.offset);
    std::set<std::string> known;
    for (auto& s : Model::layout(model.config(), nullptr)) known.insert(s.name);
    for (int l = 0; l < model.config().n_layers; l++) {
        if (!model.config().is_moe_layer(l)) continue;
        std::string bn = bias_name(l);
        known.insert(bn);
        if (r.has(bn)) {
            auto& b = model.moe_layer(l)->balance_bias();
            r.read(bn, Shape{(int64_t)b.size()}, b.data());
        }
    }
    for (auto& [n, e] : r.header)
        if (!known.count(n))
            fail(
                "{}: unexpected tensor {}: the checkpoint does not match its config.json; restore "
                "the checkpoint",
                path, n);
}

void load_params(Model& model, const std::string& dir) {
    if (hf_weights(dir)) return load_hf_params(model, dir);
    const std::string path = dir + "/model.safetensors";
    if (model.expert_shard().sharded()) return load_params_partial(model, path);
    SafetensorsReader r(path);
    float* p = model.param_data();
    for (auto& s : model.params()) {
        const StTensor& t = r.get(s.name, s.shape);
        check_finite(path, s.name, t.data.data(), t.data.size());
        std::memcpy(p + s.offset, t.data.data(), t.data.size() * 4);
    }
    std::set<std::string> known;  // a sharded model reads its experts; the others are known
    size_t n_full = 0;
    for (auto& s : Model::layout(model.config(), &n_full)) known.insert(s.name);
    for (int l = 0; l < model.config().n_layers; l++) {
        if (!model.config().is_moe_layer(l)) continue;
        std::string bn = bias_name(l);
        known.insert(bn);
        if (r.has(bn)) {
            auto& b = model.moe_layer(l)->balance_bias();
            const StTensor& t = r.get(bn, Shape{(int64_t)b.size()});
            check_finite(path, bn, t.data.data(), t.data.size());
            b.assign(t.data.begin(), t.data.end());
        }
    }
    for (auto& n : r.names())
        if (!known.count(n))
            fail(
                "{}: unexpected tensor {}: the checkpoint does not match its config.json; restore "
                "the checkpoint",
                path, n);
}

void load_optimizer(Model& model, const std::string& dir, float* adam_m, float* adam_v,
                    const std::vector<int64_t>* state_offsets) {
    const std::string path = dir + "/optimizer.safetensors";
    if (!file_exists(path))
        fail("{}: missing (this checkpoint cannot be resumed); resume from the run's latest/",
             path);
    const auto& specs = model.params();
    if (model.expert_shard().sharded()) {  // this rank's tensors only
        PartialReader r(path);
        for (size_t i = 0; i < specs.size(); i++) {
            const ParamSpec& s = specs[i];
            int64_t o = state_offsets ? (*state_offsets)[i] : (int64_t)s.offset;
            if (o < 0) {
                if (r.has(s.name + ".exp_avg"))
                    fail("{}: has optimizer state for {}, which this run freezes (the freeze "
                         "changed?)",
                         path, s.name);
                continue;
            }
            r.read(s.name + ".exp_avg", s.shape, adam_m + o);
            r.read(s.name + ".exp_avg_sq", s.shape, adam_v + o);
        }
        return;
    }
    SafetensorsReader r(path);
    for (size_t i = 0; i < specs.size(); i++) {
        const ParamSpec& s = specs[i];
        int64_t o = state_offsets ? (*state_offsets)[i] : (int64_t)s.offset;
        if (o < 0) {
            if (r.has(s.name + ".exp_avg"))
                fail("{}: has optimizer state for {}, which this run freezes (the freeze "
                     "changed?)",
                     path, s.name);
            continue;
        }
        const StTensor& m = r.get(s.name + ".exp_avg", s.shape);
        const StTensor& v = r.get(s.name + ".exp_avg_sq", s.shape);
        check_finite(path, s.name + ".exp_avg", m.data.data(), m.data.size());
        check_finite(path, s.name + ".exp_avg_sq", v.data.data(), v.data.size());
        std::memcpy(adam_m + o, m.data.data(), m.data.size() * 4);
        std::memcpy(adam_v + o, v.data.data(), v.data.size() * 4);
    }
}

json load_trainer_state(const std::string& dir) {
    const std::string path = dir + "/trainer_state.json";
    return parse_trainer_state(read_file(path), path);
}

json parse_trainer_state(const std::string& text, const std::string& path) {
    const char* what = "a trainer_state.json written by moe train";
    if (text.empty()) fail("{}: empty file; expected {}", path, what);
    json j = parse_json_text(text, path, what);
    if (!j.is_object()) fail("{}: not a JSON object; the checkpoint is damaged", path);
    // The numbers a resume relies on, with their ranges (include/moe/checked.h).
    json_int(j, "format_version", path, Range::in(1, 1), 1);
    if (j.contains("step")) json_int(j, "step", path, Range::in(0, 1e12));
    json_num(j, "elapsed_s", path, Range::in(0, 1e12), 0);
    json_int(j, "best_step", path, Range::in(0, 1e12), 0);
    json_num(j, "best_val_loss", path, Range::in(0, 1e6), 0);
    json_num(j, "val_loss", path, Range::in(0, 1e6), 0);
    json_int(j, "train_tokens", path, Range::in(0, 1e15), 0);
    json_int(j, "val_tokens", path, Range::in(0, 1e15), 0);
    json_int(j, "tokens_seen", path, Range::in(0, 1e18), 0);
    if (j.contains("config") && !j["config"].is_object())
        fail("{}: key 'config' must be an object; the checkpoint is damaged", path);
    if (j.contains("loader") && !j["loader"].is_object())
        fail("{}: key 'loader' must be an object; the checkpoint is damaged", path);
    if (j.contains("moe_layer_rngs") && !j["moe_layer_rngs"].is_object())
        fail("{}: key 'moe_layer_rngs' must be an object; the checkpoint is damaged", path);
    return j;
}

LoadedModel load_model(const std::string& path, ExpertShard shard) {
    LoadedModel out;
    out.dir = resolve_checkpoint_dir(path);
    ModelConfig cfg = load_model_config(out.dir);
    out.tokenizer = load_tokenizer(out.dir);
    // HF folders often pad the embedding matrix beyond the tokenizer's ids (Qwen, OLMoE): fewer
    // tokenizer ids than rows is fine there; moe.cpp's own Mixtral checkpoints match exactly.
    const bool hf = hf_weights(out.dir) || cfg.family != "mixtral";
    const int tv = out.tokenizer->vocab_size();
    if (hf ? tv > cfg.vocab_size : tv != cfg.vocab_size)
        fail(
            "{}/config.json: key 'vocab_size' is {} but the tokenizer has {} symbols; restore "
            "the checkpoint's config.json or tokenizer",
            out.dir, cfg.vocab_size, out.tokenizer->vocab_size());
    check_checkpoint_sizes(cfg, out.dir, /*training=*/false);
    out.model = std::make_unique<Model>(cfg, /*trainable=*/false, shard);
    load_params(*out.model, out.dir);
    return out;
}

}  // namespace moe
