// <immintrin.h> for the AVX-512 translation units (adder2d_cpu_avx512.cpp,
// adder2d_int8_avx512.cpp), included before their target pragma. GCC 12's AVX-512 intrinsics
// start from _mm512_undefined_*(), a self-initialised variable that -Wuninitialized reports
// wherever they are inlined (a known false positive): silenced for the intrinsics' header only.
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
