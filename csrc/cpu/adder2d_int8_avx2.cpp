// The adder2d_int8 CPU kernels (adder2d_int8_kernels.h) compiled for AVX2 (vpsadbw on 32 bytes),
// through a target pragma opened after the standard headers, so the extension still runs on a
// CPU without AVX2 (adder2d_int8_cpu.cpp calls these only when the CPU has it). AVX2 only, not
// FMA: the float epilogue stays a separate multiply and add, bitwise equal to the baseline copy.
#include "adder2d_int8_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ADDER_HAVE_INT8_AVX2_BUILD 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif

#define ADDER_CPU_ISA avx2
#define ADDER_INT8_AVX2 1
#include "adder2d_int8_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace addernet {
namespace cpu {

Int8KernelSet int8_avx2_kernels() {
#ifdef ADDER_HAVE_INT8_AVX2_BUILD
  return avx2::int8::make_int8_kernel_set();
#else
  return int8_base_kernels();
#endif
}

}  // namespace cpu
}  // namespace addernet
