// The register-resident ceiling loops of the int8 benchmark (_C.int8_sad_ceiling,
// _C.int8_min_dot_ceiling): per iteration 12 independent steps, each an instruction pair into its
// own accumulator (vector registers 0-11, so latency is hidden; 12-14 are the operands), no memory
// operand, all in one asm statement so the compiler cannot hoist or merge anything. An includer
// defines STEP(acc) as the pair's asm text for accumulator acc and INIT as the operands' set-up.
// Torch-free; used inside the target region of the instruction set the loop needs.
#pragma once

#include <stdint.h>
#include <time.h>

#define ADDER_CEILING_LOOP(iterations, INIT, STEP) \
  __asm__ volatile(INIT "1:\n\t" STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7) \
                       STEP(8) STEP(9) STEP(10) STEP(11) "dec %[n]\n\t"                           \
                                                         "jnz 1b\n\t"                             \
                                                         "vzeroupper\n\t"                         \
                   : [n] "+r"(iterations)                                                         \
                   :                                                                              \
                   : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",      \
                     "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "cc")

namespace addernet {
namespace cpu {

// Byte-taps per second of this thread's CPU time (time spent descheduled on a shared machine does
// not count) of `loop` run for `iterations` (at least 1) of `bytes_per_iteration` byte-taps.
static inline double ceiling_rate(void (*loop)(int64_t), int64_t iterations,
                                  int64_t bytes_per_iteration) {
  if (iterations < 1) iterations = 1;
  timespec t0, t1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  loop(iterations);
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  const double seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  return static_cast<double>(iterations) * static_cast<double>(bytes_per_iteration) / seconds;
}

}  // namespace cpu
}  // namespace addernet
