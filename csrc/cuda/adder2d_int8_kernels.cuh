// Device code of adder2d_int8, the 8-bit adder forward (schema and checks in ../adder2d_int8.cpp,
// math in docs/int8.md), free of torch headers: included by the CUDA entry (adder2d_int8_cuda.cu)
// and by the CPU emulation (tests/cuda_emulation/emulate_adder2d_int8.cpp).
//
//   q(v)      = clamp(round_half_even(v / s), -127, 127)      v / s a float32 division, NaN -> -127
//   S[n,co,p] = sum_{ci,kh,kw} |q(Xp[n,c,ih,iw]) - Wq[co,ci,kh,kw]|          exact, uint32
//   Y[n,co,p] = alpha[co] * S + beta[co]      one multiply, then one add, each rounded (no FMA);
//                                             then (0 > Y ? 0 : Y) with relu
//
// the CPU kernels' formulas (cpu/adder2d_int8_kernels.h), so both give bitwise equal outputs.
//
// Byte SAD: codes offset by 128 (u = q + 128, a byte) keep |(a+128) - (b+128)| = |a - b|, and
// PTX vabsdiff4.u32.u32.u32.add (sad4_add; __vsadu4 plus the add on the host) adds the four byte
// differences of two 32-bit words to a sum: one VABSDIFF4.U8.ACC on sm_80 and sm_90. Layouts, in
// 32-bit words of 4 codes:
//
//   xq [N][G][H][W][cw]      the input's codes, channels last; cw = ceil(C/G / 4) words per pixel,
//                            channel 4q + b of the group in byte b of word q, code 0 (128) past C/G
//   wq [G][KH*KW*cw][Co/G]   the weight's codes, the reduction (kh, kw, channel word) major, the
//                            group's output channels contiguous (coalesced loads), same padding
//
// Padded channels hold code 0 in both, so they add |0 - 0| = 0. The spatial padding is not stored:
// the gather substitutes the word of four codes 0 (kCodeZero4) for a tap outside the image.
//
// Implicit GEMM per group: M = Co/G output channels, N = N*OH*OW pixels (a tile spans images),
// K = KH*KW*cw words, walked in slices of BK consecutive words (taps and channel words flattened,
// so layers with few channels waste no slice). A block owns a BM x BN tile of S; each slice of
// patches is gathered into shared memory next to the BK x BM slice of wq, double-buffered with one
// barrier per slice (as the float forward, adder2d_forward_kernels.cuh), and every thread
// accumulates a TM x TN register micro-tile of uint32 sums, acc = sad4_add(x, w, acc), reading 4
// consecutive words of each operand per 16-byte shared-memory load.
#pragma once

#include <algorithm>
#include <cstdint>

#include "adder2d_cuda_common.cuh"

namespace addernet {
namespace cuda {

constexpr uint32_t kCodeZero4 = 0x80808080u;  // four codes 0 (byte 128)

// adder2d's sizes plus the packed reduction of adder2d_int8.
struct Adder2dInt8Geom {
  Adder2dGeom g;
  int cw;      // 32-bit words of codes per pixel and group: ceil(C/G / 4)
  int kwords;  // reduction length in words: KH * KW * cw
};

// Whether the gather's 32-bit offsets hold: H * W * cw words per image and group below 2^31
// (8 GiB of codes), on top of adder2d_geom_fits.
inline bool adder2d_int8_geom_fits(const Adder2dShape& s) {
  int64_t plane, words;
  return !adder2d_mul_add_overflows(s.in_h, s.in_w, 0, &plane) &&
         !adder2d_mul_add_overflows(plane, (s.in_channels_per_group + 3) / 4, 0, &words) &&
         words <= INT32_MAX;
}

inline Adder2dInt8Geom adder2d_int8_geom(const Adder2dShape& s) {
  Adder2dInt8Geom q;
  q.g = adder2d_geom(s);
  q.cw = int((s.in_channels_per_group + 3) / 4);
  q.kwords = int(s.kernel_h * s.kernel_w * q.cw);
  return q;
}

// q(v) + 128, with the CPU's float32 formula: IEEE division, clamp (NaN -> -127), round half to
// even.
__device__ __forceinline__ uint32_t int8_code(float v, float scale) {
  float t = __fdiv_rn(v, scale);
  t = t >= -127.0f ? t : -127.0f;
  t = t <= 127.0f ? t : 127.0f;
  return uint32_t(__float2int_rn(t) + 128);
}

// xq = the codes of x [N][C][H][W]; one thread per word, the pixel index fastest (the four
// channel reads of a warp are coalesced). total = N * G * cw * H * W.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    adder2d_int8_quantize(const T* __restrict__ x, float scale, uint32_t* __restrict__ xq,
                          Adder2dInt8Geom q, int64_t total) {
  const Adder2dGeom& g = q.g;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    int64_t rest, pix, ng, word;
    divmod_nonneg(i, g.in_plane, rest, pix);
    divmod_nonneg(rest, q.cw, ng, word);
    int64_t img, grp;
    divmod_nonneg(ng, g.groups, img, grp);
    const int c0 = int(word) * 4;
    const T* xc = x + (img * g.in_channels + grp * g.in_per_group + c0) * g.in_plane + pix;
    uint32_t codes = 0;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const uint32_t u =
          c0 + b < g.in_per_group ? int8_code(float(xc[b * g.in_plane]), scale) : 128u;
      codes |= u << (8 * b);
    }
    xq[(ng * g.in_plane + pix) * q.cw + word] = codes;
  }
}

// wq = the codes of w [Co][C/G][KH][KW] (int8) + 128, in the layout above; one thread per word.
// total = Co * kwords.
__global__ void __launch_bounds__(kThreads)
    adder2d_int8_pack_weight(const int8_t* __restrict__ w, uint32_t* __restrict__ wq,
                             Adder2dInt8Geom q, int64_t total) {
  const Adder2dGeom& g = q.g;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    int64_t gk, m, grp, k, tap, word;
    divmod_nonneg(i, g.out_per_group, gk, m);
    divmod_nonneg(gk, q.kwords, grp, k);
    divmod_nonneg(k, q.cw, tap, word);
    const int c0 = int(word) * 4;
    const int8_t* wc =
        w + ((grp * g.out_per_group + m) * g.in_per_group + c0) * g.kernel_area + tap;
    uint32_t codes = 0;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const uint32_t u =
          c0 + b < g.in_per_group ? uint32_t(int(wc[b * g.kernel_area]) + 128) : 128u;
      codes |= u << (8 * b);
    }
    wq[i] = codes;
  }
}

// Tile shapes: BM output channels x BN pixels per block, BK words per slice, TM x TN outputs per
// thread (multiples of 4).
template <int BM_, int BN_, int BK_, int TM_, int TN_, int MIN_BLOCKS_>
struct Int8Tile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_, MIN_BLOCKS = MIN_BLOCKS_;
};
// Chosen by output channels per group (thresholds set by reasoning, not tuned on a GPU):
using Int8TileLarge = Int8Tile<128, 128, 8, 8, 8, 1>;   // >= 128, if that gives >= 2 blocks per SM
using Int8TileMedium = Int8Tile<64, 64, 8, 4, 4, 2>;    // 33..127
using Int8TileSmall = Int8Tile<32, 128, 8, 4, 4, 2>;    // 17..32
using Int8TileNarrow = Int8Tile<16, 256, 16, 4, 4, 2>;  // 1..16 (depthwise included)

// The position of a word of the reduction: channel word cq of tap (kh, kw); kh == KH is past the
// end (the slices' padding, code 0 in both operands).
struct Int8Tap {
  int cq = 0, kw = 0, kh = 0;
};
__device__ __forceinline__ void int8_tap_advance(Int8Tap& t, int words, int cw, int kernel_w) {
  t.cq += words;
  while (t.cq >= cw) {
    t.cq -= cw;
    if (++t.kw == kernel_w) {
      t.kw = 0;
      ++t.kh;
    }
  }
}

// The next word (cq < cw, so one step wraps at most once).
__device__ __forceinline__ void int8_tap_next(Int8Tap& t, int cw, int kernel_w) {
  if (++t.cq == cw) {
    t.cq = 0;
    if (++t.kw == kernel_w) {
      t.kw = 0;
      ++t.kh;
    }
  }
}

// acc + sum over the 4 bytes of |x_i - w_i|: the PTX vabsdiff4 with .add, one VABSDIFF4.U8.ACC
// into acc (with acc + __vsadu4(x, w), nvcc reassociates the sums of a micro-tile: half the SADs
// into zero, then an IADD3 per pair). The host build (the emulation) computes the same sum.
__device__ __forceinline__ uint32_t sad4_add(uint32_t x, uint32_t w, uint32_t acc) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("vabsdiff4.u32.u32.u32.add %0, %1, %2, %3;" : "=r"(r) : "r"(x), "r"(w), "r"(acc));
  return r;
#else
  return __vsadu4(x, w) + acc;
#endif
}

__device__ __forceinline__ void load4(const uint32_t* p, uint32_t* r) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  r[0] = v.x;
  r[1] = v.y;
  r[2] = v.z;
  r[3] = v.w;
}

// y [N][Co][OH][OW] = alpha * S + beta (relu: 0 > Y ? 0 : Y, as the CPU's maxps keeps -0 and NaN).
// T is the output element (float; the emulation's counted float).
template <typename T, typename Tile>
__global__ void __launch_bounds__(kThreads, Tile::MIN_BLOCKS)
    adder2d_int8_forward_tiled(const uint32_t* __restrict__ xq, const uint32_t* __restrict__ wq,
                               const float* __restrict__ alpha, const float* __restrict__ beta,
                               bool relu, T* __restrict__ y, Adder2dInt8Geom q) {
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, TM = Tile::TM, TN = Tile::TN;
  static_assert((BM / TM) * (BN / TN) == kThreads, "one micro-tile per thread");
  static_assert(kThreads % BN == 0 && (BK * BN) % kThreads == 0, "input slice loads");
  static_assert(kThreads % BM == 0 && (BK * BM) % kThreads == 0, "weight slice loads");
  static_assert(TM % 4 == 0 && TN % 4 == 0, "4-wide shared-memory reads");
  constexpr int XR = BK * BN / kThreads;                         // consecutive words per thread
  constexpr int WR = BK * BM / kThreads, WSTEP = kThreads / BM;  // weight words per thread
  constexpr int MQ = TM / 4, NQ = TN / 4;

  __shared__ __align__(16) uint32_t ws[2][BK][BM];
  __shared__ __align__(16) uint32_t xs[2][BK][BN];

  const Adder2dGeom& g = q.g;
  const int tid = threadIdx.x;
  // Compute layout: thread (ty, tx) owns rows ty*4 + i*(BM/MQ) + [0,4) and columns
  // tx*4 + j*(BN/NQ) + [0,4).
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);
  // Load layout: pixel column lc, words lr*XR + [0, XR) of the input slice; output channel lm,
  // words lwr + j*WSTEP of the weight slice.
  const int lc = tid % BN, lr = tid / BN;
  const int lm = tid % BM, lwr = tid / BM;
  const int64_t n = int64_t(blockIdx.x) * BN + lc;
  const bool col_ok = n < g.columns;
  int64_t img = 0, pix = 0, oh = 0, ow = 0;
  if (col_ok) {
    divmod_nonneg(n, g.out_plane, img, pix);
    divmod_nonneg(pix, g.out_w, oh, ow);
  }
  const int cig_words = q.cw, cog = g.out_per_group;
  const int ih0 = adder2d_in_index_t<int>(int(oh), 0, g.stride_h, g.pad_h, g.dilation_h);
  const int iw0 = adder2d_in_index_t<int>(int(ow), 0, g.stride_w, g.pad_w, g.dilation_w);
  const int mtiles = (cog + BM - 1) / BM;
  const int ksteps = (q.kwords + BK - 1) / BK;
  const int64_t mg = int64_t(g.groups) * mtiles;

  for (int64_t by = blockIdx.y; by < mg; by += gridDim.y) {
    const int grp = int(by / mtiles), m0 = int(by % mtiles) * BM;
    const uint32_t* xg = xq + (img * g.groups + grp) * g.in_plane * cig_words;
    const bool m_ok = m0 + lm < cog;
    const uint32_t* wg = wq + int64_t(grp) * q.kwords * cog + m0 + lm;

    uint32_t xr[XR], wr[WR];
    // Loads the slice starting at word k0 into registers; t is the position of word k0 + lr*XR.
    auto gather = [&](Int8Tap t, int k0) {
#pragma unroll
      for (int j = 0; j < XR; ++j) {
        const int ih = ih0 + t.kh * g.dilation_h, iw = iw0 + t.kw * g.dilation_w;
        const bool ok = col_ok && t.kh < g.kernel_h && unsigned(ih) < unsigned(g.in_h) &&
                        unsigned(iw) < unsigned(g.in_w);
        // A 32-bit offset in the image-group plane (the host checks H * W * cw < 2^31).
        xr[j] = ok ? xg[(ih * g.in_w + iw) * cig_words + t.cq] : kCodeZero4;
        int8_tap_next(t, cig_words, g.kernel_w);
      }
#pragma unroll
      for (int j = 0; j < WR; ++j) {
        const int k = k0 + lwr + j * WSTEP;
        wr[j] = (m_ok && k < q.kwords) ? wg[int64_t(k) * cog] : kCodeZero4;
      }
    };
    auto stash = [&](int buf) {
#pragma unroll
      for (int j = 0; j < XR; ++j) xs[buf][lr * XR + j][lc] = xr[j];
#pragma unroll
      for (int j = 0; j < WR; ++j) ws[buf][lwr + j * WSTEP][lm] = wr[j];
    };

    uint32_t acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0;

    Int8Tap pos;  // of word k0 + lr*XR
    int8_tap_advance(pos, lr * XR, cig_words, g.kernel_w);
    int k0 = 0, buf = 0;
    gather(pos, 0);
    stash(0);
    __syncthreads();
    for (int t = 0; t < ksteps; ++t) {
      const bool more = t + 1 < ksteps;
      if (more) {
        k0 += BK;
        int8_tap_advance(pos, BK, cig_words, g.kernel_w);
        gather(pos, k0);
      }
#pragma unroll
      for (int k = 0; k < BK; ++k) {
        uint32_t a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < MQ; ++i) load4(&ws[buf][k][i * (BM / MQ) + ty * 4], a + 4 * i);
#pragma unroll
        for (int j = 0; j < NQ; ++j) load4(&xs[buf][k][j * (BN / NQ) + tx * 4], b + 4 * j);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = sad4_add(b[j], a[i], acc[i][j]);
      }
      // Safe: every thread passed the previous barrier, so nobody still reads buf ^ 1.
      if (more) stash(buf ^ 1);
      __syncthreads();
      buf ^= 1;
    }

    float av[TM], bv[TM];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int m = m0 + (i / 4) * (BM / MQ) + ty * 4 + i % 4;
      av[i] = m < cog ? alpha[int64_t(grp) * cog + m] : 0.0f;
      bv[i] = m < cog ? beta[int64_t(grp) * cog + m] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t nj = int64_t(blockIdx.x) * BN + (j / 4) * (BN / NQ) + tx * 4 + j % 4;
      if (nj >= g.columns) continue;
      int64_t jimg, jpix;
      divmod_nonneg(nj, g.out_plane, jimg, jpix);
      T* yp = y + (jimg * g.out_channels + int64_t(grp) * cog + m0) * g.out_plane + jpix;
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int r = (i / 4) * (BM / MQ) + ty * 4 + i % 4;
        if (m0 + r >= cog) continue;
        // S < 2^31 (checked on the host), so the int conversion is exact.
        float v = __fadd_rn(__fmul_rn(__int2float_rn(int(acc[i][j])), av[i]), bv[i]);
        if (relu) v = 0.0f > v ? 0.0f : v;
        yp[r * g.out_plane] = T(v);
      }
    }
  }
}

// Launch configuration (host, torch-free: the CUDA entry and the CPU emulation both call it).

enum class Int8Variant { Large, Medium, Small, Narrow };

inline const char* int8_variant_name(Int8Variant v) {
  switch (v) {
    case Int8Variant::Large:
      return "int8_forward_tiled_128x128";
    case Int8Variant::Medium:
      return "int8_forward_tiled_64x64";
    case Int8Variant::Small:
      return "int8_forward_tiled_32x128";
    case Int8Variant::Narrow:
      return "int8_forward_tiled_16x256";
  }
  return "?";
}

struct Int8Launch {
  Int8Variant variant;
  int64_t grid_x = 0, grid_y = 1;  // forward blocks
  int64_t quantize_total = 0, quantize_blocks = 0;
  int64_t pack_total = 0, pack_blocks = 0;
  bool fits = true;  // false: batch * OH * OW needs more than 2^31 - 1 blocks
};

inline Int8Launch adder2d_int8_launch_variant(const Adder2dInt8Geom& q, Int8Variant v,
                                              const LaunchLimits& lim) {
  const Adder2dGeom& g = q.g;
  Int8Launch c;
  c.variant = v;
  c.quantize_total = g.batch * g.groups * q.cw * g.in_plane;
  c.quantize_blocks = std::min<int64_t>(ceil_div(c.quantize_total, kThreads), lim.max_blocks_1d);
  c.pack_total = g.out_channels * int64_t(q.kwords);
  c.pack_blocks = std::min<int64_t>(ceil_div(c.pack_total, kThreads), lim.max_blocks_1d);
  int64_t bn = 0, bm = 0;
  switch (v) {
    case Int8Variant::Large:
      bn = Int8TileLarge::BN, bm = Int8TileLarge::BM;
      break;
    case Int8Variant::Medium:
      bn = Int8TileMedium::BN, bm = Int8TileMedium::BM;
      break;
    case Int8Variant::Small:
      bn = Int8TileSmall::BN, bm = Int8TileSmall::BM;
      break;
    case Int8Variant::Narrow:
      bn = Int8TileNarrow::BN, bm = Int8TileNarrow::BM;
      break;
  }
  c.grid_x = ceil_div(g.columns, bn);
  c.grid_y = std::min<int64_t>(int64_t(g.groups) * ceil_div(g.out_per_group, bm), lim.max_grid_y);
  c.fits = c.grid_x <= INT32_MAX;
  return c;
}

// The entry's choice by output channels per group: 128x128 for >= 128 when that gives at least two
// blocks per SM, 64x64 for 33..127 (and >= 128 on a small grid), 32x128 for 17..32, 16x256 below.
inline Int8Launch adder2d_int8_launch(const Adder2dInt8Geom& q, const LaunchLimits& lim) {
  const Adder2dGeom& g = q.g;
  const int64_t cog = g.out_per_group;
  Int8Variant v;
  const int64_t large_blocks =
      ceil_div(g.columns, Int8TileLarge::BN) * ceil_div(cog, Int8TileLarge::BM) * g.groups;
  if (cog >= 128 && large_blocks >= 2 * int64_t(lim.sm_count)) {
    v = Int8Variant::Large;
  } else if (cog > 32) {
    v = Int8Variant::Medium;
  } else if (cog > 16) {
    v = Int8Variant::Small;
  } else {
    v = Int8Variant::Narrow;
  }
  return adder2d_int8_launch_variant(q, v, lim);
}

}  // namespace cuda
}  // namespace addernet
