// Checked numbers (include/moe/checked.h): type and range of every number read from JSON or flags.
#include "moe/checked.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <regex>

#include "moe/error.h"

namespace moe {

using json = nlohmann::json;

// Integers are exact in a double up to 2^53; every integer range we declare is inside that.
static constexpr double kMaxExact = 9007199254740992.0;

bool Range::contains(double x) const {
    if (std::isnan(x)) return false;
    if (lo_open ? !(x > lo) : !(x >= lo)) return false;
    if (hi_open ? !(x < hi) : !(x <= hi)) return false;
    return true;
}

bool Range::allows(const std::string& s) const {
    if (!choices) return true;
    const char* p = choices;
    while (*p) {
        const char* bar = std::strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : std::strlen(p);
        if (s.size() == n && s.compare(0, n, p, n) == 0) return true;
        if (!bar) break;
        p = bar + 1;
    }
    return false;
}

static std::string num_str(double x) {
    if (x >= 1.8e19) return "2^64-1";
    if (x == std::floor(x) && std::fabs(x) < 1e15) return fmt::format("{}", (int64_t)x);
    return fmt::format("{:g}", x);
}

std::string Range::describe(bool integer) const {
    if (choices) {
        std::string s = "one of: ";
        for (const char* p = choices; *p; p++)
            s += *p == '|' ? std::string(" | ") : std::string(1, *p);
        return s;
    }
    std::string kind = integer ? "integer" : "finite number";
    bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
    if (has_lo && has_hi)
        return fmt::format("{} in {}{}, {}{}", kind, lo_open ? "(" : "[", num_str(lo), num_str(hi),
                           hi_open ? ")" : "]");
    if (has_lo) return fmt::format("{} {} {}", kind, lo_open ? ">" : ">=", num_str(lo));
    if (has_hi) return fmt::format("{} {} {}", kind, hi_open ? "<" : "<=", num_str(hi));
    return kind;
}

// The integer range actually enforced: open-ended ranges stop at what an int64 holds exactly.
static Range int_range(const Range& r) {
    Range q = r;
    if (!std::isfinite(q.lo)) q.lo = -kMaxExact;
    if (!std::isfinite(q.hi)) q.hi = kMaxExact;
    return q;
}

[[noreturn]] static void bad_value(const std::string& what, const std::string& got, const Range& r,
                                   bool integer) {
    fail("{}: {} is not allowed (expected {}); give a value in that range", what, got,
         r.describe(integer));
}

int64_t checked_int(const json& v, const std::string& what, const Range& r) {
    double x;
    if (v.is_number_integer() && !v.is_number_unsigned()) {
        x = (double)v.get<int64_t>();
    } else if (v.is_number_unsigned()) {
        uint64_t u = v.get<uint64_t>();
        if (u > (uint64_t)kMaxExact) bad_value(what, v.dump(), r, true);
        x = (double)u;
    } else if (v.is_number_float()) {
        x = v.get<double>();
        if (!std::isfinite(x) || x != std::floor(x))
            fail("{}: {} is not an integer; give a whole number ({})", what, v.dump(),
                 r.describe(true));
    } else {
        fail("{}: must be an integer ({}), got {}; fix the value", what, r.describe(true),
             v.dump());
    }
    if (!int_range(r).contains(x)) bad_value(what, v.dump(), r, true);
    return (int64_t)x;
}

uint64_t checked_u64(const json& v, const std::string& what) {
    if (v.is_number_unsigned()) return v.get<uint64_t>();
    if (v.is_number_integer() && v.get<int64_t>() >= 0) return (uint64_t)v.get<int64_t>();
    fail("{}: must be an unsigned integer in [0, 18446744073709551615], got {}; fix the value",
         what, v.dump());
}

double checked_num(const json& v, const std::string& what, const Range& r) {
    if (!v.is_number())
        fail("{}: must be a number ({}), got {}; fix the value", what, r.describe(false), v.dump());
    double x = v.get<double>();
    if (!std::isfinite(x) || !r.contains(x)) bad_value(what, v.dump(), r, false);
    return x;
}

bool checked_bool(const json& v, const std::string& what) {
    if (!v.is_boolean()) fail("{}: must be true or false, got {}; fix the value", what, v.dump());
    return v.get<bool>();
}

std::string checked_str(const json& v, const std::string& what, const Range& r) {
    if (!v.is_string())
        fail("{}: must be a string{}, got {}; fix the value", what,
             r.choices ? " (" + r.describe(false) + ")" : std::string(), v.dump());
    std::string s = v.get<std::string>();
    if (!r.allows(s))
        fail("{}: '{}' is not allowed (expected {}); use one of those", what, s, r.describe(false));
    return s;
}

static std::string key_what(const std::string& where, const char* key) {
    return fmt::format("{}: key '{}'", where, key);
}

static const json* find_key(const json& o, const char* key) {
    if (!o.is_object()) return nullptr;
    auto it = o.find(key);
    if (it == o.end() || it->is_null()) return nullptr;
    return &*it;
}

int64_t json_int(const json& o, const char* key, const std::string& where, const Range& r) {
    const json* v = find_key(o, key);
    if (!v) fail("{}: missing key '{}' ({}); add it", where, key, r.describe(true));
    return checked_int(*v, key_what(where, key), r);
}

int64_t json_int(const json& o, const char* key, const std::string& where, const Range& r,
                 int64_t def) {
    const json* v = find_key(o, key);
    return v ? checked_int(*v, key_what(where, key), r) : def;
}

double json_num(const json& o, const char* key, const std::string& where, const Range& r,
                double def) {
    const json* v = find_key(o, key);
    return v ? checked_num(*v, key_what(where, key), r) : def;
}

bool json_bool(const json& o, const char* key, const std::string& where, bool def) {
    const json* v = find_key(o, key);
    return v ? checked_bool(*v, key_what(where, key)) : def;
}

std::string json_str(const json& o, const char* key, const std::string& where, const Range& r,
                     const std::string& def) {
    const json* v = find_key(o, key);
    return v ? checked_str(*v, key_what(where, key), r) : def;
}

// ---- command-line strings ----

std::string check_int_text(const std::string& s, const Range& r) {
    const char* p = s.c_str();
    char* end = nullptr;
    errno = 0;
    long long x = std::strtoll(p, &end, 10);
    if (s.empty() || *end || end == p || std::isspace((unsigned char)s[0]))
        return fmt::format("'{}' is not an integer (expected {})", s, r.describe(true));
    if (errno == ERANGE || !int_range(r).contains((double)x))
        return fmt::format("{} is not allowed (expected {})", s, r.describe(true));
    return "";
}

std::string check_num_text(const std::string& s, const Range& r) {
    const char* p = s.c_str();
    char* end = nullptr;
    errno = 0;
    double x = std::strtod(p, &end);
    if (s.empty() || *end || end == p || std::isspace((unsigned char)s[0]))
        return fmt::format("'{}' is not a number (expected {})", s, r.describe(false));
    if (!std::isfinite(x) || !r.contains(x))
        return fmt::format("{} is not allowed (expected {})", s, r.describe(false));
    return "";
}

int64_t parse_int(const std::string& s, const std::string& what, const Range& r) {
    std::string e = check_int_text(s, r);
    if (!e.empty()) fail("{}: {}; give a value in that range", what, e);
    return std::strtoll(s.c_str(), nullptr, 10);
}

uint64_t parse_u64(const std::string& s, const std::string& what) {
    const char* p = s.c_str();
    char* end = nullptr;
    errno = 0;
    unsigned long long x = std::strtoull(p, &end, 10);
    if (s.empty() || *end || end == p || !std::isdigit((unsigned char)s[0]) || errno == ERANGE)
        fail("{}: '{}' is not an unsigned integer in [0, 18446744073709551615]; fix the value",
             what, s);
    return x;
}

double parse_num(const std::string& s, const std::string& what, const Range& r) {
    std::string e = check_num_text(s, r);
    if (!e.empty()) fail("{}: {}; give a value in that range", what, e);
    return std::strtod(s.c_str(), nullptr);
}

bool parse_bool(const std::string& s, const std::string& what) {
    if (s == "true" || s == "1") return true;
    if (s == "false" || s == "0") return false;
    fail("{}: '{}' is not a boolean; give true or false", what, s);
}

nlohmann::json parse_json_text(const std::string& text, const std::string& where,
                               const char* what) {
    try {
        return json::parse(text, nullptr, true, /*ignore_comments=*/true);
    } catch (const json::parse_error& e) {
        fail("{}: not valid JSON (at byte {}); expected {}", where, e.byte, what);
    } catch (const json::exception&) {
        // A number no double holds (1e400): name its key when one precedes it.
        static const std::regex big("\"([^\"]{1,100})\"\\s*:\\s*-?[0-9.]+[eE]\\+?0*[0-9]{3,}");
        std::smatch m;
        std::string key;
        if (std::regex_search(text, m, big)) key = "key '" + m[1].str() + "': ";
        fail("{}: {}a number too large for a double (like 1e400); fix the value ({})", where, key,
             what);
    }
}

int64_t first_non_finite(const float* x, size_t n) {
    // One pass, branch-free inner accumulation: x - x is NaN exactly for NaN and +-Inf.
    const size_t kBlock = 4096;
    for (size_t b = 0; b < n; b += kBlock) {
        size_t e = std::min(n, b + kBlock);
        float acc = 0.f;
        for (size_t i = b; i < e; i++) acc += x[i] - x[i];
        if (acc != 0.f || std::isnan(acc))
            for (size_t i = b; i < e; i++)
                if (!std::isfinite(x[i])) return (int64_t)i;
    }
    return -1;
}

}  // namespace moe
