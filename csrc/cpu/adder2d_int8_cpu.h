// The CPU kernels of adder2d_int8 (the 8-bit adder forward) as a table of function pointers, one
// table per instruction set (adder2d_int8_kernels.h compiled in adder2d_int8_base.cpp and
// adder2d_int8_avx2.cpp); adder2d_int8_cpu.cpp picks one at run time. Torch-free.
//
// Layouts (u8 codes are int8 codes + 128, so |(a+128) - (b+128)| = |a - b|):
//   xq    [N][G][Hp][Wp][cpg]  the zero-padded input, channels last; cpg = C/G rounded up to 8.
//                              Spatial padding and padded channels hold code 0 (byte 128).
//   wpk   [G][Co/G][wrow]      each output channel's taps in (kh, kw, ci) order, ci padded to cpg
//                              with code 0. Panels: the row padded to kp (a multiple of 32) with
//                              code 0. Direct reads: each kernel row (run = KW * cpg bytes) takes
//                              nv vectors, the last one holding the row's last vec bytes with
//                              the bytes already summed by the previous vectors set to code 0
//                              (masked to code 0 in the input vector too). Padding adds
//                              |0 - 0| = 0.
//   y     [N][Co][OH][OW]      float32, y = alpha[co] * sum + beta[co], then max(y, 0) if relu.
#pragma once

#include <cstdint>

#include "../adder2d_shape.h"

namespace addernet {
namespace cpu {

// Sizes of one adder2d_int8 call, computed once on the host (make_int8_geom).
struct Int8Geom {
  Adder2dShape s;
  int64_t cpg;          // input channels per group, padded to a multiple of 8
  int64_t hp, wp;       // padded input height and width: H + 2 ph, W + 2 pw
  int64_t kp;           // panel row length: KH * KW * cpg rounded up to 32
  int64_t vec;          // bytes per SAD vector of the kernel copy (32 AVX2, 16 SSE2)
  int64_t run;          // bytes of one kernel row of a patch: KW * cpg
  int64_t nv;           // SAD vectors per kernel row when reading xq directly: ceil(run / vec)
  bool direct;          // the GEMM reads patches from xq (dilation_w == 1), else packs panels
  int64_t wrow;         // weight row length of wpk: KH * nv * vec (direct) or kp
  int64_t pixels;       // N * OH * OW, the GEMM's column count (tiles span images)
  int64_t tile_pixels;  // pixels per tile, a multiple of 4
};

// Bytes readable before xq's first code: a kernel row shorter than a vector is read as the
// vector that ends with it (the bytes before it masked), so the first pixel's read starts up to
// vec - 8 bytes early.
constexpr int64_t INT8_XQ_MARGIN = 64;

static inline int64_t int8_round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

// Direct reads cost KH * nv * vec bytes per output, panels kp plus the packing: direct unless
// its padding makes the reduction 25% longer (e.g. 8 channels with a 5-wide kernel).
static inline Int8Geom make_int8_geom(const Adder2dShape& s, int64_t vec) {
  Int8Geom gm;
  gm.s = s;
  gm.cpg = int8_round_up(s.in_channels_per_group, 8);
  gm.hp = s.in_h + 2 * s.pad_h;
  gm.wp = s.in_w + 2 * s.pad_w;
  gm.kp = int8_round_up(s.kernel_h * s.kernel_w * gm.cpg, 32);
  gm.vec = vec;
  gm.run = s.kernel_w * gm.cpg;
  gm.nv = (gm.run + vec - 1) / vec;
  const int64_t direct_bytes = s.kernel_h * gm.nv * vec;
  gm.direct = s.dilation_w == 1 && 4 * direct_bytes <= 5 * gm.kp;
  gm.wrow = gm.direct ? direct_bytes : gm.kp;
  gm.pixels = s.batch * s.out_h * s.out_w;
  // About 16 KiB of patch bytes per tile (the panel in L1), 8 to 64 pixels.
  const int64_t tp = (16 * 1024 / gm.wrow) / 4 * 4;
  gm.tile_pixels = tp < 8 ? 8 : (tp > 64 ? 64 : tp);
  return gm;
}

struct Int8KernelSet {
  int64_t vec;  // Int8Geom::vec of this copy
  // Image n of x [C][H][W] (float32) -> xq of that image [G][Hp][Wp][cpg].
  void (*quantize_image)(const Int8Geom&, const float* x, float scale, uint8_t* xq);
  // w [Co][C/G][KH][KW] int8 codes -> wpk.
  void (*pack_weight)(const Int8Geom&, const int8_t* w, uint8_t* wpk);
  // Outputs of group g for pixels [q0, q0 + tile_pixels) of the N * OH * OW columns.
  // scratch: tile_pixels * (kp + 16) bytes, 8-byte aligned; xq preceded by INT8_XQ_MARGIN
  // readable bytes.
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
