# Hugging Face MoE checkpoints (mixtral, qwen2_moe, qwen3_moe, olmoe): config, mapped weights,
# the KV-cache inference engine.
list(APPEND MOE_SOURCES
  src/infer/hf_config.cpp
  src/infer/weights.cpp
  src/infer/hf_export.cpp
  src/infer/hf_model.cpp
  src/infer/gguf_model.cpp
  src/infer/gguf_export.cpp
)
