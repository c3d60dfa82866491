// The CPU kernels of adder2d_int8 (the 8-bit adder forward) as a table of function pointers, one
// table per instruction set (adder2d_int8_kernels.h compiled in adder2d_int8_base.cpp,
// adder2d_int8_avx2.cpp and adder2d_int8_avx512.cpp); adder2d_int8_cpu.cpp picks one at run time.
// Torch-free.
//
// Layouts (u8 codes are int8 codes + 128, so |(a+128) - (b+128)| = |a - b|):
//   xq    [N][G][Hp][Wp][cpg]  the zero-padded input, channels last; cpg = C/G rounded up to 8.
//                              Spatial padding and padded channels hold code 0 (byte 128).
//   wpk   [G][octet][kq / 8][8][8]
//                              output channels in blocks of 8 (octets, the last one padded with
//                              code-0 channels whose sums are dropped); per 8-byte chunk of the
//                              reduction (taps in (kh, kw, ci) order, ci padded to cpg with code
//                              0), the 8 channels' 8 bytes: a vector of 32 bytes holds 4
//                              channels' chunk, compared with one pixel's chunk broadcast.
//                              Then, at byte wsum_offset, int32 [G][octet][8]: each channel's
//                              sum of its kq bytes (written by the AVX-512 copy, which uses it).
//   psum  [N][G][Hp][Wp]       int32, the sum of each padded pixel's cpg bytes of xq, and
//   asum  [N][G][OH][OW]       int32, the sum of psum over each output's patch (AVX-512 copy
//                              only: the kernel sets whose pixel_sums is not null).
//   y     [N][Co][OH][OW]      float32, y = alpha[co] * sum + beta[co], then max(y, 0) if relu;
//                              [N][OH][OW][Co] when the input is channels-last (channels_last).
// A dense channels-last input x is read as [N][H][W][C] and the output written channels-last
// (adder2d_int8_channels_last in ../adder2d_int8.h).
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
  int64_t kq;           // bytes of one output's reduction: KH * KW * cpg
  int64_t seg_bytes;    // contiguous bytes of a patch in xq: KW * cpg at dilation_w 1, else cpg
  int64_t octets;       // output channels per group in blocks of 8: ceil(Co/G / 8)
  int64_t wsum_offset;  // bytes of wpk's codes, where its int32 channel sums start
  int64_t wpk_bytes;    // all of wpk: codes, then G * octets * 8 int32 sums
  int64_t pixels;       // N * OH * OW, the GEMM's column count (tiles span images)
  int64_t tile_pixels;  // pixels per tile, a multiple of 4 (every copy's micro-tile)
  bool channels_last;   // x read as [N][H][W][C], y written as [N][OH][OW][Co]
  int64_t y_cstride;    // distance in y between channels co and co + 1: OH * OW, or 1
};

static inline Int8Geom make_int8_geom(const Adder2dShape& s, bool channels_last) {
  Int8Geom gm;
  gm.s = s;
  gm.channels_last = channels_last;
  gm.y_cstride = channels_last ? 1 : s.out_h * s.out_w;
  gm.cpg = (s.in_channels_per_group + 7) / 8 * 8;
  gm.hp = s.in_h + 2 * s.pad_h;
  gm.wp = s.in_w + 2 * s.pad_w;
  gm.kq = s.kernel_h * s.kernel_w * gm.cpg;
  gm.seg_bytes = s.dilation_w == 1 ? s.kernel_w * gm.cpg : gm.cpg;
  gm.octets = (s.out_channels_per_group + 7) / 8;
  gm.wsum_offset = s.groups * gm.octets * 8 * gm.kq;
  gm.wpk_bytes = gm.wsum_offset + s.groups * gm.octets * 8 * 4;
  gm.pixels = s.batch * s.out_h * s.out_w;
  // About 16 KiB of patch bytes per tile (in L1 while the channel blocks walk it), 8 to 64.
  const int64_t tp = (16 * 1024 / gm.kq) / 4 * 4;
  gm.tile_pixels = tp < 8 ? 8 : (tp > 64 ? 64 : tp);
  return gm;
}

struct Int8KernelSet {
  // Image n of x [C][H][W] (float32; [H][W][C] if channels_last) -> xq of that image
  // [G][Hp][Wp][cpg].
  void (*quantize_image)(const Int8Geom&, const float* x, float scale, uint8_t* xq);
  // psum and asum of one image from its xq; null in the sets that do not use them.
  void (*pixel_sums)(const Int8Geom&, const uint8_t* xq, int32_t* psum, int32_t* asum);
  // w [Co][C/G][KH][KW] int8 codes -> wpk.
  void (*pack_weight)(const Int8Geom&, const int8_t* w, uint8_t* wpk);
  // Outputs of group g for pixels [q0, q0 + tile_pixels) of the N * OH * OW columns; asum is
  // null where pixel_sums is. scratch: int8_scratch_bytes(gm) bytes, 8-byte aligned.
  void (*forward_tile)(const Int8Geom&, const uint8_t* xq, const int32_t* asum, const uint8_t* wpk,
                       const float* alpha, const float* beta, bool relu, float* y, int64_t g,
                       int64_t q0, uint8_t* scratch);
};

// Scratch of one forward_tile call: pixel offsets, output offsets and patch sums.
static inline int64_t int8_scratch_bytes(const Int8Geom& gm) {
  return 3 * 8 * gm.tile_pixels;
}

Int8KernelSet int8_base_kernels();
// Register-resident ceiling of the AVX2 byte SAD on this thread: byte-taps per second of a loop
// of independent vpsadbw + vpaddq (12 accumulators, no memory traffic) run for `iterations`
// steps, timed in thread CPU time; 0 when the build has no AVX2 kernels. The benchmark compares the kernel against it.
double int8_sad_ceiling_avx2(int64_t iterations);
// The AVX2 table; the baseline one when the build has no AVX2 kernels.
Int8KernelSet int8_avx2_kernels();
// Register-resident ceiling of the AVX-512 VNNI form, |a - b| = a + b - 2 min(a, b): byte-taps per
// second of a loop of independent vpminub + vpdpbusd on 64 bytes (12 accumulators), thread CPU
// time; 0 when the build has no AVX-512 kernels.
double int8_min_dot_ceiling_avx512(int64_t iterations);
// The same for vpsadbw + vpaddq on 64 bytes (zmm).
double int8_sad_ceiling_avx512(int64_t iterations);
// Whether this build has the AVX-512 int8 kernels.
bool int8_avx512_compiled();
// The AVX-512 (F, BW, VL, VNNI) table; the AVX2 one when the build has no AVX-512 kernels. Its
// GEMM sums bytes with vpsadbw + vpaddq on 64 bytes, or, on reductions of at least
// INT8_MIN_DOT_MIN_BYTES bytes (kq), with vpminub + vpdpbusd, which needs the patch sums
// (pixel_sums; the caller passes a null asum to forward_tile below that length).
constexpr int64_t INT8_MIN_DOT_MIN_BYTES = 512;
Int8KernelSet int8_avx512_kernels();

}  // namespace cpu
}  // namespace addernet
