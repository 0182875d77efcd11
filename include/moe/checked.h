// Checked numbers: the one place where a number (or enum, or string) read from JSON or from a
// command-line flag is checked for its type and its allowed range. Every reader goes through
// these, so "4294967328" never becomes 32, "40.5" never becomes 40, and NaN never becomes a
// learning rate. Errors are moe::Error in the project's style:
//   <where>: <what is wrong>; <what to do>
// where `where` names the file and key ("run/config.json: key 'hidden_size'") or the flag
// ("--top-k").
#pragma once
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace moe {

// An allowed interval, or (for strings) a list of choices "a|b|c". The default allows every
// finite number. Bounds are inclusive unless *_open.
struct Range {
    double lo = -HUGE_VAL, hi = HUGE_VAL;
    bool lo_open = false, hi_open = false;
    const char* choices = nullptr;  // strings: "a|b|c" (nullptr: any string)

    static Range in(double lo, double hi) { return {lo, hi}; }                       // [lo, hi]
    static Range at_least(double lo) { return {lo, HUGE_VAL}; }                      // [lo, inf)
    static Range above(double lo) { return {lo, HUGE_VAL, true}; }                   // (lo, inf)
    static Range in_open_hi(double lo, double hi) { return {lo, hi, false, true}; }  // [lo, hi)
    static Range in_open(double lo, double hi) { return {lo, hi, true, true}; }      // (lo, hi)
    static Range one_of(const char* list) {
        Range r;
        r.choices = list;
        return r;
    }

    bool contains(double x) const;
    bool allows(const std::string& s) const;  // choices
    // "integer in [1, 65536]", "number >= 0", "finite number in (0, 1)", "one of: a | b"
    std::string describe(bool integer) const;
};

// JSON values. `what` names the source and key in errors.
int64_t checked_int(const nlohmann::json& v, const std::string& what, const Range& r);
uint64_t checked_u64(const nlohmann::json& v, const std::string& what);
double checked_num(const nlohmann::json& v, const std::string& what, const Range& r);
bool checked_bool(const nlohmann::json& v, const std::string& what);
std::string checked_str(const nlohmann::json& v, const std::string& what, const Range& r = {});

// Keys of a JSON object: required (missing is an error naming the key) or with a default.
// `where` is the file; errors read "<where>: key '<key>': ...".
int64_t json_int(const nlohmann::json& o, const char* key, const std::string& where,
                 const Range& r);
int64_t json_int(const nlohmann::json& o, const char* key, const std::string& where, const Range& r,
                 int64_t def);
double json_num(const nlohmann::json& o, const char* key, const std::string& where, const Range& r,
                double def);
bool json_bool(const nlohmann::json& o, const char* key, const std::string& where, bool def);
std::string json_str(const nlohmann::json& o, const char* key, const std::string& where,
                     const Range& r, const std::string& def);

// Command-line strings ("--lr 2e-3"). `what` is the flag.
int64_t parse_int(const std::string& s, const std::string& what, const Range& r);
uint64_t parse_u64(const std::string& s, const std::string& what);
double parse_num(const std::string& s, const std::string& what, const Range& r);
bool parse_bool(const std::string& s, const std::string& what);
// The error text for s against r (empty when s is acceptable); what CLI validators call.
std::string check_int_text(const std::string& s, const Range& r);
std::string check_num_text(const std::string& s, const Range& r);

// JSON text -> value, with errors naming the file: "not valid JSON (at byte N)", or for a number
// beyond a double (1e400) the key it belongs to. `what` says what the file should hold.
nlohmann::json parse_json_text(const std::string& text, const std::string& where, const char* what);

// All floats finite: returns the index of the first non-finite value, or -1.
int64_t first_non_finite(const float* x, size_t n);

}  // namespace moe
