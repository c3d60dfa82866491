// The adder2d_int8 CPU kernels (adder2d_int8_kernels.h) compiled for AVX-512 F/BW/VL/VNNI (the
// byte sums on 64 bytes: vpsadbw + vpaddq, or vpminub + vpdpbusd on reductions of 512 bytes or
// more), through a target pragma opened after the standard headers, so the extension still runs on a CPU without AVX-512 (adder2d_int8_cpu.cpp calls these
// only when the CPU has it). AVX-512F implies FMA here; the float epilogue keeps its multiply and
// add apart (an empty asm between them), bitwise equal to the other copies.
#include "adder2d_int8_cpu.h"

#include <time.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), a self-initialised variable that
// -Wuninitialized reports wherever they are inlined (a known false positive): silenced for the
// intrinsics' header only, which these pragmas precede.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
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

// One asm loop, so the compiler cannot hoist or merge anything: per step 12 independent
// vpminub + vpdpbusd pairs on zmm (accumulators zmm0-11, latency hidden), no memory operand.
static void min_dot_ceiling_loop(int64_t iterations) {
  __asm__ volatile(
      "vpternlogd $0xff, %%zmm12, %%zmm12, %%zmm12\n\t"
      "vpabsb %%zmm12, %%zmm13\n\t"
      "1:\n\t"
#define ADDER_MIN_DOT_STEP(acc)           \
  "vpminub %%zmm12, %%zmm13, %%zmm14\n\t" \
  "vpdpbusd %%zmm13, %%zmm14, %%zmm" #acc "\n\t"
      ADDER_MIN_DOT_STEP(0) ADDER_MIN_DOT_STEP(1) ADDER_MIN_DOT_STEP(2) ADDER_MIN_DOT_STEP(3)
          ADDER_MIN_DOT_STEP(4) ADDER_MIN_DOT_STEP(5) ADDER_MIN_DOT_STEP(6) ADDER_MIN_DOT_STEP(7)
              ADDER_MIN_DOT_STEP(8) ADDER_MIN_DOT_STEP(9) ADDER_MIN_DOT_STEP(10)
                  ADDER_MIN_DOT_STEP(11)
#undef ADDER_MIN_DOT_STEP
                      "dec %[n]\n\t"
                      "jnz 1b\n\t"
                      "vzeroupper\n\t"
      : [n] "+r"(iterations)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "cc");
}

// The same with vpsadbw + vpaddq on zmm (the kernels' byte SAD on reductions under 512 bytes).
static void sad_ceiling_loop(int64_t iterations) {
  __asm__ volatile(
      "vpxorq %%zmm12, %%zmm12, %%zmm12\n\t"
      "vpternlogd $0xff, %%zmm13, %%zmm13, %%zmm13\n\t"
      "1:\n\t"
#define ADDER_SAD_STEP(acc)               \
  "vpsadbw %%zmm12, %%zmm13, %%zmm14\n\t" \
  "vpaddq %%zmm14, %%zmm" #acc ", %%zmm" #acc "\n\t"
      ADDER_SAD_STEP(0) ADDER_SAD_STEP(1) ADDER_SAD_STEP(2) ADDER_SAD_STEP(3) ADDER_SAD_STEP(4)
          ADDER_SAD_STEP(5) ADDER_SAD_STEP(6) ADDER_SAD_STEP(7) ADDER_SAD_STEP(8) ADDER_SAD_STEP(9)
              ADDER_SAD_STEP(10) ADDER_SAD_STEP(11)
#undef ADDER_SAD_STEP
                  "dec %[n]\n\t"
                  "jnz 1b\n\t"
                  "vzeroupper\n\t"
      : [n] "+r"(iterations)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "cc");
}

}  // namespace avx512
}  // namespace cpu
}  // namespace addernet

#include "adder2d_target_pop.h"
#endif

namespace addernet {
namespace cpu {

#ifdef ADDER_HAVE_INT8_AVX512_BUILD
// Byte-taps per second of thread CPU time of `loop` (12 x 64 byte-taps per iteration).
static double rate_of(void (*loop)(int64_t), int64_t iterations) {
  if (iterations < 1) iterations = 1;
  timespec t0, t1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  loop(iterations);
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  const double seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  return static_cast<double>(iterations) * 12 * 64 / seconds;
}
#endif

double int8_min_dot_ceiling_avx512(int64_t iterations) {
#ifdef ADDER_HAVE_INT8_AVX512_BUILD
  return rate_of(&avx512::min_dot_ceiling_loop, iterations);
#else
  (void)iterations;
  return 0.0;
#endif
}

double int8_sad_ceiling_avx512(int64_t iterations) {
#ifdef ADDER_HAVE_INT8_AVX512_BUILD
  return rate_of(&avx512::sad_ceiling_loop, iterations);
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
