#include "moe/permute.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "moe/router.h"

namespace moe {

static void build_token_index(Dispatch& p) {
    // Rows of each token in assignment order: a counting sort by token, visiting rows in
    // assignment-index order. Row i holds assignment row_assign[i]; rows are ordered by expert,
    // so first invert to assignment order via a stamp per assignment.
    std::vector<int32_t> row_of(p.n_assign, -1);
    for (int i = 0; i < p.n_rows; i++) row_of[p.row_assign[i]] = i;
    p.tok_off.assign(p.T + 1, 0);
    for (int i = 0; i < p.n_rows; i++) p.tok_off[p.row_token[i] + 1]++;
    for (int t = 0; t < p.T; t++) p.tok_off[t + 1] += p.tok_off[t];
    p.tok_rows.resize(p.n_rows);
    std::vector<int32_t> fill(p.tok_off.begin(), p.tok_off.end() - 1);
    for (int a = 0; a < p.n_assign; a++) {
        int i = row_of[a];
        if (i >= 0) p.tok_rows[fill[p.row_token[i]]++] = i;
    }
}

void build_dispatch(const Routing& r, const uint8_t* kept, Dispatch& p) {
    const int n = r.n(), E = r.E;
    p.T = r.T;
    p.E = E;
    p.n_assign = n;
    p.offsets.assign(E + 1, 0);
    for (int a = 0; a < n; a++) {
        int e = r.expert[a];
        if (e >= 0 && (!kept || kept[a])) {
            MOE_CHECK(e < E, "assignment {} has expert {} >= E={}", a, e, E);
            p.offsets[e + 1]++;
        }
    }
    for (int e = 0; e < E; e++) p.offsets[e + 1] += p.offsets[e];
    p.n_rows = p.offsets[E];
    p.row_token.resize(p.n_rows);
    p.row_assign.resize(p.n_rows);
    std::vector<int32_t> fill(p.offsets.begin(), p.offsets.end() - 1);
    for (int a = 0; a < n; a++) {
        int e = r.expert[a];
        if (e >= 0 && (!kept || kept[a])) {
            int i = fill[e]++;
            p.row_token[i] = r.token[a];
            p.row_assign[i] = a;
        }
    }
    build_token_index(p);
}

void build_dispatch_ref(const Routing& r, const uint8_t* kept, Dispatch& p) {
    const int n = r.n(), E = r.E;
    p.T = r.T;
    p.E = E;
    p.n_assign = n;
    std::vector<int32_t> sel;
    for (int a = 0; a < n; a++)
        if (r.expert[a] >= 0 && (!kept || kept[a])) sel.push_back(a);
    std::stable_sort(sel.begin(), sel.end(),
                     [&](int32_t x, int32_t y) { return r.expert[x] < r.expert[y]; });
    p.n_rows = (int)sel.size();
    p.row_assign = sel;
    p.row_token.resize(p.n_rows);
    p.offsets.assign(E + 1, 0);
    for (int i = 0; i < p.n_rows; i++) {
        p.row_token[i] = r.token[sel[i]];
        p.offsets[r.expert[sel[i]] + 1]++;
    }
    for (int e = 0; e < E; e++) p.offsets[e + 1] += p.offsets[e];
    // Token index: for each token, its rows sorted by assignment index.
    p.tok_off.assign(p.T + 1, 0);
    p.tok_rows.clear();
    for (int t = 0; t < p.T; t++) {
        std::vector<std::pair<int, int>> mine;  // (assignment, row)
        for (int i = 0; i < p.n_rows; i++)
            if (p.row_token[i] == t) mine.push_back({p.row_assign[i], i});
        std::sort(mine.begin(), mine.end());
        for (auto& m : mine) p.tok_rows.push_back(m.second);
        p.tok_off[t + 1] = (int)p.tok_rows.size();
    }
}

// Row copies and per-token sums are independent: spread them over threads when there is enough
// work to pay for waking the pool (each call sits outside any parallel region).
static inline bool worth_threads(int64_t elems) { return elems >= (1 << 15); }

void gather_rows(const Dispatch& p, const float* x, int d, float* xp) {
#pragma omp parallel for schedule(static) if (worth_threads((int64_t)p.n_rows * d))
    for (int i = 0; i < p.n_rows; i++)
        std::memcpy(xp + (int64_t)i * d, x + (int64_t)p.row_token[i] * d, sizeof(float) * d);
}

void gather_rows_ref(const Dispatch& p, const float* x, int d, float* xp) {
    for (int i = 0; i < p.n_rows; i++)
        for (int j = 0; j < d; j++) xp[(int64_t)i * d + j] = x[(int64_t)p.row_token[i] * d + j];
}

void combine_forward(const Dispatch& p, const float* weight, const float* out, int d, float* y) {
#pragma omp parallel for schedule(static) if (worth_threads((int64_t)p.T * d))
    for (int t = 0; t < p.T; t++) {
        float* __restrict yt = y + (int64_t)t * d;
        int b = p.tok_off[t], e = p.tok_off[t + 1];
        if (b == e) {
            std::memset(yt, 0, sizeof(float) * d);
            continue;
        }
        {
            int i = p.tok_rows[b];
            const float w = weight[p.row_assign[i]];
            const float* __restrict o = out + (int64_t)i * d;
            for (int j = 0; j < d; j++) yt[j] = w * o[j];
        }
        for (int q = b + 1; q < e; q++) {
            int i = p.tok_rows[q];
            const float w = weight[p.row_assign[i]];
            const float* __restrict o = out + (int64_t)i * d;
            for (int j = 0; j < d; j++) yt[j] += w * o[j];
        }
    }
}

void combine_forward_ref(const Dispatch& p, const float* weight, const float* out, int d,
                         float* y) {
    for (int t = 0; t < p.T; t++) {
        for (int j = 0; j < d; j++) {
            float acc = 0.f;
            for (int q = p.tok_off[t]; q < p.tok_off[t + 1]; q++) {
                int i = p.tok_rows[q];
                acc += weight[p.row_assign[i]] * out[(int64_t)i * d + j];
            }
            y[(int64_t)t * d + j] = acc;
        }
    }
}

void combine_backward(const Dispatch& p, const float* weight, const float* out, const float* dy,
                      int d, float* dout, float* dweight) {
    std::memset(dweight, 0, sizeof(float) * p.n_assign);
#pragma omp parallel for schedule(static) if (worth_threads((int64_t)p.n_rows * d))
    for (int i = 0; i < p.n_rows; i++) {
        const int a = p.row_assign[i];
        const float w = weight[a];
        const float* __restrict g = dy + (int64_t)p.row_token[i] * d;
        const float* __restrict o = out + (int64_t)i * d;
        float* __restrict go = dout + (int64_t)i * d;
        // Eight partial sums: a fixed order (so bit-identical across threads) that vectorises.
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int j = 0;
        for (; j + 8 <= d; j += 8)
            for (int u = 0; u < 8; u++) {
                acc[u] += g[j + u] * o[j + u];
                go[j + u] = w * g[j + u];
            }
        float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (; j < d; j++) {
            s += g[j] * o[j];
            go[j] = w * g[j];
        }
        dweight[a] = s;
    }
}

void combine_backward_ref(const Dispatch& p, const float* weight, const float* out,
                          const float* dy, int d, float* dout, float* dweight) {
    for (int a = 0; a < p.n_assign; a++) dweight[a] = 0.f;
    for (int i = 0; i < p.n_rows; i++) {
        int a = p.row_assign[i], t = p.row_token[i];
        double s = 0;
        for (int j = 0; j < d; j++) {
            s += (double)dy[(int64_t)t * d + j] * out[(int64_t)i * d + j];
            dout[(int64_t)i * d + j] = weight[a] * dy[(int64_t)t * d + j];
        }
        dweight[a] = (float)s;
    }
}

void scatter_rows(const Dispatch& p, const float* dxp, int d, float* dx, bool accumulate) {
#pragma omp parallel for schedule(static) if (worth_threads((int64_t)p.T * d))
    for (int t = 0; t < p.T; t++) {
        float* __restrict g = dx + (int64_t)t * d;
        int b = p.tok_off[t], e = p.tok_off[t + 1];
        if (!accumulate) {
            if (b == e) {
                std::memset(g, 0, sizeof(float) * d);
                continue;
            }
            std::memcpy(g, dxp + (int64_t)p.tok_rows[b] * d, sizeof(float) * d);
            b++;
        }
        for (int q = b; q < e; q++) {
            const float* __restrict s = dxp + (int64_t)p.tok_rows[q] * d;
            for (int j = 0; j < d; j++) g[j] += s[j];
        }
    }
}

void scatter_rows_ref(const Dispatch& p, const float* dxp, int d, float* dx, bool accumulate) {
    for (int t = 0; t < p.T; t++)
        for (int j = 0; j < d; j++) {
            float acc = accumulate ? dx[(int64_t)t * d + j] : 0.f;
            for (int q = p.tok_off[t]; q < p.tok_off[t + 1]; q++)
                acc += dxp[(int64_t)p.tok_rows[q] * d + j];
            dx[(int64_t)t * d + j] = acc;
        }
}

}  // namespace moe
