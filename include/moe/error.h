// moe::Error is what every bad input at the library's edges throws: it says what, where, and a hint.
// MOE_CHECK guards invariants and stays on in release builds. Library code never calls exit().
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace moe {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A wrong command line (a missing or conflicting flag): the tool exits 2 instead of 1.
struct UsageError : Error {
    using Error::Error;
};

template <typename... Args>
[[noreturn]] inline void usage_fail(fmt::format_string<Args...> f, Args&&... args) {
    throw UsageError(fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] inline void fail(fmt::format_string<Args...> f, Args&&... args) {
    throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace moe

#define MOE_CHECK(cond, ...)                                                                   \
    do {                                                                                       \
        if (!(cond))                                                                           \
            throw ::moe::Error(fmt::format("{}:{}: check '{}' failed: {}", __FILE__, __LINE__, \
                                           #cond, fmt::format(__VA_ARGS__)));                  \
    } while (0)
