// Run-time dispatch for plain C++ loops: the compiler builds an AVX-512 (x86-64-v4), an AVX2
// (x86-64-v3) and a baseline clone of the function and picks one by CPUID at load time, so hot
// loops vectorise wide on modern CPUs and the binary still runs on an older one.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MOE_NO_CLONES)
#define MOE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MOE_SIMD_CLONES
#endif
