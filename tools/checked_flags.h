// Numeric command-line flags with their range, checked by the same code that reads JSON numbers
// (include/moe/checked.h): `--top-k -5`, `--temperature nan`, `--batch 2147483648` are refused
// with the range in the message, and the range is printed in --help.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <type_traits>

#include "moe/checked.h"

namespace moe::tools {

inline CLI::Validator range_validator(const Range& r, bool integer) {
    return CLI::Validator(
        [r, integer](std::string& s) {
            return integer ? check_int_text(s, r) : check_num_text(s, r);
        },
        "", "moe-range");
}

// add_option with a range: integers exact and in range, floats finite and in range, and the
// help line ends with the range ("(integer >= 1, default 32)").
template <typename T>
CLI::Option* add_checked(CLI::App* app, const std::string& name, T& var, const Range& r,
                         const std::string& help) {
    static_assert(std::is_arithmetic<T>::value, "add_checked is for numbers");
    constexpr bool integer = std::is_integral<T>::value;
    Range q = r;
    if (integer) {  // never more than the variable holds
        q.lo = std::max(q.lo, (double)std::numeric_limits<T>::lowest());
        q.hi = std::min(q.hi, (double)std::numeric_limits<T>::max());
    }
    std::string desc =
        help + " (" + q.describe(integer) + ", default " + CLI::detail::to_string(var) + ")";
    return app->add_option(name, var, desc)->check(range_validator(q, integer));
}

// A string flag from a list ("val|train|all"), listed in its help.
inline CLI::Option* add_choice(CLI::App* app, const std::string& name, std::string& var,
                               const char* choices, const std::string& help) {
    Range r = Range::one_of(choices);
    std::string desc = help + " (" + r.describe(false) + ", default " + var + ")";
    return app->add_option(name, var, desc)
        ->check(CLI::Validator(
            [r](std::string& s) {
                return r.allows(s)
                           ? std::string()
                           : "'" + s + "' is not allowed (expected " + r.describe(false) + ")";
            },
            "", "moe-choice"));
}

}  // namespace moe::tools
