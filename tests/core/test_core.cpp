#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "moe/file_io.h"
#include "moe/rng.h"
#include "moe/runtime.h"
#include "moe/safetensors.h"
#include "moe/tensor.h"
#include "test_util.h"

using namespace moe;

TEST(Rng, SameSeedSameStream) {
    Rng a(42), b(42), c(43);
    for (int i = 0; i < 100; i++) {
        uint64_t x = a.next_u64();
        EXPECT_EQ(x, b.next_u64());
        (void)c;
    }
    EXPECT_NE(Rng(42).next_u64(), Rng(43).next_u64());
}

// Moments of the samplers: with n = 200k draws the standard error of the mean is ~0.0022 for
// N(0,1), so 0.01 is ~4.5 sigma; U(0,1) mean 1/2, variance 1/12.
TEST(Rng, SamplerMoments) {
    Rng r(7);
    const int n = 200000;
    double s = 0, s2 = 0, u = 0, u2 = 0;
    int below_m1 = 0;
    for (int i = 0; i < n; i++) {
        double x = r.normal();
        s += x;
        s2 += x * x;
        below_m1 += x < -1.0;
        double v = r.uniform();
        ASSERT_GE(v, 0.0);
        ASSERT_LT(v, 1.0);
        u += v;
        u2 += v * v;
    }
    EXPECT_NEAR(s / n, 0.0, 0.01);
    EXPECT_NEAR(s2 / n, 1.0, 0.02);
    EXPECT_NEAR((double)below_m1 / n, 0.158655, 0.004);  // Phi(-1)
    EXPECT_NEAR(u / n, 0.5, 0.003);
    EXPECT_NEAR(u2 / n - 0.25, 1.0 / 12, 0.002);
}

TEST(Tensor, CheckShapeNamesBothShapes) {
    try {
        check_shape("x", Shape{3, 4}, Shape{3, 5});
        FAIL() << "no throw";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("expected shape [3, 5], got [3, 4]"),
                  std::string::npos)
            << e.what();
    }
}

static std::string tmp_path(const char* name) {
    return std::string("/tmp/moe_test_") + std::to_string(getpid()) + "_" + name;
}

TEST(Safetensors, RoundTrip) {
    SafetensorsWriter w;
    std::vector<float> a = {1.f, -2.5f, 3.25f, 0.f, 1e-8f, -7.f};
    std::vector<int64_t> b = {5, -1, 1LL << 40};
    w.add("a.weight", Shape{2, 3}, a.data());
    w.add_i64("counts", Shape{3}, b.data());
    w.set_metadata("format", "pt");
    std::string p = tmp_path("rt.safetensors");
    w.save(p);
    SafetensorsReader r(p);
    EXPECT_EQ(r.get("a.weight", Shape{2, 3}).data, a);
    EXPECT_EQ(r.get("a.weight").dtype, "F32");
    EXPECT_EQ(r.get("counts").data[1], -1.f);
    EXPECT_EQ(r.metadata().at("format"), "pt");
    EXPECT_THROW(r.get("missing"), Error);
    EXPECT_THROW(r.get("a.weight", Shape{3, 2}), Error);
    unlink(p.c_str());
}

TEST(Safetensors, RejectsMalformedFiles) {
    SafetensorsWriter w;
    std::vector<float> a(16, 1.f);
    w.add("x", Shape{4, 4}, a.data());
    std::string good = w.serialize();
    std::string p = tmp_path("bad.safetensors");
    auto expect_error = [&](const std::string& bytes, const char* what) {
        write_file_atomic(p, bytes);
        try {
            SafetensorsReader r(p);
            ADD_FAILURE() << "accepted: " << what;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
        }
    };
    expect_error(good.substr(0, good.size() - 4), "truncated data");
    expect_error(good.substr(0, 5), "shorter than the length prefix");
    std::string huge = good;
    uint64_t big = 1ull << 50;
    std::memcpy(&huge[0], &big, 8);
    expect_error(huge, "header length past the end");
    std::string notjson = good;
    notjson[8] = '#';
    expect_error(notjson, "header not JSON");
    unlink(p.c_str());
    EXPECT_THROW(SafetensorsReader("/nonexistent/file.safetensors"), Error);
}

TEST(FileIo, AtomicWriteReplacesWholeFile) {
    std::string p = tmp_path("atomic.txt");
    write_file_atomic(p, std::string("first version"));
    write_file_atomic(p, std::string("second"));
    EXPECT_EQ(read_file(p), "second");
    EXPECT_THROW(write_file_atomic("/nonexistent_dir/x.txt", std::string("x")), Error);
    unlink(p.c_str());
}

// runtime_init (called by the test main like by the moe binary) must leave OpenBLAS on its
// AVX-512 kernels when the CPU has them: Debian's 0.3.21 otherwise picks Haswell at half speed.
TEST(Runtime, BlasUsesAvx512KernelsWhenCpuHasThem) {
    const CpuFeatures& f = cpu_features();
    std::string info = blas_info();
    if (!(f.avx512f && f.avx512bw)) {
        SUCCEED() << "CPU without AVX-512: " << info;
        return;
    }
    EXPECT_NE(info.find("SkylakeX"), std::string::npos) << info;
}
