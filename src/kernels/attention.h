// Causal multi-head attention with grouped-query heads (H query heads share Hkv key/value heads,
// H % Hkv == 0, query head h reads kv head h / (H/Hkv)), softmax(q k^T / sqrt(hd)) v.
// Queries: B x Sq rows (stride ldq), head h at columns [h*hd, (h+1)*hd); query row s has absolute
// position pos0 + s. Keys/values: B x Sk rows (strides ldk, ldv), positions 0..Sk-1; query s sees
// keys j <= pos0 + s. Training: Sq = Sk = S, pos0 = 0. KV cache: B = 1, the cache is Sk = pos0 + Sq
// rows and the Sq new tokens are its last rows.
// att [B,H,Sq,Sk] keeps the probabilities for backward (0 where masked). y [B*Sq rows, ldy].
// Backward overwrites dq, dk, dv (same layouts as q, k, v, strides ldq, ldk, ldv).
#pragma once

namespace moe {

struct AttnDims {
    int B = 1, Sq = 0, Sk = 0, H = 1, Hkv = 1, hd = 0, pos0 = 0;
};

void attention_forward(float* y, int ldy, float* att, const float* q, int ldq, const float* k,
                       int ldk, const float* v, int ldv, const AttnDims& a);
void attention_backward(float* dq, float* dk, float* dv, const float* dy, int ldy,
                        const float* att, const float* q, int ldq, const float* k, int ldk,
                        const float* v, int ldv, const AttnDims& a);

template <typename F>
void attention_forward_ref(F* y, int ldy, F* att, const F* q, int ldq, const F* k, int ldk,
                           const F* v, int ldv, const AttnDims& a);
template <typename F>
void attention_backward_ref(F* dq, F* dk, F* dv, const F* dy, int ldy, const F* att, const F* q,
                            int ldq, const F* k, int ldk, const F* v, int ldv, const AttnDims& a);

void attention_check(const AttnDims& a);  // throws moe::Error on impossible dims

}  // namespace moe
