#include "moe/runtime.h"

#include <cblas.h>
#include <malloc.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

extern "C" {
char* openblas_get_corename(void);
char* openblas_get_config(void);
void openblas_set_num_threads(int);
}

namespace moe {

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = [] {
        CpuFeatures c;
        __builtin_cpu_init();
        c.avx2 = __builtin_cpu_supports("avx2");
        c.fma = __builtin_cpu_supports("fma");
        c.avx512f = __builtin_cpu_supports("avx512f");
        c.avx512bw = __builtin_cpu_supports("avx512bw");
        c.avx512vnni = __builtin_cpu_supports("avx512vnni");
        c.avx512bf16 = __builtin_cpu_supports("avx512bf16");
        return c;
    }();
    return f;
}

void runtime_init_malloc() {
    // Keep every block in the heap and never give memory back: a page first touched costs more
    // than the arithmetic on it here (ANCHORS.md trap 3), and our workspaces are reused anyway.
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_TOP_PAD, 64 << 20);
}

static bool corename_is_avx512(const char* name) {
    if (!name) return false;
    std::string n(name);
    for (auto& ch : n) ch = (char)tolower(ch);
    return n.find("skylakex") != std::string::npos || n.find("cooperlake") != std::string::npos ||
           n.find("sapphire") != std::string::npos;
}

void runtime_init(int argc, char** argv) {
    (void)argc;
    runtime_init_malloc();
    const CpuFeatures& f = cpu_features();
    bool avx512_ok = f.avx512f && f.avx512bw && __builtin_cpu_supports("avx512dq") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd");
    if (!avx512_ok || getenv("MOE_NO_REEXEC") || getenv("MOE_KEEP_OPENBLAS_CORETYPE")) return;
    if (corename_is_avx512(openblas_get_corename())) return;
    // OpenBLAS runs AVX2 kernels on an AVX-512 CPU (Debian's 0.3.21 does not know AMD Zen 4, and
    // an inherited OPENBLAS_CORETYPE=Haswell forces the same): half the sgemm speed. OpenBLAS
    // reads OPENBLAS_CORETYPE only when it is loaded, so set it and start this program again.
    // MOE_KEEP_OPENBLAS_CORETYPE=1 keeps whatever the environment says.
    setenv("OPENBLAS_CORETYPE", "SKYLAKEX", 1);
    setenv("MOE_NO_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    // execv failed (no /proc?): carry on with the slower kernels.
}

void set_threads(int n) {
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int get_threads() { return omp_get_max_threads(); }

std::string cpu_name() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("model name", 0) == 0) {
            auto p = line.find(':');
            if (p != std::string::npos) return line.substr(p + 2);
        }
    }
    return "unknown";
}

std::string blas_info() {
    const char* core = openblas_get_corename();
    const char* cfg = openblas_get_config();
    return std::string("OpenBLAS ") + (cfg ? cfg : "") + " core=" + (core ? core : "?");
}

double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace moe
