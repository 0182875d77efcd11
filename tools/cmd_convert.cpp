// moe convert: a model into another format.
//   moe convert SRC --to gguf --type f32|f16|bf16|q8_0 --out X.gguf
// SRC: a Hugging Face folder of the four families, a moe.cpp checkpoint (Mixtral family, char or
// SentencePiece tokenizer), or a .gguf (retyped). The GGUF is what llama.cpp reads for the family:
// docs/formats.md, "GGUF" (names, the q/k row order of arch llama, the vocabulary). Each target
// format is its own function (convert_to_gguf; `--to hf` is another's), the command only routes.
#include <cstdio>
#include <memory>

#include "infer/gguf_model.h"
#include "moe/error.h"
#include "moe/gguf.h"
#include "tools/checked_flags.h"
#include "tools/command.h"

namespace moe::tools {

struct ConvertOptions {
    std::string src, to = "gguf", type, out;
};

static GgmlType parse_type(const std::string& t) {
    if (t == "f32") return GgmlType::f32;
    if (t == "f16") return GgmlType::f16;
    if (t == "bf16") return GgmlType::bf16;
    if (t == "q8_0") return GgmlType::q8_0;
    usage_fail("--type: '{}' is not allowed (expected one of: f32 | f16 | bf16 | q8_0)", t);
}

static void convert_to_gguf(const ConvertOptions& o) {
    if (o.out.empty()) usage_fail("--out: give the .gguf file to write");
    if (o.type.empty()) usage_fail("--type: give f32, f16, bf16 or q8_0");
    const GgmlType type = parse_type(o.type);
    const GgufExportSummary r = write_gguf_model(o.src, type, o.out);
    std::fprintf(stderr, "moe convert: %s -> %s (arch %s, %s, %zu GGUF tensors, %.3g M params)\n",
                 o.src.c_str(), o.out.c_str(), r.arch.c_str(), ggml_type_name(type), r.n_tensors,
                 r.n_params / 1e6);
}

static void run_convert(const ConvertOptions& o) {
    if (o.to == "gguf") return convert_to_gguf(o);
    usage_fail("--to: '{}' is not supported (expected: gguf)", o.to);
}

static void register_convert(CLI::App& app) {
    auto o = std::make_shared<ConvertOptions>();
    CLI::App* c = app.add_subcommand(
        "convert",
        "Convert a model: an HF folder (mixtral, qwen2_moe, qwen3_moe, olmoe), a moe.cpp "
        "checkpoint (Mixtral family) or a .gguf into a GGUF file llama.cpp runs.\n"
        "Examples: moe convert models/OLMoE-1B-7B-0924 --to gguf --type bf16 --out olmoe.gguf\n"
        "          moe convert runs/shakespeare/best --to gguf --type f32 --out shakespeare.gguf");
    c->add_option("src", o->src, "model folder, moe.cpp checkpoint or .gguf")->required();
    add_choice(c, "--to", o->to, "gguf", "target format");
    add_choice(c, "--type", o->type, "f32|f16|bf16|q8_0",
               "weight type of the matrices (vectors, routers stay f32)");
    c->add_option("--out", o->out, "the file to write (atomically)");
    c->callback([o]() { run_convert(*o); });
}

static RegisterCommand reg("convert", register_convert);

}  // namespace moe::tools
