// Each tools/cmd_<name>.cpp registers its subcommand with a static RegisterCommand, so adding a
// command is one file and one line in tools/sources.cmake. A command parses into a plain options
// struct and calls a run_* function that tests can call without argv.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace moe::tools {

using RegisterFn = void (*)(CLI::App& app);

struct CommandEntry {
    std::string name;
    RegisterFn fn;
};

std::vector<CommandEntry>& command_registry();

struct RegisterCommand {
    RegisterCommand(const char* name, RegisterFn fn) { command_registry().push_back({name, fn}); }
};

// Set by a subcommand's callback: the process exit code.
int& exit_code();

}  // namespace moe::tools
