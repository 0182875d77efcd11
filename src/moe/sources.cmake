# The MoE layer (dispatch, capacity, experts, combine); routers and losses list theirs in routers.cmake.
include(${CMAKE_CURRENT_LIST_DIR}/routers.cmake)
list(APPEND MOE_SOURCES
  src/moe/capacity.cpp
  src/moe/permute.cpp
  src/moe/experts.cpp
  src/moe/moe_layer.cpp
)
