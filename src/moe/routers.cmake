# Routers (one file each) and balancing losses.
list(APPEND MOE_SOURCES
  src/moe/router.cpp
  src/moe/balance.cpp
  src/moe/router_softmax.cpp
  src/moe/router_topk.cpp
  src/moe/router_noisy_topk.cpp
  src/moe/router_switch.cpp
  src/moe/router_gshard.cpp
  src/moe/router_expert_choice.cpp
  src/moe/router_hierarchical.cpp
  src/moe/router_top_p.cpp
)
