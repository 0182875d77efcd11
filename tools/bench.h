// `moe bench <what>`: each benchmark registers itself as a sub-subcommand of `bench` (the same
// pattern as tools/command.h), so `moe bench train` can live in its own file later.
#pragma once
#include <CLI/CLI.hpp>
#include <vector>

namespace moe::tools {

using RegisterBenchFn = void (*)(CLI::App& bench);

std::vector<std::pair<const char*, RegisterBenchFn>>& bench_registry();

struct RegisterBench {
    RegisterBench(const char* name, RegisterBenchFn fn) { bench_registry().push_back({name, fn}); }
};

}  // namespace moe::tools
