# One line per subcommand file.
set(MOE_TOOL_SOURCES
  tools/main.cpp
)
