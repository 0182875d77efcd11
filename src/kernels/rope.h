// Rotary position embedding, Hugging Face "rotate-half" convention (Llama/Mixtral): a head vector
// x of width hd is split into halves a = x[:hd/2], b = x[hd/2:]; with angle p * theta^(-2i/hd),
//   a_i' = a_i cos - b_i sin,   b_i' = b_i cos + a_i sin.
// Applied in place to n_heads heads of hd floats that start at column 0 of rows of stride ld,
// laid out [B,S] rows; row (b,s) has absolute position pos0 + s. Backward is the inverse rotation.
// cos/sin tables [n_pos, hd/2] from rope_tables (computed in double, like HF's fp32 inv_freq
// up to rounding).
#pragma once

namespace moe {

void rope_tables(float* cos_t, float* sin_t, int n_pos, int hd, float theta);

void rope_forward(float* x, int B, int S, int ld, int n_heads, int hd, int pos0,
                  const float* cos_t, const float* sin_t);
void rope_backward(float* dx, int B, int S, int ld, int n_heads, int hd, int pos0,
                   const float* cos_t, const float* sin_t);

template <typename F>
void rope_forward_ref(F* x, int B, int S, int ld, int n_heads, int hd, int pos0, float theta);
template <typename F>
void rope_backward_ref(F* dx, int B, int S, int ld, int n_heads, int hd, int pos0, float theta);

}  // namespace moe
