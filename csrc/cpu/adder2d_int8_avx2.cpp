// The adder2d_int8 CPU kernels (adder2d_int8_kernels.h) compiled for AVX2 (vpsadbw on 32 bytes),
// through a target pragma opened after the standard headers, so the extension still runs on a
// CPU without AVX2 (adder2d_int8_cpu.cpp calls these only when the CPU has it). AVX2 only, not
// FMA: the float epilogue stays a separate multiply and add, bitwise equal to the baseline copy.
#include "adder2d_int8_cpu.h"

#include <time.h>

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

// One asm loop, so the compiler cannot hoist or merge anything: per step 12 independent
// vpsadbw + vpaddq pairs (accumulators ymm0-11, latency hidden), no memory operand.
static void sad_ceiling_loop(int64_t iterations) {
  __asm__ volatile(
      "vpxor %%ymm12, %%ymm12, %%ymm12\n\t"
      "vpcmpeqb %%ymm13, %%ymm13, %%ymm13\n\t"
      "1:\n\t"
#define ADDER_SAD_STEP(acc)               \
  "vpsadbw %%ymm12, %%ymm13, %%ymm14\n\t" \
  "vpaddq %%ymm14, %%ymm" #acc ", %%ymm" #acc "\n\t"
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

}  // namespace avx2
}  // namespace cpu
}  // namespace addernet

#include "adder2d_target_pop.h"
#endif

namespace addernet {
namespace cpu {

double int8_sad_ceiling_avx2(int64_t iterations) {
#ifdef ADDER_HAVE_INT8_AVX2_BUILD
  // The thread's CPU time: time spent descheduled on a shared machine does not count.
  timespec t0, t1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  avx2::sad_ceiling_loop(iterations < 1 ? 1 : iterations);
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  const double seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  return static_cast<double>(iterations) * 12 * 32 / seconds;
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
