// Device code of the adder2d forward (schema in adder2d_library.cpp), free of torch headers:
// included by the CUDA launcher (adder2d_cuda.cu) and by the CPU emulation
// (tests/cuda_emulation/).
//
//
//   Y[n,co,oh,ow] = bias[co] - sum_{ci,kh,kw} |Xp[n, c, oh*sh+kh*dh-ph, ow*sw+kw*dw-pw] - W[co,ci,kh,kw]|
//
// with c = grp(co) * (C/groups) + ci, grp(co) = co / (Co/groups) the group of output channel co,
// and Xp the zero-padded input: padded taps count and add -|W|.
//
// Implicit GEMM per group: M = output channels of the group, N = batch*OH*OW output pixels,
// K = (C/groups)*KH*KW taps. A block owns a BM x BN tile of Y. K is walked tap by tap (kh, kw)
// and, within a tap, in slices of BK input channels; each slice of the input patches is gathered
// from X into shared memory on the fly (zeros for padded taps and for channels past C/groups),
// next to the matching BK x BM slice of the weight, read from W permuted to [KH, KW, C/g, Co] so
// that those loads are coalesced. Shared memory is double-buffered: the next slice is loaded
// into registers while the current one is consumed, then stored to the other buffer, one
// barrier per slice. Each thread accumulates a TM x TN register micro-tile with
// acc += |x - w| (two adds: x - w, then acc + |.| with the absolute value as an operand
// modifier) and the epilogue writes bias - acc. No im2col buffer exists in global memory.
//
// Groups with at most 4 output channels (depthwise and near-depthwise convolutions) use a
// direct kernel instead: one thread per output element, taps in the CPU's order.
// float16 and bfloat16 are loaded as float, accumulated in float and rounded once; float64
// accumulates in double.
#pragma once

#include <algorithm>
#include <cstdint>

#include "adder2d_cuda_common.cuh"

namespace addernet {
namespace cuda {

// Tile shapes: BM output channels x BN pixels per block, BK input channels per shared-memory
// slice, TM x TN outputs per thread (multiples of 4, read as 4-wide vectors from shared memory).
template <int BM_, int BN_, int BK_, int TM_, int TN_, int MIN_BLOCKS_>
struct ForwardTile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_, MIN_BLOCKS = MIN_BLOCKS_;
};
// Chosen by output channels per group (thresholds set by reasoning, not yet tuned on a GPU): the
// smallest BM that holds the group's channels, since rows past them are computed and dropped, as
// long as the grid still fills the GPU (adder2d_forward_launch).
using TileLarge = ForwardTile<128, 128, 8, 8, 8, 1>;  // >= 128, if that gives >= 2 blocks per SM
using TileMedium = ForwardTile<64, 64, 16, 4, 4, 2>;  // 33..127, and every float64 case
using TileSmall = ForwardTile<32, 128, 16, 4, 4, 2>;  // 17..32
using TileNarrow =
    ForwardTile<16, 256, 16, 4, 4, 2>;  // 5..16, if >= 2 blocks per SM (1..4: direct)

template <typename T, typename A, typename Tile>
__global__ void __launch_bounds__(kThreads, Tile::MIN_BLOCKS)
    adder2d_forward_tiled(const T* __restrict__ x, const T* __restrict__ wt,
                          const T* __restrict__ bias, T* __restrict__ y, Adder2dGeom g) {
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, TM = Tile::TM, TN = Tile::TN;
  static_assert((BM / TM) * (BN / TN) == kThreads, "one micro-tile per thread");
  static_assert(kThreads % BN == 0 && (BK * BN) % kThreads == 0, "input slice loads");
  static_assert(kThreads % BM == 0 && (BK * BM) % kThreads == 0, "weight slice loads");
  static_assert(TM % 4 == 0 && TN % 4 == 0, "4-wide shared-memory reads");
  static_assert(sizeof(A) * 2 * BK * (BM + BN) <= 48 * 1024, "static shared memory: 48 KiB");
  constexpr int XR = BK * BN / kThreads, XSTEP = kThreads / BN;  // input elements per thread
  constexpr int WR = BK * BM / kThreads, WSTEP = kThreads / BM;  // weight elements per thread
  constexpr int MQ = TM / 4, NQ = TN / 4;

  __shared__ __align__(16) A ws[2][BK][BM];
  __shared__ __align__(16) A xs[2][BK][BN];

  const int tid = threadIdx.x;
  // Compute layout: thread (ty, tx) owns rows ty*4 + q*(BM/MQ) + [0,4) and columns
  // tx*4 + q*(BN/NQ) + [0,4): consecutive threads read consecutive 16-byte words.
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);

  // Load layout: this thread gathers pixel column lc of the input slice (rows lr + j*XSTEP)
  // and output channel lm of the weight slice (rows lwr + j*WSTEP).
  const int lc = tid % BN, lr = tid / BN;
  const int lm = tid % BM, lwr = tid / BM;
  const int64_t n = int64_t(blockIdx.x) * BN + lc;
  const bool col_ok = n < g.columns;
  int64_t img = 0, pix = 0, oh = 0, ow = 0;
  if (col_ok) {
    divmod_nonneg(n, g.out_plane, img, pix);
    divmod_nonneg(pix, g.out_w, oh, ow);
  }

  const int cig = g.in_per_group, cog = g.out_per_group;
  const int mtiles = (cog + BM - 1) / BM;
  const int ctiles = (cig + BK - 1) / BK;
  const int64_t ksteps = int64_t(g.kernel_area) * ctiles;
  const int64_t mg = int64_t(g.groups) * mtiles;

  for (int64_t by = blockIdx.y; by < mg; by += gridDim.y) {
    const int grp = int(by / mtiles), m0 = int(by % mtiles) * BM;
    const T* xg = x + (img * g.in_channels + int64_t(grp) * cig) * g.in_plane;
    const bool m_ok = m0 + lm < cog;
    const T* wg = wt + int64_t(grp) * cog + m0 + lm;  // wt[((kh*KW + kw)*cig + ci)*Co + co]

    A xr[XR], wr[WR];
    // Loads slice (kh, kw, channels c0..c0+BK) into registers.
    auto gather = [&](int kh, int kw, int c0) {
      const int ih = adder2d_in_index_t<int>(int(oh), kh, g.stride_h, g.pad_h, g.dilation_h);
      const int iw = adder2d_in_index_t<int>(int(ow), kw, g.stride_w, g.pad_w, g.dilation_w);
      const bool ok = col_ok && unsigned(ih) < unsigned(g.in_h) && unsigned(iw) < unsigned(g.in_w);
      const T* xp = xg + (ok ? int64_t(ih) * g.in_w + iw : 0);
#pragma unroll
      for (int j = 0; j < XR; ++j) {
        const int ci = c0 + lr + j * XSTEP;
        xr[j] = (ok && ci < cig) ? static_cast<A>(xp[ci * g.in_plane]) : A(0);
      }
      const int64_t tap_row = int64_t(kh * g.kernel_w + kw) * cig;
#pragma unroll
      for (int j = 0; j < WR; ++j) {
        const int ci = c0 + lwr + j * WSTEP;
        wr[j] = (m_ok && ci < cig) ? static_cast<A>(wg[(tap_row + ci) * g.out_channels]) : A(0);
      }
    };
    auto stash = [&](int buf) {
#pragma unroll
      for (int j = 0; j < XR; ++j) xs[buf][lr + j * XSTEP][lc] = xr[j];
#pragma unroll
      for (int j = 0; j < WR; ++j) ws[buf][lwr + j * WSTEP][lm] = wr[j];
    };

    A acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = A(0);

    int kh = 0, kw = 0, c0 = 0, buf = 0;
    gather(0, 0, 0);
    stash(0);
    __syncthreads();
    for (int64_t t = 0; t < ksteps; ++t) {
      const bool more = t + 1 < ksteps;
      if (more) {
        c0 += BK;
        if (c0 >= cig) {
          c0 = 0;
          if (++kw == g.kernel_w) {
            kw = 0;
            ++kh;
          }
        }
        gather(kh, kw, c0);
      }
#pragma unroll
      for (int k = 0; k < BK; ++k) {
        A a[TM], b[TN];
#pragma unroll
        for (int q = 0; q < MQ; ++q) load4(&ws[buf][k][q * (BM / MQ) + ty * 4], a + 4 * q);
#pragma unroll
        for (int q = 0; q < NQ; ++q) load4(&xs[buf][k][q * (BN / NQ) + tx * 4], b + 4 * q);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] += adder_abs(b[j] - a[i]);
      }
      // Safe: every thread passed the previous barrier, so nobody still reads buf ^ 1.
      if (more) stash(buf ^ 1);
      __syncthreads();
      buf ^= 1;
    }

    A bv[TM];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int m = m0 + (i / 4) * (BM / MQ) + ty * 4 + i % 4;
      bv[i] = (bias != nullptr && m < cog) ? static_cast<A>(bias[int64_t(grp) * cog + m]) : A(0);
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
        if (m0 + r < cog) yp[r * g.out_plane] = static_cast<T>(bv[i] - acc[i][j]);
      }
    }
  }
}

// One thread per output element, taps in the order (ci, kh, kw).
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    adder2d_forward_direct(const T* __restrict__ x, const T* __restrict__ w,
                           const T* __restrict__ bias, T* __restrict__ y, Adder2dGeom g,
                           int64_t total) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    int64_t nc, pix, img, co, oh, ow;
    divmod_nonneg(idx, g.out_plane, nc, pix);
    divmod_nonneg(nc, g.out_channels, img, co);
    divmod_nonneg(pix, g.out_w, oh, ow);
    const int64_t grp = co / g.out_per_group;
    const T* xg = x + (img * g.in_channels + grp * g.in_per_group) * g.in_plane;
    const T* wc = w + co * g.taps;
    A acc = A(0);
    for (int ci = 0; ci < g.in_per_group; ++ci) {
      const T* xc = xg + ci * g.in_plane;
      for (int kh = 0; kh < g.kernel_h; ++kh) {
        const int ih = adder2d_in_index_t<int>(int(oh), kh, g.stride_h, g.pad_h, g.dilation_h);
        const bool row_ok = unsigned(ih) < unsigned(g.in_h);
        for (int kw = 0; kw < g.kernel_w; ++kw) {
          const int iw = adder2d_in_index_t<int>(int(ow), kw, g.stride_w, g.pad_w, g.dilation_w);
          const A xv = (row_ok && unsigned(iw) < unsigned(g.in_w))
                           ? static_cast<A>(xc[int64_t(ih) * g.in_w + iw])
                           : A(0);
          acc += adder_abs(xv - static_cast<A>(*wc++));
        }
      }
    }
    const A b = bias != nullptr ? static_cast<A>(bias[co]) : A(0);
    y[idx] = static_cast<T>(b - acc);
  }
}

// Launch configuration (host, torch-free: the CUDA launcher and the CPU emulation both call it).

enum class ForwardVariant { Direct, TiledLarge, TiledMedium, TiledSmall, TiledNarrow };

inline const char* forward_variant_name(ForwardVariant v) {
  switch (v) {
    case ForwardVariant::Direct:
      return "forward_direct";
    case ForwardVariant::TiledLarge:
      return "forward_tiled_128x128";
    case ForwardVariant::TiledMedium:
      return "forward_tiled_64x64";
    case ForwardVariant::TiledSmall:
      return "forward_tiled_32x128";
    case ForwardVariant::TiledNarrow:
      return "forward_tiled_16x256";
  }
  return "?";
}

struct ForwardLaunch {
  ForwardVariant variant;
  int64_t grid_x = 0, grid_y = 1;  // blocks; grid_y is 1 for the direct kernel
  int64_t total = 0;               // output elements (the direct kernel's loop bound)
  bool fits = true;                // false: batch * OH * OW needs more than 2^31 - 1 blocks
};

// The grid of a given variant (also used by the emulation to force a variant onto any shape).
inline ForwardLaunch adder2d_forward_launch_variant(const Adder2dGeom& g, ForwardVariant v,
                                                    const LaunchLimits& lim) {
  ForwardLaunch c;
  c.variant = v;
  c.total = g.batch * g.out_channels * g.out_plane;
  int64_t bn = 0, bm = 0;
  switch (v) {
    case ForwardVariant::Direct:
      c.grid_x = std::min<int64_t>(ceil_div(c.total, kThreads), lim.max_blocks_1d);
      return c;
    case ForwardVariant::TiledLarge:
      bn = TileLarge::BN, bm = TileLarge::BM;
      break;
    case ForwardVariant::TiledMedium:
      bn = TileMedium::BN, bm = TileMedium::BM;
      break;
    case ForwardVariant::TiledSmall:
      bn = TileSmall::BN, bm = TileSmall::BM;
      break;
    case ForwardVariant::TiledNarrow:
      bn = TileNarrow::BN, bm = TileNarrow::BM;
      break;
  }
  c.grid_x = ceil_div(g.columns, bn);
  c.grid_y = std::min<int64_t>(int64_t(g.groups) * ceil_div(g.out_per_group, bm), lim.max_grid_y);
  c.fits = c.grid_x <= INT32_MAX;
  return c;
}

// The launcher's choice: 1..4 output channels per group use the direct kernel; float64 the
// 64x64 tile; otherwise 128x128 for >= 128 output channels per group when that gives at least
// two blocks per SM, 64x64 for 33..127, 32x128 for 17..32, and for 5..16 16x256 when that gives
// at least two blocks per SM, else 32x128. A thread computes 16 outputs in either of the last
// two, so a 16x256 block takes about as long as a 32x128 one while doing up to twice its useful
// work: it halves the blocks, which gains only when there is more than one wave of them.
inline ForwardLaunch adder2d_forward_launch(const Adder2dGeom& g, bool double_acc,
                                            const LaunchLimits& lim) {
  const int64_t cog = g.out_per_group;
  ForwardVariant v;
  if (cog <= 4) {
    v = ForwardVariant::Direct;
  } else if (double_acc) {
    v = ForwardVariant::TiledMedium;
  } else {
    const int64_t large_blocks =
        ceil_div(g.columns, TileLarge::BN) * ceil_div(cog, TileLarge::BM) * g.groups;
    const int64_t narrow_blocks = ceil_div(g.columns, TileNarrow::BN) * g.groups;
    if (cog >= 128 && large_blocks >= 2 * int64_t(lim.sm_count)) {
      v = ForwardVariant::TiledLarge;
    } else if (cog > 32) {
      v = ForwardVariant::TiledMedium;
    } else if (cog > 16 || narrow_blocks < 2 * int64_t(lim.sm_count)) {
      v = ForwardVariant::TiledSmall;
    } else {
      v = ForwardVariant::TiledNarrow;
    }
  }
  return adder2d_forward_launch_variant(g, v, lim);
}

}  // namespace cuda
}  // namespace addernet
