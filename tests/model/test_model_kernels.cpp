// The model's kernels (RMSNorm, RoPE, attention, cross-entropy, embedding): the fast version
// against the plain `_ref` on random odd shapes, and every `_ref` backward against central
// differences in double.
#include <functional>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "moe/error.h"
#include "test_util.h"

using namespace moe;

namespace {

std::vector<double> to_d(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Central differences of a double-valued loss over every entry of x (x is restored), compared
// with the analytic gradient g.
::testing::AssertionResult check_fd(std::vector<double>& x, const std::vector<double>& g,
                                    const std::function<double()>& loss, double eps = 1e-6,
                                    double tol = 1e-6) {
    int bad = 0;
    std::string msg;
    for (size_t i = 0; i < x.size(); i++) {
        double x0 = x[i];
        x[i] = x0 + eps;
        double lp = loss();
        x[i] = x0 - eps;
        double lm = loss();
        x[i] = x0;
        double fd = (lp - lm) / (2 * eps);
        if (std::fabs(fd - g[i]) > tol * (1 + std::fabs(fd))) {
            if (bad++ < 5)
                msg += "  [" + std::to_string(i) + "] analytic " + std::to_string(g[i]) + " fd " +
                       std::to_string(fd) + "\n";
        }
    }
    if (!bad) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << bad << " of " << x.size() << " differ\n" << msg;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

}  // namespace

TEST(RmsNorm, FastMatchesRef) {
    const int shapes[][2] = {{1, 1}, {3, 7}, {33, 65}, {70, 128}, {5, 4097}};
    uint64_t seed = 1;
    for (auto& s : shapes) {
        int T = s[0], d = s[1];
        auto x = test::randn((size_t)T * d, seed++), w = test::randn(d, seed++);
        auto dy = test::randn((size_t)T * d, seed++);
        std::vector<float> y0(T * d), y1(T * d), r0(T), r1(T);
        rmsnorm_forward(y0.data(), r0.data(), x.data(), w.data(), T, d, 1e-5f);
        rmsnorm_forward_ref(y1.data(), r1.data(), x.data(), w.data(), T, d, 1e-5f);
        EXPECT_TRUE(test::all_close(y0, y1, 1e-5, 1e-6)) << T << "x" << d;
        EXPECT_TRUE(test::all_close(r0, r1, 1e-5, 1e-6));
        // backward accumulates: start from non-zero dx, dw
        auto dx0 = test::randn((size_t)T * d, seed++), dw0 = test::randn(d, seed++);
        auto dx1 = dx0, dw1 = dw0;
        rmsnorm_backward(dx0.data(), dw0.data(), dy.data(), x.data(), w.data(), r1.data(), T, d);
        rmsnorm_backward_ref(dx1.data(), dw1.data(), dy.data(), x.data(), w.data(), r1.data(), T, d);
        EXPECT_TRUE(test::all_close(dx0, dx1, 1e-4, 1e-5)) << T << "x" << d;
        EXPECT_TRUE(test::all_close(dw0, dw1, 1e-4, 1e-4 * std::sqrt((double)T)));
    }
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
    int T = 3, d = 7;
    auto x = to_d(test::randn(T * d, 11)), w = to_d(test::randn(d, 12)),
         R = to_d(test::randn(T * d, 13));
    std::vector<double> y(T * d), r(T);
    auto loss = [&] {
        rmsnorm_forward_ref(y.data(), r.data(), x.data(), w.data(), T, d, 1e-5);
        return dot(y, R);
    };
    loss();
    std::vector<double> dx(T * d, 0.0), dw(d, 0.0);
    rmsnorm_backward_ref(dx.data(), dw.data(), R.data(), x.data(), w.data(), r.data(), T, d);
    EXPECT_TRUE(check_fd(x, dx, loss));
    EXPECT_TRUE(check_fd(w, dw, loss));
}

TEST(Rope, FastMatchesRefAndIsHfRotateHalf) {
    const int shapes[][4] = {{1, 1, 1, 2}, {2, 7, 3, 4}, {3, 33, 5, 32}, {1, 65, 2, 6}};
    uint64_t seed = 100;
    for (auto& s : shapes) {
        int B = s[0], S = s[1], nh = s[2], hd = s[3], ld = nh * hd + 3, pos0 = 2;
        int npos = pos0 + S;
        std::vector<float> ct((size_t)npos * hd / 2), st((size_t)npos * hd / 2);
        rope_tables(ct.data(), st.data(), npos, hd, 10000.f);
        auto x = test::randn((size_t)B * S * ld, seed++);
        auto y0 = x, y1 = x;
        rope_forward(y0.data(), B, S, ld, nh, hd, pos0, ct.data(), st.data());
        rope_forward_ref(y1.data(), B, S, ld, nh, hd, pos0, 10000.f);
        EXPECT_TRUE(test::all_close(y0, y1, 1e-5, 1e-5));
        // padding columns untouched
        for (long r = 0; r < (long)B * S; r++)
            for (int c = nh * hd; c < ld; c++) ASSERT_EQ(y0[r * ld + c], x[r * ld + c]);
        rope_backward(y0.data(), B, S, ld, nh, hd, pos0, ct.data(), st.data());
        rope_backward_ref(y1.data(), B, S, ld, nh, hd, pos0, 10000.f);
        EXPECT_TRUE(test::all_close(y0, x, 1e-5, 1e-5)) << "backward inverts forward";
        EXPECT_TRUE(test::all_close(y1, x, 1e-5, 1e-5));
    }
    // One value by hand: hd = 4, position 3, pair i = 1: angle 3 * 10000^(-2/4) = 0.03.
    std::vector<float> v = {1.f, 2.f, 3.f, 4.f};
    rope_forward_ref(v.data(), 1, 1, 4, 1, 4, 3, 10000.f);
    EXPECT_NEAR(v[1], 2.f * std::cos(0.03) - 4.f * std::sin(0.03), 1e-6);
    EXPECT_NEAR(v[3], 4.f * std::cos(0.03) + 2.f * std::sin(0.03), 1e-6);
    EXPECT_NEAR(v[0], 1.f * std::cos(3.0) - 3.f * std::sin(3.0), 1e-6);
}

TEST(Rope, BackwardMatchesFiniteDifferences) {
    int B = 2, S = 5, nh = 2, hd = 6, ld = 12;
    auto x = to_d(test::randn(B * S * ld, 21)), R = to_d(test::randn(B * S * ld, 22));
    auto loss = [&] {
        auto y = x;
        rope_forward_ref(y.data(), B, S, ld, nh, hd, 1, 500.f);
        return dot(y, R);
    };
    auto g = R;
    rope_backward_ref(g.data(), B, S, ld, nh, hd, 1, 500.f);
    EXPECT_TRUE(check_fd(x, g, loss));
}

namespace {
struct AttnCase {
    AttnDims a;
    int ldq, ldk, ldv, ldy;
};
// q, k, v in one [rows, ld] buffer like the model's qkv; queries and keys may have different
// row counts (KV cache: Sq new rows attend to Sk cached rows).
AttnCase make_case(int B, int Sq, int Sk, int H, int Hkv, int hd, int pos0) {
    AttnCase c;
    c.a = AttnDims{B, Sq, Sk, H, Hkv, hd, pos0};
    c.ldq = H * hd + 1;
    c.ldk = Hkv * hd + 2;
    c.ldv = Hkv * hd;
    c.ldy = H * hd + 3;
    return c;
}
}  // namespace

TEST(Attention, FastMatchesRef) {
    // {B, Sq, Sk, H, Hkv, hd, pos0}
    const int cases[][7] = {{1, 1, 1, 1, 1, 2, 0},  {2, 7, 7, 4, 2, 8, 0},
                            {3, 33, 33, 3, 1, 6, 0}, {1, 5, 12, 4, 4, 4, 7},
                            {1, 1, 64, 4, 2, 32, 63}, {12, 64, 64, 4, 4, 32, 0},
                            {2, 33, 33, 2, 1, 16, 0}, {1, 5, 21, 2, 2, 16, 16},
                            {1, 17, 17, 2, 1, 64, 0}, {1, 3, 3, 1, 1, 128, 0}};
    uint64_t seed = 200;
    for (auto& cs : cases) {
        AttnCase c = make_case(cs[0], cs[1], cs[2], cs[3], cs[4], cs[5], cs[6]);
        const AttnDims& a = c.a;
        auto q = test::randn((size_t)a.B * a.Sq * c.ldq, seed++);
        auto k = test::randn((size_t)a.B * a.Sk * c.ldk, seed++);
        auto v = test::randn((size_t)a.B * a.Sk * c.ldv, seed++);
        auto dy = test::randn((size_t)a.B * a.Sq * c.ldy, seed++);
        size_t natt = (size_t)a.B * a.H * a.Sq * a.Sk;
        std::vector<float> y0(a.B * a.Sq * c.ldy, 0.f), y1 = y0, p0(natt), p1(natt);
        attention_forward(y0.data(), c.ldy, p0.data(), q.data(), c.ldq, k.data(), c.ldk, v.data(),
                          c.ldv, a);
        attention_forward_ref(y1.data(), c.ldy, p1.data(), q.data(), c.ldq, k.data(), c.ldk,
                              v.data(), c.ldv, a);
        std::string what = "B=" + std::to_string(a.B) + " Sq=" + std::to_string(a.Sq) +
                           " Sk=" + std::to_string(a.Sk) + " H=" + std::to_string(a.H) +
                           " Hkv=" + std::to_string(a.Hkv);
        EXPECT_TRUE(test::all_close(y0, y1, 1e-4, 1e-5)) << what;
        EXPECT_TRUE(test::all_close(p0, p1, 1e-4, 1e-6)) << what;
        std::vector<float> dq0(q.size(), 7.f), dk0(k.size(), 7.f), dv0(v.size(), 7.f);
        auto dq1 = dq0, dk1 = dk0, dv1 = dv0;
        attention_backward(dq0.data(), dk0.data(), dv0.data(), dy.data(), c.ldy, p1.data(),
                           q.data(), c.ldq, k.data(), c.ldk, v.data(), c.ldv, a);
        attention_backward_ref(dq1.data(), dk1.data(), dv1.data(), dy.data(), c.ldy, p1.data(),
                               q.data(), c.ldq, k.data(), c.ldk, v.data(), c.ldv, a);
        // compare only the head columns (padding columns belong to the caller)
        auto cols = [](const std::vector<float>& x, int ld, int w) {
            std::vector<float> r;
            for (size_t i = 0; i < x.size(); i++)
                if ((int)(i % ld) < w) r.push_back(x[i]);
            return r;
        };
        EXPECT_TRUE(test::all_close(cols(dq0, c.ldq, a.H * a.hd), cols(dq1, c.ldq, a.H * a.hd),
                                    1e-4, 1e-5)) << what;
        EXPECT_TRUE(test::all_close(cols(dk0, c.ldk, a.Hkv * a.hd),
                                    cols(dk1, c.ldk, a.Hkv * a.hd), 1e-4, 1e-5)) << what;
        EXPECT_TRUE(test::all_close(cols(dv0, c.ldv, a.Hkv * a.hd),
                                    cols(dv1, c.ldv, a.Hkv * a.hd), 1e-4, 1e-5)) << what;
    }
}

TEST(Attention, BackwardMatchesFiniteDifferences) {
    // grouped-query (4 heads on 2 kv heads) and a cache-shaped case (queries after pos0)
    const int cases[][7] = {{2, 5, 5, 4, 2, 4, 0}, {1, 3, 6, 2, 1, 4, 3}};
    uint64_t seed = 300;
    for (auto& cs : cases) {
        AttnCase c = make_case(cs[0], cs[1], cs[2], cs[3], cs[4], cs[5], cs[6]);
        const AttnDims& a = c.a;
        auto q = to_d(test::randn((size_t)a.B * a.Sq * c.ldq, seed++));
        auto k = to_d(test::randn((size_t)a.B * a.Sk * c.ldk, seed++));
        auto v = to_d(test::randn((size_t)a.B * a.Sk * c.ldv, seed++));
        auto R = to_d(test::randn((size_t)a.B * a.Sq * c.ldy, seed++));
        std::vector<double> y(R.size(), 0.0), p((size_t)a.B * a.H * a.Sq * a.Sk);
        auto loss = [&] {
            attention_forward_ref(y.data(), c.ldy, p.data(), q.data(), c.ldq, k.data(), c.ldk,
                                  v.data(), c.ldv, a);
            return dot(y, R);
        };
        loss();
        std::vector<double> dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
        attention_backward_ref(dq.data(), dk.data(), dv.data(), R.data(), c.ldy, p.data(),
                               q.data(), c.ldq, k.data(), c.ldk, v.data(), c.ldv, a);
        // padding columns are not inputs: the analytic gradient leaves them, FD gives 0
        auto zero_pad = [](std::vector<double>& g, int ld, int w) {
            for (size_t i = 0; i < g.size(); i++)
                if ((int)(i % ld) >= w) g[i] = 0;
        };
        zero_pad(dq, c.ldq, a.H * a.hd);
        zero_pad(dk, c.ldk, a.Hkv * a.hd);
        zero_pad(dv, c.ldv, a.Hkv * a.hd);
        EXPECT_TRUE(check_fd(q, dq, loss));
        EXPECT_TRUE(check_fd(k, dk, loss));
        EXPECT_TRUE(check_fd(v, dv, loss));
    }
}

TEST(Attention, RejectsBadDims) {
    std::vector<float> buf(1024);
    AttnDims a{1, 4, 4, 3, 2, 4, 0};  // 2 does not divide 3
    EXPECT_THROW(attention_forward(buf.data(), 12, buf.data(), buf.data(), 12, buf.data(), 8,
                                   buf.data(), 8, a),
                 Error);
    AttnDims b{1, 4, 3, 2, 2, 4, 0};  // Sk too short for the queries
    EXPECT_THROW(attention_forward(buf.data(), 8, buf.data(), buf.data(), 8, buf.data(), 8,
                                   buf.data(), 8, b),
                 Error);
}

TEST(CrossEntropy, FastMatchesRef) {
    const int shapes[][2] = {{1, 1}, {3, 7}, {33, 65}, {768, 65}, {4, 4097}};
    uint64_t seed = 400;
    for (auto& s : shapes) {
        int T = s[0], V = s[1];
        auto logits = test::randn((size_t)T * V, seed++, 3.f);
        std::vector<int32_t> tg(T);
        Rng r(seed++);
        for (auto& t : tg) t = (int32_t)r.below(V);
        std::vector<float> l0(T), l1(T), d0(T * V), d1(T * V);
        double a = cross_entropy_forward(l0.data(), logits.data(), tg.data(), T, V);
        double b = cross_entropy_forward_ref(l1.data(), logits.data(), tg.data(), T, V);
        EXPECT_NEAR(a, b, 1e-5 * (1 + std::fabs(b))) << T << "x" << V;
        EXPECT_TRUE(test::all_close(l0, l1, 1e-5, 1e-5));
        cross_entropy_backward(d0.data(), logits.data(), l1.data(), tg.data(), T, V, 0.5f);
        cross_entropy_backward_ref(d1.data(), logits.data(), l1.data(), tg.data(), T, V, 0.5f);
        EXPECT_TRUE(test::all_close(d0, d1, 1e-4, 1e-7)) << T << "x" << V;
    }
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferencesAndRejectsBadTargets) {
    int T = 4, V = 9;
    auto x = to_d(test::randn(T * V, 41, 2.f));
    std::vector<int32_t> tg = {0, 8, 3, 3};
    std::vector<double> lse(T), g(T * V);
    auto loss = [&] { return cross_entropy_forward_ref(lse.data(), x.data(), tg.data(), T, V); };
    loss();
    cross_entropy_backward_ref(g.data(), x.data(), lse.data(), tg.data(), T, V, 1.0);
    EXPECT_TRUE(check_fd(x, g, loss));
    std::vector<float> lf(T), xf(x.begin(), x.end());
    tg[2] = 9;
    EXPECT_THROW(cross_entropy_forward(lf.data(), xf.data(), tg.data(), T, V), Error);
    tg[2] = -1;
    EXPECT_THROW(cross_entropy_forward(lf.data(), xf.data(), tg.data(), T, V), Error);
}

TEST(Embedding, FastMatchesRefWithRepeatedTokens) {
    int V = 7, d = 33, T = 20;
    auto wte = test::randn(V * d, 51);
    std::vector<int32_t> tok(T);
    for (int t = 0; t < T; t++) tok[t] = (t * 5) % V;  // every token repeats
    std::vector<float> x0(T * d), x1(T * d);
    embedding_forward(x0.data(), tok.data(), wte.data(), T, d, V);
    embedding_forward_ref(x1.data(), tok.data(), wte.data(), T, d, V);
    EXPECT_EQ(x0, x1);
    auto dx = test::randn(T * d, 52);
    auto g0 = test::randn(V * d, 53), g1 = g0;
    embedding_backward(g0.data(), dx.data(), tok.data(), T, d);
    embedding_backward_ref(g1.data(), dx.data(), tok.data(), T, d);
    EXPECT_TRUE(test::all_close(g0, g1, 1e-6, 1e-6));
    // FD in double: loss = sum_t x_t . R_t is linear in wte
    auto w = to_d(wte), R = to_d(dx);
    std::vector<double> xd(T * d), gd(V * d, 0.0);
    auto loss = [&] {
        embedding_forward_ref(xd.data(), tok.data(), w.data(), T, d, V);
        return dot(xd, R);
    };
    embedding_backward_ref(gd.data(), R.data(), tok.data(), T, d);
    EXPECT_TRUE(check_fd(w, gd, loss));
    tok[3] = V;
    EXPECT_THROW(embedding_forward(x0.data(), tok.data(), wte.data(), T, d, V), Error);
}
