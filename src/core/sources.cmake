list(APPEND MOE_SOURCES
  src/core/tensor.cpp
  src/core/rng.cpp
  src/core/runtime.cpp
  src/core/file_io.cpp
  src/core/checked.cpp
)
