// The adder2d_int8 CPU kernels (adder2d_int8_kernels.h) compiled for AVX2 (vpsadbw on 32 bytes),
// through a target pragma opened after the standard headers, so the extension still runs on a
// CPU without AVX2 (adder2d_int8_cpu.cpp calls these only when the CPU has it). AVX2 only, not
// FMA: the float epilogue stays a separate multiply and add, bitwise equal to the baseline copy.
#include "adder2d_int8_ceiling.h"
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

namespace addernet {
namespace cpu {
namespace avx2 {

// vpsadbw + vpaddq on ymm (adder2d_int8_ceiling.h).
static void sad_ceiling_loop(int64_t iterations) {
#define ADDER_SAD_STEP(acc)               \
  "vpsadbw %%ymm12, %%ymm13, %%ymm14\n\t" \
  "vpaddq %%ymm14, %%ymm" #acc ", %%ymm" #acc "\n\t"
  ADDER_CEILING_LOOP(iterations,
                     "vpxor %%ymm12, %%ymm12, %%ymm12\n\t"
                     "vpcmpeqb %%ymm13, %%ymm13, %%ymm13\n\t",
                     ADDER_SAD_STEP);
#undef ADDER_SAD_STEP
}

}  // namespace avx2
}  // namespace cpu
}  // namespace addernet

#include "adder2d_target_pop.h"
#endif

namespace addernet {
namespace cpu {

double int8_sad_ceiling_avx2(int64_t iterations) {
#ifdef ADDER_HAVE_INT8_AVX2_BUILD
  return ceiling_rate(&avx2::sad_ceiling_loop, iterations, 12 * 32);
#else
  (void)iterations;
  return 0.0;
#endif
}

Int8KernelSet int8_avx2_kernels() {
#ifdef ADDER_HAVE_INT8_AVX2_BUILD
  return avx2::int8::make_int8_kernel_set();
#else
  return int8_base_kernels();
#endif
}

}  // namespace cpu
}  // namespace addernet
