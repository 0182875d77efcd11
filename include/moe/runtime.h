// Process-wide set-up: threads (one OpenMP pool, shared with OpenBLAS), BLAS core type, malloc
// settings that keep big blocks mapped, CPU features for run-time kernel dispatch.
#pragma once
#include <string>

namespace moe {

// Call first thing in main(argv). On a CPU with AVX-512 whose OpenBLAS would fall back to Haswell
// kernels (Debian's 0.3.21 on AMD Zen 4), sets OPENBLAS_CORETYPE=SKYLAKEX and re-executes the
// program once, because OpenBLAS reads the variable only when it is loaded. Also sets malloc
// options (no trimming, no mmap for big blocks). Returns normally when no re-exec is needed.
void runtime_init(int argc, char** argv);

// Only the malloc part (for library users and tests that cannot re-exec).
void runtime_init_malloc();

void set_threads(int n);  // OpenMP and OpenBLAS; n <= 0 means all cores
int get_threads();

struct CpuFeatures {
    bool avx2 = false, fma = false, avx512f = false, avx512bw = false, avx512vnni = false,
         avx512bf16 = false;
};
const CpuFeatures& cpu_features();
std::string cpu_name();        // "AMD EPYC ..." from /proc/cpuinfo
std::string blas_info();       // OpenBLAS config string and core name

double now_seconds();  // monotonic clock

}  // namespace moe
