// moe convert: a model into another format.
//   moe convert SRC --to gguf --type f32|f16|bf16|q8_0|q4_0 --out X.gguf
//   moe convert SRC --to hf --out DIR [--dtype f32|bf16|f16] [--shard-size 2GB]
// SRC: a Hugging Face folder of the four families, a moe.cpp checkpoint (Mixtral family, char or
// SentencePiece tokenizer), or a .gguf (retyped). The GGUF is what llama.cpp reads for the family:
// docs/formats.md, "GGUF" (names, the q/k row order of arch llama, the vocabulary). Each target
// format is its own function (convert_to_gguf, convert_to_hf), the command only routes.
// --to hf: config.json, model.safetensors or shards with model.safetensors.index.json, the
// tokenizer (export_hf_folder, include/moe/hf_export.h; docs/formats.md); from a .gguf, config.json
// and the tokenizer files are made from its metadata.
#include <cstdio>
#include <memory>

#include "infer/gguf_model.h"
#include "moe/error.h"
#include "moe/gguf.h"
#include "moe/hf_export.h"
#include "tools/checked_flags.h"
#include "tools/command.h"

namespace moe::tools {

struct ConvertOptions {
    std::string src, to = "gguf", type, out;
    std::string dtype, shard_size;  // --to hf
};

static GgmlType parse_type(const std::string& t) {
    if (t == "f32") return GgmlType::f32;
    if (t == "f16") return GgmlType::f16;
    if (t == "bf16") return GgmlType::bf16;
    if (t == "q8_0") return GgmlType::q8_0;
    if (t == "q4_0") return GgmlType::q4_0;
    usage_fail("--type: '{}' is not allowed (expected one of: f32 | f16 | bf16 | q8_0 | q4_0)", t);
}

static void convert_to_gguf(const ConvertOptions& o) {
    if (!o.dtype.empty() || !o.shard_size.empty())
        usage_fail("--dtype/--shard-size: for --to hf; a GGUF's type is --type");
    if (o.out.empty()) usage_fail("--out: give the .gguf file to write");
    if (o.type.empty()) usage_fail("--type: give f32, f16, bf16, q8_0 or q4_0");
    const GgmlType type = parse_type(o.type);
    const GgufExportSummary r = write_gguf_model(o.src, type, o.out);
    std::fprintf(stderr, "moe convert: %s -> %s (arch %s, %s, %zu GGUF tensors, %.3g M params)\n",
                 o.src.c_str(), o.out.c_str(), r.arch.c_str(), ggml_type_name(type), r.n_tensors,
                 r.n_params / 1e6);
    for (const std::string& c : r.llama_cpp_caveats)
        std::fprintf(stderr, "moe convert: note: llama.cpp will not run this file as moe.cpp does: %s\n",
                     c.c_str());
}

static void convert_to_hf(const ConvertOptions& o) {
    if (!o.type.empty()) usage_fail("--type: for --to gguf; the folder's type is --dtype");
    if (o.out.empty()) usage_fail("--out: give the folder to write");
    HfExportOptions e;
    e.type = o.dtype.empty() ? "f32" : o.dtype;
    if (!o.shard_size.empty()) e.shard_bytes = parse_byte_size(o.shard_size, "--shard-size");
    const HfExportResult r = export_hf_folder(o.src, o.out, e);
    std::fprintf(stderr, "moe convert: %s -> %s (%s, %d tensors, %d file%s, %.2f MB)\n",
                 o.src.c_str(), o.out.c_str(), e.type.c_str(), r.n_tensors, r.n_files,
                 r.n_files == 1 ? "" : "s", r.bytes_out / 1e6);
}

static void run_convert(const ConvertOptions& o) {
    if (o.to == "gguf") return convert_to_gguf(o);
    if (o.to == "hf") return convert_to_hf(o);
    usage_fail("--to: '{}' is not supported (expected: gguf | hf)", o.to);
}

static void register_convert(CLI::App& app) {
    auto o = std::make_shared<ConvertOptions>();
    CLI::App* c = app.add_subcommand(
        "convert",
        "Convert a model: an HF folder (mixtral, qwen2_moe, qwen3_moe, olmoe), a moe.cpp "
        "checkpoint (Mixtral family) or a .gguf into a GGUF file llama.cpp runs, or any of them\n"
        "into a Hugging Face folder (--to hf; shards with an index by --shard-size).\n"
        "Examples: moe convert models/OLMoE-1B-7B-0924 --to gguf --type bf16 --out olmoe.gguf\n"
        "          moe convert runs/shakespeare/best --to gguf --type f32 --out shakespeare.gguf\n"
        "          moe convert runs/shakespeare --to hf --out hf-shakespeare --dtype bf16\n"
        "          moe convert olmoe.gguf --to hf --out olmoe-hf --dtype bf16");
    c->add_option("src", o->src, "model folder, moe.cpp checkpoint or .gguf")->required();
    add_choice(c, "--to", o->to, "gguf|hf", "target format");
    add_choice(c, "--type", o->type, "f32|f16|bf16|q8_0|q4_0",
               "weight type of the matrices (vectors, routers stay f32)");
    c->add_option("--out", o->out, "the file (gguf) or folder (hf, must not exist) to write");
    add_choice(c, "--dtype", o->dtype, "f32|bf16|f16",
               "--to hf: the matrices' type (vectors, routers stay as stored; default f32)");
    c->add_option("--shard-size", o->shard_size,
                  "--to hf: shards of at most this size (2GB, 500MB, 1.5GiB) with an index; "
                  "default one model.safetensors");
    c->callback([o]() { run_convert(*o); });
}

static RegisterCommand reg("convert", register_convert);

}  // namespace moe::tools
