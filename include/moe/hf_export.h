// Writing a model as a Hugging Face folder: `moe quantize IN OUT --type bf16|int8|int4` and
// `moe convert SRC --to hf --out DIR [--dtype f32|bf16|f16] [--shard-size 2GB]` are both this
// one function with different options.
//
// The source is an HF folder of the four families (F32/BF16/F16/int8/int4), or a moe.cpp checkpoint
// (or run folder: its best/) of the Mixtral family that the engine runs exactly as trained (top-k
// softmax renormalised, SwiGLU experts in every layer, no shared expert; anything else is refused
// naming the moe_cpp key). Every tensor is checked by loading the source in the engine first.
// The output: config.json (the source's, without the moe_cpp training block, with torch_dtype and
// for int8 / int4 the "moe_cpp_quantization" block), model.safetensors or shards
// model-0000i-of-0000n.safetensors + model.safetensors.index.json, and the tokenizer files.
// Written into DIR.tmp-<pid> and renamed into place; DIR must not exist yet.
// docs/formats.md ("Int8 and int4 checkpoints", "Hugging Face export") has the layout.
#pragma once
#include <cstdint>
#include <string>

namespace moe {

struct HfExportOptions {
    // f32 | bf16 | f16: every matrix in that type; int8: matrices as Q8_0 (I8 values + F16
    // <name>_scale, hf_q8_eligible), the rest as stored; int4: the same matrices as Q4_0 (U8
    // nibbles [rows, cols / 2] + F16 <name>_scale). Vectors and the router are never
    // narrowed (they stay in the source's float type; routing is fp32).
    std::string type = "f32";
    uint64_t shard_bytes = 0;  // 0: one model.safetensors; else shards of at most this size
};

struct HfExportResult {
    int n_tensors = 0, n_quantized = 0;  // tensors written (scales not counted), of them int8 / int4
    int n_files = 0;
    uint64_t bytes_in = 0, bytes_out = 0;  // weight bytes mapped / written
};

HfExportResult export_hf_folder(const std::string& src, const std::string& dst,
                                const HfExportOptions& o);

// "2GB", "500MB", "1.5GiB", "123456" (bytes) -> bytes; `what` names the flag in errors.
uint64_t parse_byte_size(const std::string& s, const std::string& what);

}  // namespace moe
