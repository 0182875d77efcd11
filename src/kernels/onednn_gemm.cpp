#include "kernels/onednn_gemm.h"

#ifdef MOE_WITH_ONEDNN
#include <cstring>
#include <dnnl.hpp>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace moe {

bool onednn_built() { return true; }

bool onednn_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    return dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb,
                      beta, C, ldc) == dnnl_success;
}

namespace {

struct Ctx {
    dnnl::engine eng{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream{eng};
};
Ctx& ctx() {
    static Ctx c;
    return c;
}

using Key = std::tuple<bool, bool, int, int, int, int, int, int>;
struct Prim {
    dnnl::matmul mm;
    dnnl::memory::desc a, b, c, scratch;
};

dnnl::memory::desc mat_desc(int rows, int cols, bool col_major, int ld, dnnl::memory::data_type t) {
    // rows x cols stored row-major with row stride ld, or (col_major) column-major with stride ld.
    dnnl::memory::dims strides = col_major ? dnnl::memory::dims{1, ld} : dnnl::memory::dims{ld, 1};
    return dnnl::memory::desc({rows, cols}, t, strides);
}

// Builds the matmul for one shape; throws dnnl::error when oneDNN has no implementation.
Prim make_prim(const Key& k) {
    auto [ta, tb, M, N, K, lda, ldb, ldc] = k;
    using dt = dnnl::memory::data_type;
    Prim p;
    p.a = mat_desc(M, K, ta, lda, dt::bf16);
    p.b = mat_desc(K, N, tb, ldb, dt::bf16);
    p.c = mat_desc(M, N, false, ldc, dt::f32);
    // The scratchpad is ours (one per thread, below): with the library's, concurrent executions
    // shared one buffer (Debian's oneDNN is built without DNNL_ENABLE_CONCURRENT_EXEC), and bf16
    // products run from several OpenMP threads at once returned garbage on an AVX-512 BF16 CPU
    // (test GemmEngine.Bf16CorrectInsideParallelRegion; AVX2-only CPUs never reach this path).
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(p.a, p.b, p.c), attr, ctx().eng);
    p.scratch = pd.scratchpad_desc();
    p.mm = dnnl::matmul(pd);
    return p;
}

}  // namespace

bool onednn_bf16_available() {
    static const bool ok = [] {
        try {
            using dt = dnnl::memory::data_type;
            dnnl::memory::desc a = mat_desc(64, 64, false, 64, dt::bf16);
            dnnl::memory::desc c = mat_desc(64, 64, false, 64, dt::f32);
            dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, a, c), ctx().eng);
            // A reference implementation is correct but ~100x slower than fp32 OpenBLAS: no use.
            return std::strncmp(pd.impl_info_str(), "ref", 3) != 0;
        } catch (const dnnl::error&) {
            return false;
        }
    }();
    return ok;
}

bool onednn_gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, const uint16_t* A, int lda,
                      const uint16_t* B, int ldb, float* C, int ldc) {
    if (!onednn_bf16_available()) return false;
    static std::mutex mu;
    static std::map<Key, Prim> cache;
    const Key key{trans_a, trans_b, M, N, K, lda, ldb, ldc};
    Prim p;
    {
        std::lock_guard<std::mutex> lock(mu);
        auto it = cache.find(key);
        if (it == cache.end()) {
            try {
                it = cache.emplace(key, make_prim(key)).first;
            } catch (const dnnl::error&) {
                return false;
            }
        }
        p = it->second;
    }
    dnnl::memory am(p.a, ctx().eng, const_cast<uint16_t*>(A));
    dnnl::memory bm(p.b, ctx().eng, const_cast<uint16_t*>(B));
    dnnl::memory cm(p.c, ctx().eng, C);
    static thread_local std::vector<uint8_t> scratch;
    if (scratch.size() < p.scratch.get_size()) scratch.resize(p.scratch.get_size());
    dnnl::memory sm(p.scratch, ctx().eng, scratch.data());
    // A stream per call: calls come from several OpenMP threads at once (experts in parallel).
    dnnl::stream s(ctx().eng);
    p.mm.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm},
                     {DNNL_ARG_SCRATCHPAD, sm}});
    s.wait();
    return true;
}

}  // namespace moe

#else  // built without oneDNN

namespace moe {
bool onednn_built() { return false; }
bool onednn_sgemm(bool, bool, int, int, int, float, const float*, int, const float*, int, float,
                  float*, int) {
    return false;
}
bool onednn_bf16_available() { return false; }
bool onednn_gemm_bf16(bool, bool, int, int, int, const uint16_t*, int, const uint16_t*, int, float*,
                      int) {
    return false;
}
}  // namespace moe

#endif
