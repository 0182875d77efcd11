// moe: one binary, subcommands (DESIGN.md §8). Errors go to stderr as one line, exit code 1.
#include <algorithm>
#include <cstdio>

#include "moe/error.h"
#include "moe/runtime.h"
#include "tools/command.h"

namespace moe::tools {

std::vector<CommandEntry>& command_registry() {
    static std::vector<CommandEntry> r;
    return r;
}

int& exit_code() {
    static int code = 0;
    return code;
}

}  // namespace moe::tools

int main(int argc, char** argv) {
    moe::runtime_init(argc, argv);
    CLI::App app{"moe.cpp: train, run and inspect sparse Mixture-of-Experts models", "moe"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "moe.cpp 0.1");
    auto& reg = moe::tools::command_registry();
    std::sort(reg.begin(), reg.end(), [](auto& a, auto& b) { return a.name < b.name; });
    for (auto& c : reg) c.fn(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const moe::Error& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "moe: error: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "moe: error: %s\n", e.what());
        return 1;
    }
    return moe::tools::exit_code();
}
