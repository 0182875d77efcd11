list(APPEND MOE_SOURCES
  src/io/safetensors.cpp
  src/io/gguf.cpp
  src/io/file_map.cpp
)
# Training config and checkpoints (train helper).
list(APPEND MOE_SOURCES src/io/config.cpp src/io/checkpoint.cpp)
