list(APPEND MOE_SOURCES
  src/io/safetensors.cpp
)
