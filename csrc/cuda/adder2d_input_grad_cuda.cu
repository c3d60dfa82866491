// CUDA op entry of the adder2d input gradient (schema in adder2d_library.cpp): argument check,
// allocation, stream, and the launch that adder2d_input_grad_launch chooses (tiled or gather). The
// kernels, their math and the launch configuration live in adder2d_input_grad_kernels.cuh
// (torch-free, shared with the CPU emulation in tests/cuda_emulation/).
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../adder2d.h"
#include "adder2d_input_grad_kernels.cuh"
#include "adder2d_cuda_stable.h"

namespace addernet {
namespace cuda {

namespace {

Tensor adder2d_input_grad_cuda(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                               IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                               int64_t groups, const std::string& mode) {
  // Plain names, not a structured binding: lambdas below use them, which clang before 16 refuses.
  const Adder2dInputGradArgs args = check_adder2d_input_grad_args(
      grad_output, input, weight, stride, padding, dilation, groups, mode);
  const Adder2dShape& s = args.shape;
  const bool sign_mode = args.sign_mode;
  ADDERNET_CHECK(adder2d_geom_fits(s), "adder2d_input_grad: the CUDA kernels need spatial sizes, ",
                 "strides, paddings, dilations and channels per group below 2^31");
  const torch::stable::accelerator::DeviceGuard guard(input.get_device_index());
  Tensor gx = empty_like_device({s.batch, s.in_channels, s.in_h, s.in_w}, input);
  if (gx.numel() == 0) return gx;
  const Tensor dy = torch::stable::contiguous(grad_output);
  const Tensor x = torch::stable::contiguous(input);
  const Tensor w = torch::stable::contiguous(weight);
  const Adder2dGeom g = adder2d_geom(s);
  const cudaStream_t stream = current_stream(input.get_device_index());
  const InputGradLaunch c = adder2d_input_grad_launch(g, LaunchLimits());

  ADDERNET_DISPATCH_FLOATING_AND_HALF(x.scalar_type(), "adder2d_input_grad_cuda", [&] {
    using A = typename AccType<scalar_t>::type;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    if (c.variant == InputGradVariant::Tiled) {
      const dim3 grid{unsigned(c.grid_x), unsigned(c.grid_y)};
      adder2d_input_grad_tiled_kernel<scalar_t, A>(g, sign_mode)<<<grid, kThreads, 0, stream>>>(
          dyp, xp, wp, gxp, g, c.pixel_tiles, c.channel_tiles);
    } else if (sign_mode) {
      adder2d_input_grad_gather<scalar_t, A, true>
          <<<unsigned(c.grid_x), kThreads, 0, stream>>>(dyp, xp, wp, gxp, g, c.total);
    } else {
      adder2d_input_grad_gather<scalar_t, A, false>
          <<<unsigned(c.grid_x), kThreads, 0, stream>>>(dyp, xp, wp, gxp, g, c.total);
    }
    ADDERNET_KERNEL_LAUNCH_CHECK();
  });
  return gx;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(addernet, CUDA, m) {
  m.impl("adder2d_input_grad", TORCH_BOX(&adder2d_input_grad_cuda));
}

}  // namespace cuda
}  // namespace addernet
