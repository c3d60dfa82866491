// CUDA op entry of the adder2d input gradient (schema in adder2d.cpp): argument check,
// allocation, stream, and the launch that adder2d_input_grad_launch chooses. The kernel, its math
// and the launch configuration live in adder2d_input_grad_kernels.cuh (torch-free, shared with
// the CPU emulation in tests/cuda_emulation/).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../adder2d.h"
#include "adder2d_input_grad_kernels.cuh"

namespace addernet {
namespace cuda {

namespace {

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
  const InputGradLaunch c = adder2d_input_grad_launch(g, LaunchLimits());
  const unsigned blocks = unsigned(c.grid_x);
  const int64_t total = c.total;

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
