// CUDA input gradient of adder2d (schema in adder2d.cpp):
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
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../adder2d.h"
#include "adder2d_cuda_common.cuh"

namespace addernet {
namespace cuda {

namespace {

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

// Launch configuration and the op entry.

at::Tensor adder2d_input_grad_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& weight, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                   int64_t groups, c10::string_view mode) {
  const Adder2dShape s = check_adder2d_args("adder2d_input_grad", input, weight, std::nullopt,
                                            stride, padding, dilation, groups, grad_output);
  const bool sign_mode =
      parse_input_grad_mode("adder2d_input_grad: mode", mode) == InputGradMode::Sign;
  TORCH_CHECK(adder2d_geom_fits(s), "adder2d_input_grad: the CUDA kernels need spatial sizes, ",
              "strides, paddings, dilations and channels per group below 2^31");
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor gx = at::empty({s.batch, s.in_channels, s.in_h, s.in_w}, input.options());
  if (gx.numel() == 0) return gx;
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const Adder2dGeom g = adder2d_geom(s);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = gx.numel();
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(total, kThreads), int64_t(1) << 20));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "adder2d_input_grad_cuda", [&] {
        using A = typename AccType<scalar_t>::type;
        const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const scalar_t* wp = w.const_data_ptr<scalar_t>();
        scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
        if (sign_mode) {
          adder2d_input_grad_gather<scalar_t, A, true>
              <<<blocks, kThreads, 0, stream>>>(dyp, xp, wp, gxp, g, total);
        } else {
          adder2d_input_grad_gather<scalar_t, A, false>
              <<<blocks, kThreads, 0, stream>>>(dyp, xp, wp, gxp, g, total);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(addernet, CUDA, m) {
  m.impl("adder2d_input_grad", &adder2d_input_grad_cuda);
}

}  // namespace cuda
}  // namespace addernet
