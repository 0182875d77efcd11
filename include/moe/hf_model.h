// Hugging Face MoE checkpoints (issue 8): a model directory as HF publishes it (config.json,
// model.safetensors or shards + model.safetensors.index.json, a tokenizer) for the families
// mixtral, qwen2_moe, qwen3_moe and olmoe, memory-mapped and run for inference.
//
// The weights are never copied: every matrix is a view (dtype, shape, pointer) into the mapped
// shard files, so start-up costs only the header parse and a model larger than free RAM runs
// with the kernel paging experts in and out. Only the small vectors (norm weights, biases, the
// router and shared-expert gate) are converted to fp32 copies: routing is always fp32.
// Arithmetic is fp32 (activations, KV cache), with weights converted on the fly from F32, BF16
// or F16 (src/kernels/typed_gemm.h). docs/hf-models.md has the family table.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moe {

class GgufFile;

// How a weight is stored. q8_0 is GGML's Q8_0 (blocks of 32 values along a row, each an fp16
// scale d and 32 int8 q, value = d * q; src/kernels/q8_gemm.h), in one of two layouts:
//   GGML's block_q8_0 (scales == nullptr): each row is cols / 32 blocks of 34 bytes {d, q[32]}
//     in `data`, as a GGUF file holds them (zero-copy views of a mapped file's Q8_0 tensors);
//   split (scales != nullptr): `data` holds the int8 values [rows, cols] and `scales` the fp16 d
//     [rows, cols / 32], as moe.cpp's int8 safetensors hold them (docs/formats.md), and as the
//     store rewrites a GGUF's Q8_0 tensors copied into huge pages (and random q8_0 weights).
// cols % 32 == 0 always (refused at load otherwise).
// q4_0 is GGML's Q4_0 (blocks of 32: an fp16 d and 16 bytes of 4-bit q, value = d * (q - 8);
// src/kernels/q8_gemm.h), in GGML's block_q4_0 layout (18 bytes a block; scales == nullptr) or
// split (`data` the blocks' 16 bytes of nibbles [rows, cols / 2], `scales` the fp16 d [rows,
// cols / 32]: `moe quantize --type int4`, and a GGUF's Q4_0 copied into huge pages).
enum class WType { f32, f16, bf16, q8_0, q4_0 };
const char* wtype_name(WType t);      // "F32", "F16", "BF16" (safetensors spelling), "Q8_0", "Q4_0"
size_t wtype_size(WType t);           // bytes per value (q8_0: 1, the int8; scales aside; q4_0: 0)
// Bytes of one row of `cols` values in GGML's layout (q8_0: cols / 32 blocks of 34 bytes;
// q4_0: cols / 32 blocks of 18).
size_t wtype_row_bytes(WType t, int64_t cols);

// A matrix [rows, cols] row-major (HF orientation [out, in]) or a vector (rows = 1) in a file.
struct WeightView {
    WType type = WType::f32;
    int64_t rows = 0, cols = 0;
    const void* data = nullptr;
    const void* scales = nullptr;  // q8_0 / q4_0 split layout only (see WType)
    // Bytes from one row to the next in `data`.
    size_t row_stride() const {
        if (scales) return type == WType::q4_0 ? (size_t)cols / 2 : (size_t)cols;
        return wtype_row_bytes(type, cols);
    }
    // Row r in `data`: its values, or for q8_0 its blocks (GGML layout) / int8 values (split;
    // q4_0: its nibbles).
    const uint8_t* row(int64_t r) const { return (const uint8_t*)data + (size_t)r * row_stride(); }
};

// The model's description, read from config.json by family (hf_config_from_json). Options a
// family has that we do not implement are refused there, naming the key.
struct HfConfig {
    std::string model_type;  // mixtral | qwen2_moe | qwen3_moe | olmoe
    int vocab_size = 0, hidden_size = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0;
    int head_dim = 0;           // per head (qwen3_moe: its own key; else hidden / heads)
    int max_positions = 0;      // max_position_embeddings: the longest context we accept
    float rms_eps = 1e-6f, rope_theta = 10000.f;
    bool tie_embeddings = false;
    int n_experts = 0, top_k = 0;
    int expert_ff = 0;          // each routed expert's intermediate width
    int dense_ff = 0;           // dense MLP layers (qwen2/3_moe mlp_only_layers, sparse step)
    int shared_ff = 0;          // qwen2_moe shared expert width (0: none)
    bool norm_topk_prob = true; // renormalise the top-k probabilities to sum 1
    std::vector<uint8_t> moe_layer;  // per layer: 1 = sparse MoE block, 0 = dense MLP
    enum class QkNorm { none, per_head, whole } qk_norm = QkNorm::none;
    float clip_qkv = 0;         // olmoe: clamp q, k, v to [-c, c] (0 = off)
    bool qkv_bias = false;      // q/k/v projections have biases (qwen2_moe; attention_bias)
    bool o_bias = false;        // o_proj has a bias (attention_bias in qwen3_moe and olmoe)
    int bos_token_id = -1;
    std::vector<int32_t> eos_token_ids;
    // config.json's "moe_cpp_quantization" (moe quantize; docs/formats.md): "int8" when the
    // folder holds int8 matrices with their scales, "" for plain float weights.
    std::string quantization;

    // Tensor-name prefix of layer l's FFN block ("model.layers.3.block_sparse_moe." / ".mlp.").
    std::string ffn_prefix(int l) const;
    // Routed expert j's three matrices: gate (SwiGLU's silu input), up, down.
    std::string expert_name(int l, int j, int which) const;  // which: 0 gate, 1 up, 2 down
    double n_params() const;  // parameters in the files the model uses (double: no overflow)
};

// Whether `moe quantize --type int8` stores this tensor as int8 (q8_0): a matrix whose rows are
// whole 32-blocks, except the router (and qwen2_moe's shared-expert gate), which stays in its
// float type: routing is fp32, and int8 ties would flip top-k. Vectors never are.
bool hf_q8_eligible(const std::string& name, const std::vector<int64_t>& shape);
// The name of an int8 tensor's scales: "<name>_scale" (q_proj.weight -> q_proj.weight_scale).
std::string hf_q8_scale_name(const std::string& name);

// Every tensor the engine reads for this config: name and shape (vectors as {n}), in load order.
std::vector<std::pair<std::string, std::vector<int64_t>>> hf_tensor_shapes(const HfConfig& c);

// config.json (parsed) -> HfConfig. `where` names the file in errors. Unknown model_type, missing
// or out-of-range keys, hidden_act other than silu, any rope_scaling, a sliding window shorter
// than max_position_embeddings: moe::Error naming the key and what to do.
HfConfig hf_config_from_json(const nlohmann::json& j, const std::string& where);
// config.json's "architectures" entry of a family (mixtral, qwen2_moe, qwen3_moe, olmoe).
const char* hf_architecture(const std::string& model_type);
// HfConfig -> the config.json a Hugging Face folder of the family has (the inverse of
// hf_config_from_json, checked by reading it back: a model the family's keys cannot describe is
// a moe::Error naming `where` and the field). For writing a .gguf's model as a folder.
nlohmann::json hf_config_to_json(const HfConfig& c, const std::string& where);
// A folder whose config.json has a model_type and no "moe_cpp" key, or a moe.cpp checkpoint of
// a family other than mixtral (model_type qwen2_moe, qwen3_moe, olmoe: a real HF folder plus the
// moe_cpp block, which the engine ignores). moe.cpp's Mixtral-family checkpoints load through
// load_model.
// A .gguf file (GGUF magic) counts too: the engine runs it like a folder.
bool is_hf_model_dir(const std::string& dir);

// model.safetensors.index.json's text -> {tensor name: shard file name}; `where` names it in
// errors. File names must be plain names inside the folder (no '/', '..').
std::map<std::string, std::string> parse_safetensors_index(const std::string& text,
                                                           const std::string& where);

// The mapped tensor files of a directory: model.safetensors, or the shards named by
// model.safetensors.index.json. Every header is validated before anything is used (offsets
// inside the file: a truncated shard is caught here, not by a SIGBUS later).
class WeightStore {
   public:
    // model_weights: the weights of a model to run (HfModel), which may be copied into huge
    // pages instead of mapped (io/file_map.h: MOE_HUGEPAGES); false for conversions.
    explicit WeightStore(const std::string& dir, bool model_weights = false);
    // Random weights in memory for benchmarks (`moe bench generate --random`): every tensor of
    // hf_tensor_shapes(c) in type t, matrices uniform in +-0.05 and norm weights 1. With q8_0,
    // the matrices hf_q8_eligible() names are Q8_0 (split layout, as a copied GGUF's), the rest F32.
    static std::unique_ptr<WeightStore> random(const HfConfig& c, WType t, uint64_t seed);
    // A .gguf file (src/infer/gguf_model.cpp): *cfg from its metadata, every tensor under its HF
    // name (merged expert tensors sliced per expert), checked against the metadata.
    static std::unique_ptr<WeightStore> from_gguf(const std::string& path, HfConfig* cfg,
                                                  bool model_weights = false);
    // The same on a parsed file (kept alive by the store): fuzzing, tests.
    static std::unique_ptr<WeightStore> from_gguf(std::shared_ptr<const GgufFile> file,
                                                  HfConfig* cfg);
    ~WeightStore();
    WeightStore(const WeightStore&) = delete;
    WeightStore& operator=(const WeightStore&) = delete;

    bool has(const std::string& name) const;
    // The tensor with exactly this shape ({n} for a vector) in F32/F16/BF16, or int8 (I8
    // [rows, cols] with its fp16 scales `<name>_scale` [rows, cols / 32]: a q8_0 view in the
    // split layout), else moe::Error naming the shard, the tensor, and both shapes or the dtype
    // (or the missing / misshapen scales). Marks it (and its scales) used.
    WeightView get(const std::string& name, const std::vector<int64_t>& shape);
    // A small tensor converted to fp32 (norms, biases, router): a copy owned by the caller.
    std::vector<float> get_f32(const std::string& name, const std::vector<int64_t>& shape);
    // Whether a tensor is stored as `dtype` ("I8" / "U8": `moe quantize --type int8 / int4`).
    bool holds_dtype(const std::string& dtype) const;
    // Names present in the files that get()/get_f32() never asked for.
    std::vector<std::string> unused() const;
    uint64_t mapped_bytes() const;    // the size of every mapping
    uint64_t resident_bytes() const;  // of those, pages in RAM now (mincore)
    size_t n_files() const;
    struct Impl;

   private:
    WeightStore();
    WeightView get_quantized(const std::string& name, const std::vector<int64_t>& shape,
                              const void* values, WType t);
    std::unique_ptr<Impl> impl_;
};

// Which experts ran, per layer (counted over every token fed since reset_usage()).
struct ExpertUsage {
    std::vector<std::vector<int64_t>> count;  // [layer][expert]; empty for dense layers
    int64_t tokens = 0;
};

class HfModel {
   public:
    // Maps and checks the directory: config, every tensor's name, shape and dtype (a tensor the
    // family does not have is an error too), non-finite small tensors.
    explicit HfModel(const std::string& dir);
    // A model over weights already in a store (random weights for benchmarks); name for messages.
    HfModel(const HfConfig& cfg, std::unique_ptr<WeightStore> store, const std::string& name);
    ~HfModel();
    const HfConfig& config() const { return cfg_; }
    const std::string& dir() const { return dir_; }
    WeightStore& weights() { return *store_; }

    // KV-cache inference, batch 1. reserve(n): room for n positions (<= max_positions); feeding
    // beyond the reserved room grows it. cache_feed runs the tokens at positions cache_pos() ..
    // cache_pos() + n - 1 (a prompt prefill when n > 1) and returns the logits [V] of the last
    // one, or with all_logits the logits [n, V] of every one.
    void reserve(int n);
    void cache_reset();
    const float* cache_feed(const int32_t* ids, int n, bool all_logits = false);
    int cache_pos() const;

    const ExpertUsage& usage() const;
    void reset_usage();
    // The last fed tokens' routing: [layer][token * top_k + i] expert and combine weight
    // (layers without experts are empty). For tracing and inspection.
    const std::vector<std::vector<int32_t>>& last_experts() const;
    const std::vector<std::vector<float>>& last_weights() const;

    struct Impl;

   private:
    void bind_weights();
    const float* feed_chunk(const int32_t* ids, int n, int first, std::vector<float>& out);
    std::string dir_;
    HfConfig cfg_;
    std::unique_ptr<WeightStore> store_;
    std::unique_ptr<Impl> impl_;
};

// Mean cross-entropy (nats) over consecutive non-overlapping windows of block + 1 tokens of ids
// (window w = ids[w (block+1) ...]), each predicting its last `block` tokens from an empty cache:
// what `moe eval` reports, windowed as for moe.cpp's own checkpoints. *n_pred: tokens predicted.
double hf_eval_windows(HfModel& model, const std::vector<int32_t>& ids, int block,
                       int64_t* n_pred);

}  // namespace moe
