list(APPEND MOE_SOURCES
  src/kernels/gemm.cpp
)
