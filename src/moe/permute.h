// Permutation (DESIGN.md §4 steps 4 and 6): kept assignments are counting-sorted by expert into
// one buffer, rows [offsets[e], offsets[e+1]) belonging to expert e (stable: within an expert,
// rows follow assignment order, i.e. token order for token-choice routing), so each expert runs
// one GEMM chain on contiguous rows. Combine and the scatter-add of dx walk each token's rows in
// assignment order (slot order): a fixed summation order, so results are bit-identical for any
// thread count.
#pragma once
#include <cstdint>
#include <vector>

namespace moe {

struct Routing;

struct Dispatch {
    int T = 0, E = 0, n_assign = 0, n_rows = 0;
    std::vector<int32_t> offsets;     // [E+1]
    std::vector<int32_t> row_token;   // [n_rows] token of each permuted row
    std::vector<int32_t> row_assign;  // [n_rows] assignment index of each row
    std::vector<int32_t> tok_off;     // [T+1] token t's rows: tok_rows[tok_off[t] .. tok_off[t+1])
    std::vector<int32_t> tok_rows;    // [n_rows] rows, in assignment order within a token
};

// kept[a] != 0 selects assignment a (kept == nullptr: every assignment with expert >= 0).
void build_dispatch(const Routing& r, const uint8_t* kept, Dispatch& out);
void build_dispatch_ref(const Routing& r, const uint8_t* kept, Dispatch& out);  // stable_sort

// x [T,d] -> xp [n_rows,d]: xp[i] = x[row_token[i]].
void gather_rows(const Dispatch& p, const float* x, int d, float* xp);
void gather_rows_ref(const Dispatch& p, const float* x, int d, float* xp);

// y [T,d] = sum over token t's rows i (assignment order) of weight[row_assign[i]] * out[i];
// 0 for a token without rows. y is overwritten.
void combine_forward(const Dispatch& p, const float* weight, const float* out, int d, float* y);
void combine_forward_ref(const Dispatch& p, const float* weight, const float* out, int d, float* y);

// Backward of combine for dy [T,d]: dout[i] = weight[a] * dy[t]; dweight[a] = <dy[t], out[i]>
// for kept a, 0 for every other assignment (dweight has n_assign entries, overwritten).
void combine_backward(const Dispatch& p, const float* weight, const float* out, const float* dy,
                      int d, float* dout, float* dweight);
void combine_backward_ref(const Dispatch& p, const float* weight, const float* out,
                          const float* dy, int d, float* dout, float* dweight);

// dx [T,d] = (accumulate ? dx : 0) + sum over token t's rows i (assignment order) of dxp[i].
void scatter_rows(const Dispatch& p, const float* dxp, int d, float* dx, bool accumulate);
void scatter_rows_ref(const Dispatch& p, const float* dxp, int d, float* dx, bool accumulate);

}  // namespace moe
