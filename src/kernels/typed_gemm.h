// y = x W^T with W stored in the file's type (F32, BF16, F16, Q8_0, Q4_0; a WeightView into a
// mapped file): the inference engine's one matrix product (src/infer/). Arithmetic is fp32;
// BF16/F16 weights are widened on the fly, so nothing is converted or copied at load time.
//   M small (decode, M < 4): threads over output rows, four rows at a time widened and dotted
//     with the M inputs (prefetching the next rows) by an AVX-512, AVX2+F16C or scalar kernel
//     chosen by CPUID at run time;
//   M large (prefill, grouped experts): panels of 16 W rows widened and transposed into a
//     thread's scratch, then a register-tile micro-kernel (AVX-512: 8 x 32, AVX2: 6 x 16 fp32
//     FMA tiles; the same FMA chain per output, so the same bits); without AVX2, OpenBLAS sgemm
//     on widened panels.
// Q8_0 and Q4_0 weights (src/kernels/q8_gemm.h): decode by int8 dot products; prefill by
// integer block sums on int8 panels (AVX-512 VNNI vpdpbusd) or int16 ones (AVX2 vpmaddwd), or without AVX2
// the inputs rounded as decode rounds them and the OpenBLAS panels above.
// BF16 on AVX-512 BF16 CPUs can run vdpbf16ps kernels on bf16-rounded inputs instead
// (src/kernels/bf16_gemm.h, opt-in: MOE_BF16_DOT=1).
// wgemm_ref is the plain loop (double accumulation) everything is tested against.
#pragma once
#include <cstdint>

#include "moe/hf_model.h"

namespace moe {

// y [M, N] = x [M, K] W^T (accumulate: y +=), W [N, K] = w.rows x w.cols. ldx, ldy: row strides.
void wgemm(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
           bool accumulate = false);
// Several products in one parallel region: the same numbers as wgemm on each job in turn, with
// no barrier between them (the pieces of every job shared by the threads). A job must not read
// what another writes (q, k and v of one input; an expert's gate and up; the experts' downs into
// their own rows). Jobs with the same q8_0 (or bf16-dot) input quantise (round) it once.
struct WgemmJob {
    float* y;
    int ldy;
    const float* x;
    int ldx;
    WeightView w;
    int M;
    bool accumulate;
};
void wgemm_batch(const WgemmJob* jobs, int n_jobs);
void wgemm_ref(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
               bool accumulate = false);
// Rows r0 .. r0 + n - 1 of w widened to fp32 into out [n, w.cols] (embedding lookups).
void widen_rows(float* out, const WeightView& w, int64_t r0, int64_t n);

float f16_to_f32(uint16_t h);   // exact, subnormals and inf/nan included
float bf16_to_f32(uint16_t h);  // exact
uint16_t f32_to_bf16(float f);  // round to nearest even (NaN stays NaN)
uint16_t f32_to_f16(float f);   // round to nearest even, overflow -> inf

// Which kernels wgemm uses: the best the CPU has (default), or a lower one for tests and for
// MOE_CPU_CAP=avx2|scalar in the environment (checking the AVX2 and plain paths on this CPU).
enum class WIsa { scalar, avx2, avx512 };
WIsa wgemm_isa();
void wgemm_set_isa(WIsa isa);  // clamped to what the CPU has
const char* wisa_name(WIsa isa);

}  // namespace moe
