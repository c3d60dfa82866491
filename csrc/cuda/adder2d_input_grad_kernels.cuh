// Device code of the adder2d input gradient (schema in adder2d_library.cpp), free of torch
// headers: included by the CUDA launcher (adder2d_input_grad_cuda.cu) and by the CPU emulation.
//
//
//   dX[n,c,h,w] = sum over every (co, kh, kw, oh, ow) whose tap lands on (h, w) of
//                 dY[n,co,oh,ow] * HT(W[co,ci,kh,kw] - X[n,c,h,w])
//
// with c = grp * (C/groups) + ci, co running over the output channels of group grp, and
// HT(z) = clamp(z, -1, 1) (mode "hardtanh", AdderNet's rule) or sign(z) (mode "exact").
// (oh, ow) = adder2d_out_index of (h, w) through tap (kh, kw): exact for any stride, taps whose
// offset is not a multiple of the stride read nothing.
//
// Two kernels, chosen by adder2d_input_grad_launch from the shape alone:
//
// Tiled (strides up to IG_MAX_STRIDE and at least IG_MIN_CHANNELS input channels per group): a
// transposed implicit GEMM per phase. A phase (qh, qw) is the set of input pixels with
// h % sh == qh and w % sw == qw; through a tap (kh, kw) either all of them read an output pixel or
// none does: kh is a tap of the phase iff qh + ph - kh*dh is a multiple of sh, and then pixel
// h = qh + sh*a reads row oh = a + (qh + ph - kh*dh) / sh (the same along w). The taps of a phase
// form an arithmetic progression on each axis (Adder2dPhaseAxis, adder2d_shape.h); at stride 1
// there is one phase and every tap (the kernel is then instantiated without the phase arithmetic,
// PHASED false). Per group and phase, dX[c, p] = sum_k HT(W[k, c] - X[c, p]) * D[k, p] with p =
// (n, a, b) the phase's pixel, k = (kh, kw, co) the reduction index (the phase's taps row-major,
// then the group's output channels ascending) and D[k, p] = dY[n, co, oh, ow], or 0 where the tap
// lands outside the output. A block owns IG_BC = 16 input channels of one group and IG_BP = 256
// consecutive pixels of one phase (flattened over batch and the phase's rows and columns; the
// tiles of phase (0, 0) first, then (0, 1), ...). It walks k in steps of IG_BK = 8 output
// channels of one tap: each thread
// gathers D for its own pixel of the tile (8 values, one per output channel; the tap's (oh, ow)
// is computed once per tap) and one W value into registers while the block computes the previous
// step, then stores them to shared memory (one buffer, a barrier on each side of the store).
// Each thread holds a 4 x 4 register micro-tile: 4 input channels (warp-uniform, one LDS.128 of
// W per step row) x 4 pixels (lane + 64 j: consecutive across a warp, conflict-free), and per
// step row does 16 terms of 4 FP instructions: FADD (W - X), two FMNMX (the clamp, NaN-keeping
// max.NaN/min.NaN on sm_80+), FFMA. "exact" takes sign(z) = clamp(z * 2^75 * 2^75) (2^537 in
// float64): the smallest subnormal times 2^150 reaches 1, zero stays zero, NaN stays NaN (two
// FMUL more per term).
//
// Gather (every other shape: depthwise and few-channel layers, strides past IG_MAX_STRIDE): one
// thread owns one input element. For each tap (kh, kw) it
// computes the output pixel (oh, ow) that reads it, then sums over the group's output channels.
// The weights read in the inner loop are the same for all threads of a warp (one broadcast load);
// the dY loads are coalesced along w for stride 1.
//
// Summation order, both kernels: each dX element is summed by one thread in one FMA chain, taps
// row-major (kh, then kw), then output channels ascending; no atomics, deterministic. The tiled
// kernel also adds 0 * HT(W - X) for the taps of its phase that land outside the output (the
// gather skips them): the same value, except that a NaN in X or W then reaches every pixel of its
// channel in the tile.
// float16 and bfloat16 accumulate in float, float64 in double.
#pragma once

#include <algorithm>
#include <cstdint>

#include "adder2d_cuda_common.cuh"

namespace addernet {
namespace cuda {

template <typename A, bool SIGN>
__device__ __forceinline__ A input_grad_weight(A z) {
  if (SIGN) return A((z > A(0)) - (z < A(0)));
  return z < A(-1) ? A(-1) : (z > A(1) ? A(1) : z);  // NaN stays NaN, as on the CPU
}

template <typename T, typename A, bool SIGN>
__global__ void __launch_bounds__(kThreads)
    adder2d_input_grad_gather(const T* __restrict__ dy, const T* __restrict__ x,
                              const T* __restrict__ w, T* __restrict__ gx, Adder2dGeom g,
                              int64_t total) {
  const int cig = g.in_per_group, cog = g.out_per_group;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    int64_t nc, pix, img, c, ih, iw;
    divmod_nonneg(idx, g.in_plane, nc, pix);
    divmod_nonneg(nc, g.in_channels, img, c);
    divmod_nonneg(pix, g.in_w, ih, iw);
    const int64_t grp = c / cig, ci = c - grp * cig;
    const A xv = static_cast<A>(x[idx]);
    // dY[img, grp*cog + co] and W[grp*cog + co, ci]; consecutive co are out_plane / taps apart.
    const T* dyg = dy + (img * g.out_channels + grp * cog) * g.out_plane;
    const T* wg = w + (grp * cog * cig + ci) * g.kernel_area;
    A acc = A(0);
    for (int kh = 0; kh < g.kernel_h; ++kh) {
      const int oh =
          adder2d_out_index_t<int>(int(ih), kh, g.stride_h, g.pad_h, g.dilation_h, g.out_h);
      if (oh < 0) continue;
      for (int kw = 0; kw < g.kernel_w; ++kw) {
        const int ow =
            adder2d_out_index_t<int>(int(iw), kw, g.stride_w, g.pad_w, g.dilation_w, g.out_w);
        if (ow < 0) continue;
        const T* d = dyg + int64_t(oh) * g.out_w + ow;
        const T* wp = wg + kh * g.kernel_w + kw;
#pragma unroll 4
        for (int co = 0; co < cog; ++co) {
          acc += static_cast<A>(d[co * g.out_plane]) *
                 input_grad_weight<A, SIGN>(static_cast<A>(wp[co * g.taps]) - xv);
        }
      }
    }
    gx[idx] = static_cast<T>(acc);
  }
}

constexpr int IG_BC = 16;   // input channels per tiled block
constexpr int IG_BP = 256;  // input pixels per tiled block (one staged by each thread)
constexpr int IG_BK = 8;    // output channels per shared-memory step
constexpr int IG_T = 4;     // micro-tile: 4 input channels x 4 pixels per thread
// The launcher picks the tiled kernel from this many input channels per group on (half the
// block's channels in use), at strides up to IG_MAX_STRIDE (at most 16 phases).
constexpr int IG_MIN_CHANNELS = 8;
constexpr int IG_MAX_STRIDE = 4;

// A phase's walk over its taps, row-major: row_taps taps per row, tap index steps of tap_step
// along a row and tap_row from a row's last tap to the next row's first; the output pixel moves by
// -dow along a row, and by -doh with ow back by ow_row to the next row.
struct TapWalk {
  int row_taps, tap_step, tap_row, dow, doh, ow_row;
};

// clamp(z, -1, 1), NaN stays NaN: FMNMX.NAN on sm_80+, comparisons elsewhere (and on the host).
__device__ __forceinline__ float clamp_unit(float z) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("max.NaN.f32 %0, %0, 0fBF800000;\n\tmin.NaN.f32 %0, %0, 0f3F800000;" : "+f"(z));
  return z;
#else
  return z < -1.0f ? -1.0f : (z > 1.0f ? 1.0f : z);
#endif
}
__device__ __forceinline__ double clamp_unit(double z) {
  return z < -1.0 ? -1.0 : (z > 1.0 ? 1.0 : z);
}

// sqrt of the factor that lifts the smallest subnormal of A to >= 1 (2^150 float, 2^1074 double).
template <typename A>
struct SignScale;
template <>
struct SignScale<float> {
  static constexpr float value = 0x1p75f;
};
template <>
struct SignScale<double> {
  static constexpr double value = 0x1p537;
};

// HT(z): clamp(z, -1, 1), or for SIGN sign(z) as clamp(z * s * s) (exact: z * s * s is >= 1 in
// magnitude for every nonzero z, inf past the range, zero for zero).
template <typename A, bool SIGN>
__device__ __forceinline__ A tiled_ht(A z) {
  if (SIGN) return clamp_unit(z * SignScale<A>::value * SignScale<A>::value);
  return clamp_unit(z);
}

template <typename T, typename A, bool SIGN, bool PHASED>
__global__ void __launch_bounds__(kThreads)
    adder2d_input_grad_tiled(const T* __restrict__ dy, const T* __restrict__ x,
                             const T* __restrict__ w, T* __restrict__ gx, Adder2dGeom g,
                             int64_t pixel_tiles, int64_t channel_tiles) {
  static_assert(IG_BP == kThreads, "each thread stages one pixel");
  static_assert((IG_BC / IG_T) * (IG_BP / IG_T) == kThreads, "one micro-tile per thread");
  static_assert(IG_BK * IG_BC <= kThreads, "one weight per staging thread");
  constexpr int LANES = IG_BP / IG_T;  // threads per channel quad (two warps)

  __shared__ __align__(16) A ds[IG_BK][IG_BP];  // D of the step: [output channel][pixel]
  __shared__ __align__(16) A ws[IG_BK][IG_BC];  // W of the step: [output channel][input channel]
  // How the tile's phase walks its taps, read at each change of tap rather than held in registers.
  __shared__ TapWalk walk;

  const int cig = g.in_per_group, cog = g.out_per_group;
  const int ka = g.kernel_area;
  const int64_t chunks = (cog + IG_BK - 1) / IG_BK;
  const int tid = threadIdx.x;
  // Compute: channels 4 quad + i and pixels lane + 64 j. Staging of W: row wk (threads < 128),
  // column wc.
  const int quad = tid / LANES, lane = tid % LANES;
  const int wk = tid / IG_BC, wc = tid % IG_BC;

  for (int64_t yt = blockIdx.y; yt < int64_t(g.groups) * channel_tiles; yt += gridDim.y) {
    const int64_t grp = yt / channel_tiles;
    const int ci0 = int(yt - grp * channel_tiles) * IG_BC;
    const bool w_ok = wk < IG_BK && ci0 + wc < cig;
    // W[grp*cog + wk + co0, ci0 + wc, tap] = wrow[co0 * cig * ka + tap]
    const T* wrow = w + ((grp * cog + (w_ok ? wk : 0)) * cig + (w_ok ? ci0 + wc : 0)) * ka;
    for (int64_t pt = blockIdx.x; pt < pixel_tiles; pt += gridDim.x) {
      // The phase of tile pt and the tile's place in it (stride 1: one phase, every tap).
      int qh = 0, qw = 0;
      int64_t p0 = pt;
      Adder2dPhaseAxis ah{g.in_h, 0, 1, g.kernel_h}, aw{g.in_w, 0, 1, g.kernel_w};
      int64_t pixels = g.batch * g.in_plane;
      if constexpr (PHASED) {
        for (;;) {
          ah = adder2d_phase_axis(qh, g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
          aw = adder2d_phase_axis(qw, g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
          pixels = g.batch * ah.size * aw.size;
          const int64_t tiles = (pixels + IG_BP - 1) / IG_BP;
          if (p0 < tiles) break;
          p0 -= tiles;
          if (++qw == g.stride_w) {
            qw = 0;
            ++qh;
          }
        }
      }
      p0 *= IG_BP;
      const int64_t phase_plane = PHASED ? ah.size * aw.size : g.in_plane;
      const int64_t steps = (PHASED ? int64_t(ah.count) * aw.count : ka) * chunks;
      // The pixel this thread stages D for: row s_a and column s_b of the phase.
      const int64_t sp = p0 + tid;
      const bool s_ok = sp < pixels;
      int64_t s_img = 0, s_pix = 0, s_row = 0, s_col = 0;
      if (s_ok) {
        divmod_nonneg(sp, phase_plane, s_img, s_pix);
        divmod_nonneg(s_pix, aw.size, s_row, s_col);
      }
      const int64_t dy_pixel0 = (s_img * g.out_channels + grp * cog) * g.out_plane;
      // The micro-tile: X and the accumulators of 4 channels x 4 pixels.
      int64_t base[IG_T];  // img * C * H * W + h * W + w of pixel j, -1 past the end
      A xv[IG_T][IG_T], acc[IG_T][IG_T];
#pragma unroll
      for (int j = 0; j < IG_T; ++j) {
        const int64_t p = p0 + lane + LANES * j;
        int64_t img = 0, pix = 0, a = 0, b = 0;
        if (p < pixels) {
          divmod_nonneg(p, phase_plane, img, pix);
          if constexpr (PHASED) {
            divmod_nonneg(pix, aw.size, a, b);
            pix = (qh + g.stride_h * a) * g.in_w + qw + g.stride_w * b;
          }
        }
        base[j] = p < pixels ? img * g.in_channels * g.in_plane + pix : -1;
      }
#pragma unroll
      for (int i = 0; i < IG_T; ++i) {
        const int ci = ci0 + IG_T * quad + i;
        const int64_t coff = (grp * cig + ci) * g.in_plane;
#pragma unroll
        for (int j = 0; j < IG_T; ++j) {
          xv[i][j] = (ci < cig && base[j] >= 0) ? static_cast<A>(x[base[j] + coff]) : A(0);
          acc[i][j] = A(0);
        }
      }

      // The step sequence: the phase's taps (kh, kw) row-major, then output channels co0 = 0, 8,
      // ... The staged pixel's output pixel through the phase's first tap is (oh, ow) = (s_row +
      // (qh + pad_h - kh * dilation_h) / stride_h, the same along w), the divisions exact; each
      // next tap along a row moves ow by -dow, each next row oh by -doh (ow back to its start).
      // Written by thread 0: every other thread reads them after the barriers of the first step,
      // and the last read of the previous tile's came before the barriers of its last step.
      if (PHASED && tid == 0) {
        walk.row_taps = aw.count;
        walk.tap_step = aw.step;
        walk.tap_row = ah.step * g.kernel_w - (aw.count - 1) * aw.step;
        walk.dow =
            int(int64_t(aw.step) * g.dilation_w / g.stride_w);  // fits where used (count >= 2)
        walk.doh = int(int64_t(ah.step) * g.dilation_h / g.stride_h);
        walk.ow_row = (aw.count - 1) * walk.dow;
      }
      int tw = 0, co0 = 0;  // the tap's place in its row of the phase's taps
      int tap = ah.first * g.kernel_w + aw.first;
      int oh = int(s_row) + g.pad_h, ow = int(s_col) + g.pad_w;
      if constexpr (PHASED) {
        oh = int(s_row + (qh + int64_t(g.pad_h) - int64_t(ah.first) * g.dilation_h) / g.stride_h);
        ow = int(s_col + (qw + int64_t(g.pad_w) - int64_t(aw.first) * g.dilation_w) / g.stride_w);
      }
      int64_t doff = -1;  // dY offset of the group's output channel 0 at (oh, ow); -1: no pixel
      auto tap_source = [&]() {
        const bool ok =
            s_ok && unsigned(oh) < unsigned(g.out_h) && unsigned(ow) < unsigned(g.out_w);
        doff = ok ? dy_pixel0 + int64_t(oh) * g.out_w + ow : -1;
      };
      A dreg[IG_BK], wreg = A(0);
      auto load = [&]() {
        const int avail = doff < 0 ? 0 : cog - co0;  // output channels left at this pixel
        int64_t o = doff + int64_t(co0) * g.out_plane;
#pragma unroll
        for (int kk = 0; kk < IG_BK; ++kk) {
          dreg[kk] = kk < avail ? static_cast<A>(dy[o]) : A(0);
          o += g.out_plane;
        }
        wreg =
            (w_ok && co0 + wk < cog) ? static_cast<A>(wrow[int64_t(co0) * cig * ka + tap]) : A(0);
      };
      if (steps > 0) {
        tap_source();
        load();
      }
      for (int64_t s = 0; s < steps; ++s) {
        __syncthreads();  // every thread is done reading the previous step
#pragma unroll
        for (int kk = 0; kk < IG_BK; ++kk) ds[kk][tid] = dreg[kk];
        if (wk < IG_BK) ws[wk][wc] = wreg;
        __syncthreads();
        if (s + 1 < steps) {  // the next step's loads overlap this step's arithmetic
          co0 += IG_BK;
          if (co0 >= cog) {
            co0 = 0;
            if constexpr (PHASED) {
              if (++tw < walk.row_taps) {
                tap += walk.tap_step;
                ow -= walk.dow;
              } else {
                tw = 0;
                tap += walk.tap_row;
                ow += walk.ow_row;
                oh -= walk.doh;
              }
            } else {  // every tap, the output pixel stepped by the dilation
              ++tap;
              ow -= g.dilation_w;
              if (++tw == g.kernel_w) {
                tw = 0;
                ow += g.kernel_w * g.dilation_w;
                oh -= g.dilation_h;
              }
            }
            tap_source();
          }
          load();
        }
#pragma unroll
        for (int kk = 0; kk < IG_BK; ++kk) {
          A wv[IG_T], dv[IG_T];
          load4(&ws[kk][IG_T * quad], wv);
#pragma unroll
          for (int j = 0; j < IG_T; ++j) dv[j] = ds[kk][lane + LANES * j];
#pragma unroll
          for (int i = 0; i < IG_T; ++i)
#pragma unroll
            for (int j = 0; j < IG_T; ++j) acc[i][j] += dv[j] * tiled_ht<A, SIGN>(wv[i] - xv[i][j]);
        }
      }
#pragma unroll
      for (int i = 0; i < IG_T; ++i) {
        const int ci = ci0 + IG_T * quad + i;
        if (ci >= cig) continue;
        const int64_t coff = (grp * cig + ci) * g.in_plane;
#pragma unroll
        for (int j = 0; j < IG_T; ++j)
          if (base[j] >= 0) gx[base[j] + coff] = static_cast<T>(acc[i][j]);
      }
    }
  }
}

// Launch configuration (host, torch-free: the CUDA launcher and the CPU emulation both call it).

enum class InputGradVariant { Gather, Tiled };

inline const char* input_grad_variant_name(InputGradVariant v) {
  return v == InputGradVariant::Tiled ? "input_grad_tiled" : "input_grad_gather";
}

struct InputGradLaunch {
  InputGradVariant variant = InputGradVariant::Gather;
  int64_t grid_x = 0;         // gather: blocks of a grid-stride loop; tiled: pixel tiles (capped)
  int64_t grid_y = 1;         // tiled: groups x channel tiles (capped; the kernel loops past it)
  int64_t total = 0;          // input elements
  int64_t pixel_tiles = 0;    // tiled: sum over the phases of ceil(N * rows * columns / IG_BP)
  int64_t channel_tiles = 0;  // tiled: ceil((C / groups) / IG_BC)
};

// The tiled kernel takes one phase per tile: strides up to IG_MAX_STRIDE (at most 16 phases).
inline bool adder2d_input_grad_tiled_fits(const Adder2dGeom& g) {
  return g.stride_h <= IG_MAX_STRIDE && g.stride_w <= IG_MAX_STRIDE;
}

// The grid of a given variant (also used by the emulation to force a variant onto other shapes;
// the tiled one only where adder2d_input_grad_tiled_fits).
inline InputGradLaunch adder2d_input_grad_launch_variant(const Adder2dGeom& g, InputGradVariant v,
                                                         const LaunchLimits& lim) {
  InputGradLaunch c;
  c.variant = v;
  c.total = g.batch * g.in_channels * g.in_plane;
  if (v == InputGradVariant::Gather) {
    c.grid_x = std::min<int64_t>(ceil_div(c.total, kThreads), lim.max_blocks_1d);
    return c;
  }
  for (int qh = 0; qh < g.stride_h; ++qh) {
    for (int qw = 0; qw < g.stride_w; ++qw) {
      const Adder2dPhaseAxis ah =
          adder2d_phase_axis(qh, g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
      const Adder2dPhaseAxis aw =
          adder2d_phase_axis(qw, g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
      c.pixel_tiles += ceil_div(g.batch * ah.size * aw.size, IG_BP);
    }
  }
  c.channel_tiles = ceil_div(g.in_per_group, IG_BC);
  c.grid_x = std::min<int64_t>(c.pixel_tiles, lim.max_blocks_1d);
  c.grid_y = std::min<int64_t>(int64_t(g.groups) * c.channel_tiles, lim.max_grid_y);
  return c;
}

// The launcher's choice, from the shape only: the tiled kernel at strides up to IG_MAX_STRIDE with
// at least IG_MIN_CHANNELS input channels per group, the gather otherwise (depthwise or
// few-channel layers, where most of a 16-channel tile would idle, and larger strides).
inline InputGradLaunch adder2d_input_grad_launch(const Adder2dGeom& g, const LaunchLimits& lim) {
  const bool tiled = adder2d_input_grad_tiled_fits(g) && g.in_per_group >= IG_MIN_CHANNELS;
  return adder2d_input_grad_launch_variant(
      g, tiled ? InputGradVariant::Tiled : InputGradVariant::Gather, lim);
}

// The tiled kernel for a shape, as the CUDA launcher and the emulation launch it: the phase walk
// (PHASED) only where a stride is past 1. At stride 1 the kernel without it is the one that ran
// before the phases were added; with it, the stride-1 input gradient took 6-14% longer on the
// H200 (benchmarks/NOTES.md).
template <typename T>
using InputGradTiledKernel = void (*)(const T*, const T*, const T*, T*, Adder2dGeom, int64_t,
                                      int64_t);

template <typename T, typename A>
InputGradTiledKernel<T> adder2d_input_grad_tiled_kernel(const Adder2dGeom& g, bool sign) {
  const bool phased = g.stride_h > 1 || g.stride_w > 1;
  if (sign)
    return phased ? adder2d_input_grad_tiled<T, A, true, true>
                  : adder2d_input_grad_tiled<T, A, true, false>;
  return phased ? adder2d_input_grad_tiled<T, A, false, true>
                : adder2d_input_grad_tiled<T, A, false, false>;
}

}  // namespace cuda
}  // namespace addernet
