// The CPU kernels of adder2d_int8 (the 8-bit adder forward) as a table of function pointers, one
// table per instruction set (adder2d_int8_kernels.h compiled in adder2d_int8_base.cpp and
// adder2d_int8_avx2.cpp); adder2d_int8_cpu.cpp picks one at run time. Torch-free.
//
// Layouts (u8 codes are int8 codes + 128, so |(a+128) - (b+128)| = |a - b|):
//   xq    [N][G][Hp][Wp][cpg]  the zero-padded input, channels last; cpg = C/G rounded up to 8.
//                              Spatial padding and padded channels hold code 0 (byte 128).
//   wpk   [G][Co/G][kp]        each output channel's taps in (kh, kw, ci) order, ci padded to cpg
//                              with code 0, then the row padded to kp (a multiple of 32) with
//                              code 0: padding adds |0 - 0| = 0.
//   y     [N][Co][OH][OW]      float32, y = alpha[co] * sum + beta[co], then max(y, 0) if relu.
#pragma once

#include <cstdint>

#include "../adder2d_shape.h"

namespace addernet {
namespace cpu {

// Sizes of one adder2d_int8 call, computed once on the host (adder2d_int8_cpu.cpp).
struct Int8Geom {
  Adder2dShape s;
  int64_t cpg;          // input channels per group, padded to a multiple of 8
  int64_t hp, wp;       // padded input height and width: H + 2 ph, W + 2 pw
  int64_t kp;           // packed reduction length: KH * KW * cpg rounded up to 32
  int64_t pixels;       // N * OH * OW, the GEMM's column count (tiles span images)
  int64_t tile_pixels;  // pixels per packed panel, a multiple of 4
};

struct Int8KernelSet {
  // Image n of x [C][H][W] (float32) -> xq of that image [G][Hp][Wp][cpg].
  void (*quantize_image)(const Int8Geom&, const float* x, float scale, uint8_t* xq);
  // w [Co][C/G][KH][KW] int8 codes -> wpk.
  void (*pack_weight)(const Int8Geom&, const int8_t* w, uint8_t* wpk);
  // Outputs of group g for pixels [q0, q0 + tile_pixels) of the N * OH * OW columns.
  // scratch: tile_pixels * (kp + 8) bytes, 8-byte aligned.
  void (*forward_tile)(const Int8Geom&, const uint8_t* xq, const uint8_t* wpk, const float* alpha,
                       const float* beta, bool relu, float* y, int64_t g, int64_t q0,
                       uint8_t* scratch);
};

Int8KernelSet int8_base_kernels();
// Register-resident ceiling of the AVX2 byte SAD on this thread: byte-taps per second of a loop
// of independent vpsadbw + vpaddq (12 accumulators, no memory traffic) run for `iterations`
// steps, timed in thread CPU time; 0 when the build has no AVX2 kernels. The benchmark compares the kernel against it.
double int8_sad_ceiling_avx2(int64_t iterations);
// The AVX2 table; the baseline one when the build has no AVX2 kernels.
Int8KernelSet int8_avx2_kernels();

}  // namespace cpu
}  // namespace addernet
