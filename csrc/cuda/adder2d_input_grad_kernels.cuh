// Device code of the adder2d input gradient (schema in adder2d_library.cpp), free of torch
// headers: included by the CUDA launcher (adder2d_input_grad_cuda.cu) and by the CPU emulation.
//
//
//   dX[n,c,h,w] = sum over every (co, kh, kw, oh, ow) whose tap lands on (h, w) of
//                 dY[n,co,oh,ow] * HT(W[co,ci,kh,kw] - X[n,c,h,w])
//
// with c = grp * (C/groups) + ci, co running over the output channels of group grp, and
// HT(z) = clamp(z, -1, 1) (mode "hardtanh", AdderNet's rule) or sign(z) (mode "exact").
//
// Gather formulation: one thread owns one input element. For each tap (kh, kw) it computes the
// output pixel (oh, ow) that reads it through that tap with adder2d_out_index (exact for any
// stride: taps whose offset is not a multiple of the stride read nothing), then sums over the
// group's output channels. Every term is added by the one thread that owns its input element,
// so there are no atomics and the result is deterministic. The weights read in the inner loop
// are the same for all threads of a warp (one broadcast load); the dY loads are coalesced along w
// for stride 1. float16 and bfloat16 accumulate in float, float64 in double.
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

// Launch configuration (host, torch-free: the CUDA launcher and the CPU emulation both call it).

struct InputGradLaunch {
  int64_t grid_x = 0;  // blocks of kThreads threads, grid-stride loop beyond lim.max_blocks_1d
  int64_t total = 0;   // input elements
};

inline InputGradLaunch adder2d_input_grad_launch(const Adder2dGeom& g, const LaunchLimits& lim) {
  InputGradLaunch c;
  c.total = g.batch * g.in_channels * g.in_plane;
  c.grid_x = std::min<int64_t>(ceil_div(c.total, kThreads), lim.max_blocks_1d);
  return c;
}

}  // namespace cuda
}  // namespace addernet
