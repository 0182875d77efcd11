// Dispatch (counting sort by expert), gather, combine and scatter against their references, on
// token-choice and expert-choice routings with odd sizes.
#include "moe/permute.h"

#include "moe/router.h"
#include "test_util.h"

using namespace moe;

namespace {

// Token choice: T*k slots, some unused (-1) and some dropped by `kept`. Expert choice (k = 0):
// for each expert, up to C distinct tokens.
Routing random_routing(int T, int E, int k, uint64_t seed) {
    Rng rng(seed);
    Routing r;
    r.T = T;
    r.E = E;
    r.k = k;
    if (k > 0) {
        for (int t = 0; t < T; t++)
            for (int j = 0; j < k; j++) {
                r.token.push_back(t);
                r.expert.push_back(rng.below(8) == 0 ? -1 : (int)rng.below(E));
                r.weight.push_back(rng.uniform());
            }
    } else {
        int C = std::max(1, T / 2);
        for (int e = 0; e < E; e++) {
            std::vector<int> toks(T);
            for (int t = 0; t < T; t++) toks[t] = t;
            for (int c = 0; c < C; c++) {
                int i = c + (int)rng.below(T - c);
                std::swap(toks[c], toks[i]);
                r.token.push_back(toks[c]);
                r.expert.push_back(e);
                r.weight.push_back(rng.uniform());
            }
        }
    }
    return r;
}

void expect_same(const Dispatch& a, const Dispatch& b) {
    EXPECT_EQ(a.n_rows, b.n_rows);
    EXPECT_EQ(a.offsets, b.offsets);
    EXPECT_EQ(a.row_token, b.row_token);
    EXPECT_EQ(a.row_assign, b.row_assign);
    EXPECT_EQ(a.tok_off, b.tok_off);
    EXPECT_EQ(a.tok_rows, b.tok_rows);
}

}  // namespace

TEST(Permute, FastMatchesReference) {
    const int shapes[][4] = {// T, E, k, d
                             {1, 1, 1, 1},  {1, 3, 3, 3},  {5, 1, 1, 7},   {7, 4, 2, 3},
                             {33, 8, 2, 17}, {64, 7, 0, 9}, {100, 64, 8, 33}, {1, 5, 0, 4},
                             {300, 8, 2, 64}};
    int seed = 1;
    for (auto& s : shapes) {
        int T = s[0], E = s[1], k = s[2], d = s[3];
        Routing r = random_routing(T, E, k, seed++);
        std::vector<uint8_t> kept(r.n());
        Rng rng(seed++);
        for (auto& v : kept) v = rng.below(5) != 0;
        for (const uint8_t* km : {(const uint8_t*)nullptr, (const uint8_t*)kept.data()}) {
            Dispatch p, q;
            build_dispatch(r, km, p);
            build_dispatch_ref(r, km, q);
            SCOPED_TRACE("T=" + std::to_string(T) + " E=" + std::to_string(E) +
                         " k=" + std::to_string(k) + " d=" + std::to_string(d));
            expect_same(p, q);
            // Every row belongs to its expert's range.
            for (int e = 0; e < E; e++)
                for (int i = p.offsets[e]; i < p.offsets[e + 1]; i++)
                    EXPECT_EQ(r.expert[p.row_assign[i]], e);

            auto x = test::randn((size_t)T * d, seed++);
            std::vector<float> xp0(p.n_rows * d), xp1(p.n_rows * d);
            gather_rows(p, x.data(), d, xp0.data());
            gather_rows_ref(p, x.data(), d, xp1.data());
            EXPECT_TRUE(test::all_close(xp0, xp1, 0, 0));

            auto out = test::randn((size_t)p.n_rows * d, seed++);
            std::vector<float> y0(T * d, NAN), y1(T * d, NAN);
            combine_forward(p, r.weight.data(), out.data(), d, y0.data());
            combine_forward_ref(p, r.weight.data(), out.data(), d, y1.data());
            EXPECT_TRUE(test::all_close(y0, y1, 1e-6, 1e-6));

            auto dy = test::randn((size_t)T * d, seed++);
            std::vector<float> do0(p.n_rows * d), do1(p.n_rows * d), dw0(r.n(), NAN),
                dw1(r.n(), NAN);
            combine_backward(p, r.weight.data(), out.data(), dy.data(), d, do0.data(), dw0.data());
            combine_backward_ref(p, r.weight.data(), out.data(), dy.data(), d, do1.data(),
                                 dw1.data());
            EXPECT_TRUE(test::all_close(do0, do1, 0, 0));
            EXPECT_TRUE(test::all_close(dw0, dw1, 1e-5, 1e-5));

            for (bool acc : {false, true}) {
                auto dx0 = test::randn((size_t)T * d, seed++);
                auto dx1 = dx0;
                scatter_rows(p, out.data(), d, dx0.data(), acc);
                scatter_rows_ref(p, out.data(), d, dx1.data(), acc);
                EXPECT_TRUE(test::all_close(dx0, dx1, 1e-6, 1e-6));
            }
        }
    }
}

// combine is the weighted sum over each token's kept slots, in slot order; tokens with no kept
// slot get 0 (their residual carries them).
TEST(Permute, CombineByHand) {
    Routing r;
    r.T = 3;
    r.E = 2;
    r.k = 2;
    r.token = {0, 0, 1, 1, 2, 2};
    r.expert = {1, 0, 0, -1, 1, 0};
    r.weight = {0.25f, 0.75f, 1.f, 0.f, 0.5f, 0.5f};
    std::vector<uint8_t> kept = {1, 1, 1, 0, 0, 0};
    Dispatch p;
    build_dispatch(r, kept.data(), p);
    EXPECT_EQ(p.offsets, (std::vector<int32_t>{0, 2, 3}));
    EXPECT_EQ(p.row_token, (std::vector<int32_t>{0, 1, 0}));  // e0: t0, t1; e1: t0
    const int d = 1;
    std::vector<float> x = {2.f, 3.f, 4.f}, xp(3), out(3), y(3);
    gather_rows(p, x.data(), d, xp.data());
    EXPECT_EQ(xp, (std::vector<float>{2.f, 3.f, 2.f}));
    out = {10.f, 20.f, 40.f};  // e0(t0) = 10, e0(t1) = 20, e1(t0) = 40
    combine_forward(p, r.weight.data(), out.data(), d, y.data());
    EXPECT_FLOAT_EQ(y[0], 0.25f * 40.f + 0.75f * 10.f);
    EXPECT_FLOAT_EQ(y[1], 20.f);
    EXPECT_EQ(y[2], 0.f);
    std::vector<float> dy = {1.f, 2.f, 3.f}, dout(3), dw(6);
    combine_backward(p, r.weight.data(), out.data(), dy.data(), d, dout.data(), dw.data());
    EXPECT_EQ(dw, (std::vector<float>{40.f, 10.f, 40.f, 0.f, 0.f, 0.f}));
    EXPECT_EQ(dout, (std::vector<float>{0.75f, 2.f, 0.25f}));
}
