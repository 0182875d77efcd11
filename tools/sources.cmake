# One line per subcommand file (tools/cmd_<name>.cpp).
set(MOE_TOOL_SOURCES
  tools/main.cpp
  tools/cmd_train.cpp
  tools/cmd_eval.cpp
  tools/cmd_generate.cpp
  tools/cmd_layer.cpp
  tools/cmd_bench.cpp
  tools/cmd_report.cpp
  tools/cmd_inspect.cpp
  tools/hf_tools.cpp
  tools/cmd_bench_generate.cpp
  tools/cmd_bench_gemm.cpp
  tools/cmd_tokenize.cpp
  tools/cmd_chat.cpp
  tools/cmd_quantize.cpp
  tools/cmd_convert.cpp
)
