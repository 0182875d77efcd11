# The Transformer LM (embedding, attention blocks, dense or MoE FFNs, LM head, KV cache).
list(APPEND MOE_SOURCES
  src/model/model.cpp
)
