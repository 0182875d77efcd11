// moe convert: a model into another format. Each target format is its own function; the
// command only routes on --to.
//   moe convert SRC --to hf --out DIR [--dtype f32|bf16|f16] [--shard-size 2GB]
// SRC: a Hugging Face folder (also an int8 one: widened), a moe.cpp checkpoint or run folder
// (Mixtral family, as the engine runs it). DIR: config.json, model.safetensors or shards with
// model.safetensors.index.json, the tokenizer (include/moe/hf_export.h, docs/formats.md).
#include <cstdio>
#include <memory>

#include "moe/error.h"
#include "moe/hf_export.h"
#include "tools/checked_flags.h"
#include "tools/command.h"

namespace moe::tools {

struct ConvertOptions {
    std::string src, to, out;
    std::string dtype = "f32", shard_size;  // --to hf
};

static void convert_to_hf(const ConvertOptions& o) {
    if (o.out.empty()) usage_fail("--out: give the folder to write");
    HfExportOptions e;
    e.type = o.dtype;
    if (!o.shard_size.empty()) e.shard_bytes = parse_byte_size(o.shard_size, "--shard-size");
    const HfExportResult r = export_hf_folder(o.src, o.out, e);
    std::fprintf(stderr, "moe convert: %s -> %s (%s, %d tensors, %d file%s, %.2f MB)\n",
                 o.src.c_str(), o.out.c_str(), o.dtype.c_str(), r.n_tensors, r.n_files,
                 r.n_files == 1 ? "" : "s", r.bytes_out / 1e6);
}

static void run_convert(const ConvertOptions& o) {
    if (o.to == "hf") return convert_to_hf(o);
    usage_fail("--to: '{}' is not supported (expected: hf)", o.to);
}

static void register_convert(CLI::App& app) {
    auto o = std::make_shared<ConvertOptions>();
    CLI::App* c = app.add_subcommand(
        "convert",
        "Convert a model into another format: a Hugging Face folder (--to hf).\n"
        "Example: moe convert runs/shakespeare-char-moe --to hf --out hf-shakespeare --dtype bf16");
    c->add_option("src", o->src, "model folder, moe.cpp checkpoint or run folder")->required();
    c->add_option("--to", o->to, "target format: hf")->required();
    c->add_option("--out", o->out, "--to hf: the folder to write (must not exist)");
    add_choice(c, "--dtype", o->dtype, "f32|bf16|f16",
               "--to hf: the matrices' type (vectors, routers stay as stored)");
    c->add_option("--shard-size", o->shard_size,
                  "--to hf: shards of at most this size (2GB, 500MB, 1.5GiB) with an index; "
                  "default one model.safetensors");
    c->callback([o]() { run_convert(*o); });
}

static RegisterCommand reg("convert", register_convert);

}  // namespace moe::tools
