// Int8 weights in GGML's Q8_0 format, and the products the engine runs on them.
//
// Q8_0 (written from the format's definition): a row of K values (K % 32 == 0) is K / 32 blocks;
// block b stores d = max_i |x_i| / 127 as fp16 and q_i = round(x_i / d) as int8 (round half away
// from zero; all q = 0 when d = 0); it stands for the values d * q_i. In memory a block is either
// GGML's block_q8_0 (34 bytes: d, then q[32]) or split into an int8 array and an fp16 array
// (WeightView::scales; docs/formats.md). One kernel family serves both through Q8Rows' strides.
//
// Decode (M < 4): threads over output rows. The input row is quantised the same way per 32-block
// (fp32 scale dx, int8 qx), so a block's dot product is an exact integer sum:
//   y_n = sum_b d_w[n, b] * dx[b] * sum_i q_w[n, 32b + i] * qx[32b + i]
// Eight blocks per step: their integer sums (AVX2 maddubs with the sign trick, or AVX-512 VNNI
// dpbusd; else scalar, by wgemm_isa()) reduced into one vector, times the eight scales. Quantising
// the activations costs an error of at most dx / 2 per input value (bounded in the tests); it is
// what lets the inner loop run on int8 (measured against widening int8 -> fp32 FMAs in
// bench/q8_dot.cpp: docs/formats.md has the figures).
// Prefill (M >= 4): the inputs quantised the same way and each block's integer sum taken
// exactly, on int16 panels by vpmaddwd (AVX2, 6 x 16 tiles) or on int8 panels by vpdpbusd
// (AVX-512 VNNI, 6 x 32 tiles, the inputs offset by 128): q8_gemm_prefill, the same bits either way; without AVX2 the inputs rounded to dx * qx
// (q8_round_activation_rows) and typed_gemm's widened fp32 panels. The same products as decode
// either way, summed in another order.
//
// Int4 weights in GGML's Q4_0 format (written from its definition) run on the same kernels: a
// block is 18 bytes, an fp16 d = m / -8 (m the first value of largest |x|, its sign kept) and
// 16 bytes qs[j] = q_j | q_(j+16) << 4 with q_i = min(15, trunc(x_i * (1 / d) + 8.5)) (all 8
// when d = 0); value i is d * (q_i - 8). GGML's layout only (WeightView::scales null). The inputs
// are quantised as for Q8_0, a block's integer sum is sum_i (q_i - 8) * qx_i, and only the
// weight side differs: decode takes the nibbles (0..15) as the unsigned side of maddubs / dpbusd
// and subtracts 8 * each block's input sum; the prefill panels are packed from nibbles as int8 in
// [-8, 7]; plain loops.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/hf_model.h"

namespace moe {

constexpr int kQ8Block = 32;          // values per block
constexpr size_t kQ8BlockBytes = 34;  // GGML block_q8_0: fp16 d + 32 int8

// One block: q[32] and the fp16 bits of d (d = max|x| / 127, computed in fp32).
uint16_t quantize_block_q8_0(const float* x, int8_t* q);
// A row of k values (k % 32 == 0) into k / 32 GGML blocks (k / 32 * 34 bytes at out).
void quantize_row_q8_0(const float* x, int64_t k, void* out);
// The inverse: k / 32 GGML blocks -> k floats (d * q, exact in fp32).
void dequantize_row_q8_0(const void* in, int64_t k, float* out);

// GGML blocks -> the split layout, in place: `rows` rows of k / 32 blocks at p (t = q8_0: rows *
// k / 32 * 34 bytes; q4_0: 18 a block) become the values (int8 [rows, k]; q4_0: the blocks' 16
// bytes of nibbles, [rows, k / 2]) followed by the fp16 scales [rows, k / 32] (the same bytes in
// all). The loaders do this to weights held in memory of their own (a model copied into huge
// pages), where decode's 512-bit VNNI loop reads two whole Q8_0 blocks per load.
void ggml_blocks_to_split(WType t, uint8_t* p, int64_t rows, int64_t k);

constexpr size_t kQ4BlockBytes = 18;  // GGML block_q4_0: fp16 d + 16 bytes of nibbles

// One Q4_0 block: qs[16] and the fp16 bits of d (d = m / -8, computed in fp32).
uint16_t quantize_block_q4_0(const float* x, uint8_t* qs);
void quantize_row_q4_0(const float* x, int64_t k, void* out);      // k / 32 * 18 bytes
void dequantize_row_q4_0(const void* in, int64_t k, float* out);  // d * (q - 8), exact in fp32

// Where block b of row r of a q8_0 or q4_0 view lives, for either layout (byte strides; q4_0:
// qs() is the block's 16 bytes of nibbles).
struct Q8Rows {
    const uint8_t* q = nullptr;  // int8 values of block (0, 0)
    const uint8_t* d = nullptr;  // fp16 scale of block (0, 0)
    size_t q_row = 0, q_blk = 0, d_row = 0, d_blk = 0;
    const int8_t* qs(int64_t r, int64_t b) const {
        return (const int8_t*)(q + (size_t)r * q_row + (size_t)b * q_blk);
    }
    uint16_t scale_bits(int64_t r, int64_t b) const;
};
Q8Rows q8_rows(const WeightView& w);

// Rows r0 .. r0 + n - 1 (q8_0 or q4_0) widened to fp32 into out [n, w.cols] (a plain loop:
// wgemm_ref's too).
void q8_widen_rows(float* out, const WeightView& w, int64_t r0, int64_t n);

// y [M, N] (= or +=) x [M, K] W^T for a q8_0 or q4_0 W, M >= 4 (prefill, grouped experts): the
// inputs quantised as decode quantises them, each block's products summed exactly in int32 (AVX2
// vpmaddwd on int16 panels, AVX-512 VNNI vpdpbusd on int8 ones, or plain loops), then
// fma(isum, dw * dx) in block order. The _ref is the plain loop: the same operations in the same order, so the two agree bit for bit.
void q8_gemm_prefill(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
                     bool accumulate);
void q8_gemm_prefill_ref(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
                         bool accumulate);

// y [M, N] (= or +=) x [M, K] W^T for a q8_0 or q4_0 W, M small (decode): see above.
void q8_gemm_decode(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
                    bool accumulate);

// Both in pieces, for wgemm_batch (typed_gemm.h): the inputs quantised once per product, then
// any range of output columns n0 .. n1 - 1 on any thread; a column's value does not depend on
// the range it was computed in.
// Prefill's inputs: int16 [q8_prefill_input_size(M, K)] (on VNNI CPUs holding the int8 layout,
// half of it), fp32 scales [that / 32].
size_t q8_prefill_input_size(int M, int64_t K);
void q8_prefill_quantize(const float* x, int ldx, int M, int64_t K, int16_t* xg, float* dx);
void q8_prefill_rows(float* y, int ldy, const int16_t* xg, const float* dx, const WeightView& w,
                     int M, bool accumulate, int n0, int n1);
// Decode's: int8 [M * K], fp32 scales [M * K / 32].
void q8_decode_quantize(const float* x, int ldx, int M, int64_t K, int8_t* qx, float* dx);
void q8_decode_rows(float* y, int ldy, const int8_t* qx, const float* dx, const WeightView& w,
                    int M, bool accumulate, int n0, int n1);

// The activation side, exposed for tests and bench/q8_dot.cpp: x [K] -> qx [K], dx [K / 32]
// (fp32 scales), and one row's dot product by the kernel of `isa` (0 scalar, 1 AVX2, 2 AVX-512
// VNNI; the caller checks the CPU has it).
void q8_quantize_activation(const float* x, int64_t k, int8_t* qx, float* dx);
void q8_quantize_activation_ref(const float* x, int64_t k, int8_t* qx, float* dx);  // plain loop
// The values decode multiplies, as floats: out[m][i] = dx[b] * qx[i] for each of M rows of k
// (k % 32 == 0) quantised as above. Prefill runs on these so that it equals decode.
void q8_round_activation_rows(float* out, int64_t ldo, const float* x, int64_t ldx, int M,
                              int64_t k);
float q8_dot_row(int isa, const Q8Rows& w, int64_t r, const int8_t* qx, const float* dx, int64_t k);
// The same for a q4_0 row (isa as above).
float q4_dot_row(int isa, const Q8Rows& w, int64_t r, const int8_t* qx, const float* dx, int64_t k);
bool q8_cpu_has_vnni();  // AVX-512 F, BW, VL and VNNI
bool cpu_os_saves_zmm();  // the OS saves the AVX-512 registers (XCR0), needed by every zmm kernel
// The alternative measured in bench/q8_dot.cpp: int8 widened to fp32, FMA with fp32 x (AVX2).
float q8_dot_row_widen_avx2(const Q8Rows& w, int64_t r, const float* x, int64_t k);

}  // namespace moe
