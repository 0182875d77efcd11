# One line per subcommand file (tools/cmd_<name>.cpp).
set(MOE_TOOL_SOURCES
  tools/main.cpp
)
