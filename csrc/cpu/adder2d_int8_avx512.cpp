// The adder2d_int8 CPU kernels (adder2d_int8_kernels.h) compiled for AVX-512 F/BW/VL/VNNI (the
// byte sums on 64 bytes: vpsadbw + vpaddq, or vpminub + vpdpbusd on reductions of 512 bytes or
// more), through a target pragma opened after the standard headers, so the extension still runs on a CPU without AVX-512 (adder2d_int8_cpu.cpp calls these
// only when the CPU has it). AVX-512F implies FMA here; the float epilogue keeps its multiply and
// add apart (an empty asm between them), bitwise equal to the other copies.
#include "adder2d_int8_ceiling.h"
#include "adder2d_int8_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "adder2d_immintrin.h"
#define ADDER_HAVE_INT8_AVX512_BUILD 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vnni"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512bw,avx512vl,avx512vnni")
#endif

#define ADDER_CPU_ISA avx512
#define ADDER_INT8_AVX2 1
#define ADDER_INT8_AVX512 1
#include "adder2d_int8_kernels.h"

namespace addernet {
namespace cpu {
namespace avx512 {

// vpminub + vpdpbusd on zmm, and vpsadbw + vpaddq on zmm (adder2d_int8_ceiling.h).
static void min_dot_ceiling_loop(int64_t iterations) {
#define ADDER_MIN_DOT_STEP(acc)           \
  "vpminub %%zmm12, %%zmm13, %%zmm14\n\t" \
  "vpdpbusd %%zmm13, %%zmm14, %%zmm" #acc "\n\t"
  ADDER_CEILING_LOOP(iterations,
                     "vpternlogd $0xff, %%zmm12, %%zmm12, %%zmm12\n\t"
                     "vpabsb %%zmm12, %%zmm13\n\t",
                     ADDER_MIN_DOT_STEP);
#undef ADDER_MIN_DOT_STEP
}

static void sad_ceiling_loop(int64_t iterations) {
#define ADDER_SAD_STEP(acc)               \
  "vpsadbw %%zmm12, %%zmm13, %%zmm14\n\t" \
  "vpaddq %%zmm14, %%zmm" #acc ", %%zmm" #acc "\n\t"
  ADDER_CEILING_LOOP(iterations,
                     "vpxorq %%zmm12, %%zmm12, %%zmm12\n\t"
                     "vpternlogd $0xff, %%zmm13, %%zmm13, %%zmm13\n\t",
                     ADDER_SAD_STEP);
#undef ADDER_SAD_STEP
}

}  // namespace avx512
}  // namespace cpu
}  // namespace addernet

#include "adder2d_target_pop.h"
#endif

namespace addernet {
namespace cpu {

double int8_min_dot_ceiling_avx512(int64_t iterations) {
#ifdef ADDER_HAVE_INT8_AVX512_BUILD
  return ceiling_rate(&avx512::min_dot_ceiling_loop, iterations, 12 * 64);
#else
  (void)iterations;
  return 0.0;
#endif
}

double int8_sad_ceiling_avx512(int64_t iterations) {
#ifdef ADDER_HAVE_INT8_AVX512_BUILD
  return ceiling_rate(&avx512::sad_ceiling_loop, iterations, 12 * 64);
#else
  (void)iterations;
  return 0.0;
#endif
}

bool int8_avx512_compiled() {
#ifdef ADDER_HAVE_INT8_AVX512_BUILD
  return true;
#else
  return false;
#endif
}

Int8KernelSet int8_avx512_kernels() {
#ifdef ADDER_HAVE_INT8_AVX512_BUILD
  return avx512::int8::make_int8_kernel_set();
#else
  return int8_avx2_kernels();
#endif
}

}  // namespace cpu
}  // namespace addernet
