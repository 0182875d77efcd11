// The GGUF side of a Hugging Face MoE model: llama.cpp's architecture names, metadata keys and
// tensor names for the four families, in one table used both to read a .gguf into the engine
// (WeightStore::from_gguf) and to write one (`moe convert --to gguf`). docs/formats.md, "GGUF".
#pragma once
#include <string>
#include <vector>

#include "moe/gguf.h"
#include "moe/hf_model.h"

namespace moe {

// mixtral -> "llama", qwen2_moe -> "qwen2moe", qwen3_moe -> "qwen3moe", olmoe -> "olmoe".
const char* gguf_arch_of(const std::string& model_type);

// One HF tensor and where it lives in a GGUF file: a whole tensor, or expert `expert` of a
// merged 3-D tensor [E, rows, cols] (ggml ne [cols, rows, E]). permute_heads > 0: the rows are
// stored in llama.cpp's order for arch "llama" (see gguf_permute_rows).
struct GgufSlot {
    std::string hf, gguf;
    std::vector<int64_t> hf_shape;  // {rows, cols} or {n}
    int expert = -1, n_experts = 0;
    int permute_heads = 0;
};
std::vector<GgufSlot> gguf_layout(const HfConfig& c);
// The ggml ne of a slot's GGUF tensor (merged experts: the whole 3-D tensor).
std::vector<int64_t> gguf_ne(const GgufSlot& s);

// llama.cpp's converter reorders the rows of q and k for arch "llama": its RoPE rotates adjacent
// pairs (x[2i], x[2i+1]) where HF's rotates halves (x[i], x[i + hd/2]). Within each head of hd
// rows, GGUF row 2i + s holds HF row s * hd/2 + i (s = 0, 1). Rows are moved whole (any type).
// to_gguf: src in HF order -> dst in GGUF order; else the inverse.
void gguf_permute_rows(const uint8_t* src, uint8_t* dst, int64_t n_rows, size_t row_bytes,
                       int n_heads, bool to_gguf);

// The metadata of a GGUF file -> HfConfig (the tensors decide which layers are MoE, biases, a
// tied head). Unsupported architectures and options are refused naming the key.
HfConfig hf_config_from_gguf(const GgufFile& f);

// `moe convert SRC --to gguf --type T --out X.gguf` (src/infer/gguf_export.cpp). SRC: an HF
// folder of the four families, a moe.cpp checkpoint (Mixtral family; char or SentencePiece
// tokenizer) or a .gguf. Matrices in `type` (Q8_0 needs rows in whole blocks of 32, else a
// moe::Error naming the tensor); vectors, routers and the shared-expert gate in F32.
struct GgufExportSummary {
    std::string arch;
    size_t n_tensors = 0;
    double n_params = 0;
};
GgufExportSummary write_gguf_model(const std::string& src, GgmlType type, const std::string& out);

}  // namespace moe
