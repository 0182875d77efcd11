list(APPEND MOE_SOURCES
  src/kernels/gemm.cpp
  src/kernels/onednn_gemm.cpp
  src/kernels/activations.cpp
  src/kernels/rmsnorm.cpp
  src/kernels/rope.cpp
  src/kernels/attention.cpp
  src/kernels/cross_entropy.cpp
  src/kernels/embedding.cpp
  src/kernels/typed_gemm.cpp
  src/kernels/q8_gemm.cpp
  src/kernels/bf16_gemm.cpp
)
# AdamW, gradient norm (train helper).
list(APPEND MOE_SOURCES src/kernels/adamw.cpp)
