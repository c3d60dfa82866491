// Device code of the adder2d weight gradient (schema in adder2d_library.cpp), free of torch
// headers: included by the CUDA launcher (adder2d_weight_grad_cuda.cu) and by the CPU emulation.
// AdderNet's full-precision rule:
//
//   dW[co,ci,kh,kw] = sum_{n,oh,ow} dY[n,co,oh,ow] * (Xp[n, c, oh*sh+kh*dh-ph, ow*sw+kw*dw-pw] - W[co,ci,kh,kw])
//
// with c = grp(co) * (C/groups) + ci, grp(co) = co / (Co/groups) the group of output channel co,
// and Xp the zero-padded input: padded taps count and add dY * (0 - W).
//
// A GEMM-shaped reduction per group: dW is [Co/g, K] with K = (C/g)*KH*KW, reduced over the
// P = N*OH*OW output pixels. A block owns a 64 x 64 tile of dW (output channels x taps) and one
// contiguous chunk of pixels, and computes the chunk's part of dW by the decomposition
//
//   sum_{p in chunk} dY[co,p] (Xp[k,p] - W[co,k])
//     = sum_{p in chunk} dY[co,p] (Xp[k,p] - c_k) - (W[co,k] - c_k) sum_{p in chunk} dY[co,p],
//
// exact for any c_k, so each chunk's partial is the exact chunk sum whatever c_k it uses. Here
// c_k = mean of W[co,k] over the tile's channels (summed in a fixed order in the accumulation
// type), which keeps the cancellation between the two terms small when the weights share an
// offset (|W| large against |Xp - W|, as in trained networks). The block stages 16 pixels at a
// time of dY (64 channels) and of Xp - c_k (64 taps, Xp = 0 for padded taps) in shared memory;
// each thread accumulates a 4 x 4 register micro-tile of dY * (Xp - c), one FMA per tap, into a
// fresh partial per 16-pixel step that is then added to the running sum. Threads 0-63 (two whole
// warps) sum dY per channel alongside (16 pixels in order, then step by step); the
// -(W - c) sum dY term is applied once at the end.
//
// Deterministic, no floating-point atomics: the number of pixel chunks (splits) depends only on
// the shape; with one split the block writes dW directly, otherwise each split writes its partial
// tile to a workspace [splits, Co, K] and a second kernel adds the splits in a fixed order.
// Accumulation is in float (float, float16, bfloat16) or double (float64), and so is the
// workspace; the result is rounded once to the weight's dtype.
//
// Rounding error, to first order, with u the unit roundoff of the accumulation type, u_T that of
// the weight's dtype, S the 16-pixel steps per split and m = WG_BP + S + splits the most roundings
// a term goes through (Xp - c, the FMA chain of a step, the running sum, the correction, the split
// sum):
//   |err| <= u_T |dW| + (m + 2) u sum_p |dY[co,p]| (|Xp[k,p] - W[co,k]| + 2 |W[co,k] - c_k|),
// with c_k the centre of the tile holding co, against about m u sum_p |dY| |Xp - W| for the direct
// form dY * (Xp - W) in the same order. tests/cuda_emulation/emulate_adder2d.cpp checks it
// elementwise with the launch's S and splits, and tests/test_adder2d_cuda.py on the GPU.
#pragma once

#include <algorithm>
#include <cstdint>

#include "adder2d_cuda_common.cuh"

namespace addernet {
namespace cuda {

constexpr int WG_BM = 64;  // output channels per tile
constexpr int WG_BK = 64;  // taps per tile
constexpr int WG_BP = 16;  // pixels per shared-memory step
constexpr int WG_PAD = 4;  // row padding of the shared tiles: 4-wide reads without bank conflicts
constexpr int WG_T = 4;    // micro-tile: 4 channels x 4 taps per thread

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, sizeof(A) == 4 ? 2 : 1)
    adder2d_weight_grad_tiled(const T* __restrict__ dy, const T* __restrict__ x,
                              const T* __restrict__ w, T* __restrict__ out, A* __restrict__ partial,
                              Adder2dGeom g, int64_t chunk) {
  static_assert((WG_BM / WG_T) * (WG_BK / WG_T) == kThreads, "one micro-tile per thread");
  static_assert(kThreads % WG_BP == 0 && WG_BM == WG_BK, "load layout");
  static_assert(kThreads / WG_BK <= WG_BP + WG_PAD, "centre sums fit in a row of xs");
  constexpr int LR = kThreads / WG_BP;  // rows loaded per pass
  constexpr int LN = WG_BM / LR;        // passes

  __shared__ __align__(16) A ds[WG_BM][WG_BP + WG_PAD];
  __shared__ __align__(16) A xs[WG_BK][WG_BP + WG_PAD];  // Xp - c of the tile's taps
  // The tile's taps decoded once: input channel offset ci*H*W (-1 past K), kh and kw.
  __shared__ int64_t tap_offset[WG_BK];
  __shared__ int tap_kh[WG_BK], tap_kw[WG_BK];
  __shared__ A centre[WG_BK];  // c_k: mean of W over the tile's channels
  __shared__ A dy_sum[WG_BM];  // sum of dY over the block's pixels, per channel

  const int cig = g.in_per_group, cog = g.out_per_group;
  const int mtiles = (cog + WG_BM - 1) / WG_BM;
  const int64_t ktiles = (g.taps + WG_BK - 1) / WG_BK;
  const int64_t kt = blockIdx.x % ktiles, rest = blockIdx.x / ktiles;
  const int m0 = int(rest % mtiles) * WG_BM;
  const int64_t grp = rest / mtiles;
  const int64_t k0 = kt * WG_BK;
  const int64_t p_begin = int64_t(blockIdx.y) * chunk;
  const int64_t p_end = std::min(g.columns, p_begin + chunk);
  const int channels = cog - m0 < WG_BM ? cog - m0 : WG_BM;  // valid channels of the tile

  const int tid = threadIdx.x;
  // Compute layout: thread (ty, tx) owns channels m0 + ty + 16*i and taps k0 + tx + 16*j.
  const int tx = tid % (WG_BK / WG_T), ty = tid / (WG_BK / WG_T);
  // Load layout: pixel lp of the step, rows lr + LR*j of both tiles.
  const int lp = tid % WG_BP, lr = tid / WG_BP;

  if (tid < WG_BK) {
    const int64_t k = k0 + tid;
    const int64_t ci = k / g.kernel_area, tap = k - ci * g.kernel_area;
    tap_offset[tid] = k < g.taps ? ci * g.in_plane : -1;
    tap_kh[tid] = int(tap / g.kernel_w);
    tap_kw[tid] = int(tap % g.kernel_w);
  }
  // The centre, in a fixed order: thread (part, kk) sums W over the channels part, part + 4, ...
  // of tap k0 + kk into xs[kk][part] (xs is free until the pixel loop); thread kk adds the 4.
  {
    constexpr int PARTS = kThreads / WG_BK;
    const int kk = tid % WG_BK, part = tid / WG_BK;
    const int64_t k = k0 + kk;
    A s = A(0);
#pragma unroll
    for (int u = 0; u < WG_BM / PARTS; ++u) {
      const int t = part + PARTS * u;
      if (t < channels && k < g.taps) s += static_cast<A>(w[(grp * cog + m0 + t) * g.taps + k]);
    }
    xs[kk][part] = s;
  }
  __syncthreads();
  if (tid < WG_BK) {
    A s = A(0);
#pragma unroll
    for (int part = 0; part < kThreads / WG_BK; ++part) s += xs[tid][part];
    centre[tid] = s / static_cast<A>(channels);
  }
  if (tid < WG_BM) dy_sum[tid] = A(0);  // from here on thread tid's alone until the loop ends
  A acc[WG_T][WG_T];
#pragma unroll
  for (int i = 0; i < WG_T; ++i)
#pragma unroll
    for (int j = 0; j < WG_T; ++j) acc[i][j] = A(0);
  __syncthreads();

  for (int64_t p0 = p_begin; p0 < p_end; p0 += WG_BP) {
    const int64_t p = p0 + lp;
    const bool p_ok = p < p_end;
    int64_t img = 0, pix = 0, oh = 0, ow = 0;
    if (p_ok) {
      divmod_nonneg(p, g.out_plane, img, pix);
      divmod_nonneg(pix, g.out_w, oh, ow);
    }
    const T* dyp = dy + (img * g.out_channels + grp * cog + m0) * g.out_plane + pix;
    const T* xg = x + (img * g.in_channels + grp * cig) * g.in_plane;
#pragma unroll
    for (int j = 0; j < LN; ++j) {
      const int r = lr + LR * j;
      ds[r][lp] = (p_ok && m0 + r < cog) ? static_cast<A>(dyp[r * g.out_plane]) : A(0);
      const int64_t off = tap_offset[r];
      const int ih = adder2d_in_index_t<int>(int(oh), tap_kh[r], g.stride_h, g.pad_h, g.dilation_h);
      const int iw = adder2d_in_index_t<int>(int(ow), tap_kw[r], g.stride_w, g.pad_w, g.dilation_w);
      const bool ok =
          p_ok && off >= 0 && unsigned(ih) < unsigned(g.in_h) && unsigned(iw) < unsigned(g.in_w);
      // Pixels past the chunk hold dY = 0: whatever xs holds there adds nothing.
      xs[r][lp] = (ok ? static_cast<A>(xg[off + int64_t(ih) * g.in_w + iw]) : A(0)) - centre[r];
    }
    __syncthreads();
    if (tid < WG_BM) {  // whole warps: sum dY of the step, in pixel order
      A s = A(0);
#pragma unroll
      for (int q0 = 0; q0 < WG_BP; q0 += 4) {
        A d[4];
        load4(&ds[tid][q0], d);
#pragma unroll
        for (int q = 0; q < 4; ++q) s += d[q];
      }
      dy_sum[tid] += s;
    }
    A part[WG_T][WG_T];
#pragma unroll
    for (int i = 0; i < WG_T; ++i)
#pragma unroll
      for (int j = 0; j < WG_T; ++j) part[i][j] = A(0);
#pragma unroll
    for (int q0 = 0; q0 < WG_BP; q0 += 4) {
      A xv[WG_T][4];
#pragma unroll
      for (int j = 0; j < WG_T; ++j) load4(&xs[tx + 16 * j][q0], xv[j]);
#pragma unroll
      for (int i = 0; i < WG_T; ++i) {
        A d[4];
        load4(&ds[ty + 16 * i][q0], d);
#pragma unroll
        for (int q = 0; q < 4; ++q)
#pragma unroll
          for (int j = 0; j < WG_T; ++j) part[i][j] += d[q] * xv[j][q];
      }
    }
#pragma unroll
    for (int i = 0; i < WG_T; ++i)
#pragma unroll
      for (int j = 0; j < WG_T; ++j) acc[i][j] += part[i][j];
    __syncthreads();
  }

  // This chunk's exact partial: sum dY (Xp - c) - (W - c) sum dY.
  const int64_t elems = g.out_channels * g.taps;
#pragma unroll
  for (int i = 0; i < WG_T; ++i) {
    const int m = m0 + ty + 16 * i;
    if (m >= cog) continue;
#pragma unroll
    for (int j = 0; j < WG_T; ++j) {
      const int64_t k = k0 + tx + 16 * j;
      if (k >= g.taps) continue;
      const int64_t e = (grp * cog + m) * g.taps + k;
      const A dw = acc[i][j] - (static_cast<A>(w[e]) - centre[tx + 16 * j]) * dy_sum[ty + 16 * i];
      if (partial != nullptr) {
        partial[blockIdx.y * elems + e] = dw;
      } else {
        out[e] = static_cast<T>(dw);
      }
    }
  }
}

// out[e] = sum over splits s = 0, 1, ... of partial[s, e], in that order.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    adder2d_weight_grad_sum_splits(const A* __restrict__ partial, T* __restrict__ out,
                                   int64_t elems, int splits) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < elems; e += step) {
    A sum = A(0);
    for (int s = 0; s < splits; ++s) sum += partial[s * elems + e];
    out[e] = static_cast<T>(sum);
  }
}

// Launch configuration (host, torch-free: the CUDA launcher and the CPU emulation both call it).

// About this many blocks are aimed at by splitting the pixels; a constant, so that the split (and
// with it every bit of the result) depends on the shape alone, not on the GPU.
constexpr int64_t kTargetBlocks = 1024;
// Every split reduces at least this many 16-pixel steps.
constexpr int64_t kMinStepsPerSplit = 8;

struct WeightGradLaunch {
  int64_t tiles = 0;       // grid.x of the tiled kernel: groups x channel tiles x tap tiles
  int64_t splits = 1;      // grid.y: pixel chunks; > 1 adds a workspace and the split sum
  int64_t chunk = 0;       // pixels per split (a multiple of WG_BP; the last chunk may be shorter)
  int64_t elems = 0;       // weight elements
  int64_t sum_blocks = 0;  // grid of adder2d_weight_grad_sum_splits (grid-stride loop)
  bool fits = true;        // false: more than 2^31 - 1 tiles
};

// The split count depends on the shape and lim.max_grid_y only (65535 on the GPU).
inline WeightGradLaunch adder2d_weight_grad_launch(const Adder2dGeom& g, const LaunchLimits& lim) {
  WeightGradLaunch c;
  c.elems = g.out_channels * g.taps;
  c.tiles = int64_t(g.groups) * ceil_div(g.out_per_group, WG_BM) * ceil_div(g.taps, WG_BK);
  c.fits = c.tiles <= INT32_MAX;
  const int64_t steps = ceil_div(g.columns, WG_BP);  // 0 for an empty batch: dW = 0
  int64_t splits = std::min(std::max<int64_t>(kTargetBlocks / std::max<int64_t>(c.tiles, 1), 1),
                            std::max<int64_t>(ceil_div(steps, kMinStepsPerSplit), 1));
  splits = std::min<int64_t>(splits, lim.max_grid_y);
  const int64_t steps_per_split = std::max<int64_t>(ceil_div(steps, splits), 1);
  c.splits = std::max<int64_t>(ceil_div(steps, steps_per_split), 1);
  c.chunk = steps_per_split * WG_BP;
  c.sum_blocks = std::min<int64_t>(ceil_div(c.elems, kThreads), lim.max_sum_blocks);
  return c;
}

}  // namespace cuda
}  // namespace addernet
