// Shared helpers for tests: random buffers and a comparison that prints index and both values.
#pragma once
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "moe/rng.h"

namespace moe::test {

inline std::vector<float> randn(size_t n, uint64_t seed, float std = 1.f) {
    Rng r(seed);
    std::vector<float> v(n);
    r.fill_normal(v.data(), (int64_t)n, 0.f, std);
    return v;
}

// |a - b| <= atol + rtol * |b| elementwise; reports the first few failures with their index.
inline ::testing::AssertionResult all_close(const float* a, const float* b, size_t n, double rtol,
                                            double atol) {
    int bad = 0;
    std::string msg;
    for (size_t i = 0; i < n; i++) {
        double d = std::fabs((double)a[i] - (double)b[i]);
        if (!(d <= atol + rtol * std::fabs((double)b[i]))) {
            if (bad < 5)
                msg += "  [" + std::to_string(i) + "] got " + std::to_string(a[i]) + " want " +
                       std::to_string(b[i]) + "\n";
            bad++;
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << bad << " of " << n << " values differ:\n" << msg;
}

inline ::testing::AssertionResult all_close(const std::vector<float>& a,
                                            const std::vector<float>& b, double rtol,
                                            double atol) {
    if (a.size() != b.size())
        return ::testing::AssertionFailure() << "sizes " << a.size() << " vs " << b.size();
    return all_close(a.data(), b.data(), a.size(), rtol, atol);
}

inline std::string source_dir() {
    const char* s = getenv("MOE_SOURCE_DIR");
    return s ? s : MOE_SOURCE_DIR;
}

inline std::string moe_bin() {
    const char* s = getenv("MOE_BIN");
    return s ? s : "";
}

// Runs `moe ARGS` (stderr joined to stdout); rc -1 when it did not exit normally (a crash).
struct MoeRun {
    int rc;
    std::string out;
};
inline MoeRun run_moe_cmd(const std::string& args) {
    std::string cmd = moe_bin() + " " + args + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    MoeRun r{-1, ""};
    if (!p) return r;
    char buf[4096];
    while (fgets(buf, sizeof buf, p)) r.out += buf;
    int st = pclose(p);
    r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

}  // namespace moe::test
