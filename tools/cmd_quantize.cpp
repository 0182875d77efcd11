// moe quantize IN OUT --type bf16|int8|int4: a model folder, moe.cpp checkpoint or .gguf (llama.cpp's
// F32/F16/BF16/Q8_0 files of the four families) into a smaller Hugging Face folder the engine
// runs (moe generate / eval / inspect / bench generate OUT).
// int8: every matrix as Q8_0 (I8 values + F16 scales per 32 values of a row); the router, norms
// and biases stay as stored; int4 the same matrices as Q4_0 (U8 nibbles + F16 scales). The work
// is export_hf_folder (include/moe/hf_export.h).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "moe/error.h"
#include "moe/hf_export.h"
#include "moe/runtime.h"
#include "tools/checked_flags.h"
#include "tools/command.h"

namespace moe::tools {

struct QuantizeOptions {
    std::string in, out, type;
    int threads = 0;
    bool json = false;
};

static int run_quantize(const QuantizeOptions& o) {
    set_threads(o.threads);
    if (o.type.empty()) usage_fail("--type: give bf16, int8 or int4");
    const double t0 = now_seconds();
    HfExportOptions e;
    e.type = o.type;
    const HfExportResult r = export_hf_folder(o.in, o.out, e);
    const double dt = now_seconds() - t0;
    std::printf(
        "moe quantize: %s -> %s (%s): %d tensors, %d of them %s; %.2f MB -> %.2f MB "
        "in %.1f s\n",
        o.in.c_str(), o.out.c_str(), o.type.c_str(), r.n_tensors, r.n_quantized,
        o.type == "int4" ? "int4" : "int8", r.bytes_in / 1e6, r.bytes_out / 1e6, dt);
    if (o.json) {
        nlohmann::json j = {{"out", o.out},          {"type", o.type},
                            {"tensors", r.n_tensors}, {"bytes_in", r.bytes_in},
                            {"bytes_out", r.bytes_out}, {"seconds", dt}};
        j[o.type == "int4" ? "int4_tensors" : "int8_tensors"] = r.n_quantized;
        std::printf("%s\n", j.dump().c_str());
    }
    return 0;
}

static void register_quantize(CLI::App& app) {
    auto o = std::make_shared<QuantizeOptions>();
    CLI::App* sub = app.add_subcommand(
        "quantize",
        "Write a model's weights in a smaller type as a Hugging Face folder the engine runs.\n"
        "int8: matrices as Q8_0 (int8 + an fp16 scale per 32 values); router, norms, biases stay.\n"
        "int4: the same matrices as Q4_0 (4-bit values + an fp16 scale per 32 values).\n"
        "Example: moe quantize runs/shakespeare-char-moe runs/shakespeare-int8 --type int8\n"
        "         moe quantize olmoe-f16.gguf olmoe-int8 --type int8");
    sub->add_option("in", o->in, "Hugging Face folder, moe.cpp checkpoint, run folder or .gguf")
        ->required();
    sub->add_option("out", o->out, "the folder to write (must not exist)")->required();
    add_choice(sub, "--type", o->type, "bf16|int8|int4", "the matrices' type");
    add_checked(sub, "--threads", o->threads, Range::in(0, 4096), "threads (0: all cores)");
    sub->add_flag("--json", o->json, "last stdout line: {\"tensors\": ..., \"bytes_out\": ...}");
    sub->callback([o]() { exit_code() = run_quantize(*o); });
}

static RegisterCommand reg_quantize("quantize", register_quantize);

}  // namespace moe::tools
