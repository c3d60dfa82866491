// CUDA op entry of the adder2d weight gradient (schema in adder2d_library.cpp): argument check,
// allocation, stream, workspace, and the launches that adder2d_weight_grad_launch chooses. The
// kernels, their math and the launch configuration live in adder2d_weight_grad_kernels.cuh
// (torch-free, shared with the CPU emulation in tests/cuda_emulation/).
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../adder2d.h"
#include "adder2d_weight_grad_kernels.cuh"
#include "adder2d_cuda_stable.h"

namespace addernet {
namespace cuda {

namespace {

Tensor adder2d_weight_grad_cuda(const Tensor& grad_output, const Tensor& input,
                                const Tensor& weight, IntArrayRef stride, IntArrayRef padding,
                                IntArrayRef dilation, int64_t groups) {
  const Adder2dShape s = check_adder2d_args("adder2d_weight_grad", input, weight, std::nullopt,
                                            stride, padding, dilation, groups, grad_output);
  ADDERNET_CHECK(adder2d_geom_fits(s), "adder2d_weight_grad: the CUDA kernels need spatial sizes, ",
                 "strides, paddings, dilations and channels per group below 2^31");
  const torch::stable::accelerator::DeviceGuard guard(input.get_device_index());
  Tensor gw = empty_like_device(weight.sizes(), weight);
  if (gw.numel() == 0) return gw;
  const Tensor dy = torch::stable::contiguous(grad_output);
  const Tensor x = torch::stable::contiguous(input);
  const Tensor w = torch::stable::contiguous(weight);
  const Adder2dGeom g = adder2d_geom(s);
  const cudaStream_t stream = current_stream(input.get_device_index());

  const WeightGradLaunch c = adder2d_weight_grad_launch(g, LaunchLimits());
  ADDERNET_CHECK(c.fits, "adder2d_weight_grad: the weight is too large for the CUDA kernel");
  const int64_t splits = c.splits;

  ADDERNET_DISPATCH_FLOATING_AND_HALF(x.scalar_type(), "adder2d_weight_grad_cuda", [&] {
    using A = typename AccType<scalar_t>::type;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    std::optional<Tensor> workspace;
    A* partial = nullptr;
    if (splits > 1) {
      workspace = torch::stable::empty({splits, gw.numel()},
                                       torch::headeronly::CppTypeToScalarType<A>::value,
                                       std::nullopt, x.device());
      partial = workspace->mutable_data_ptr<A>();
    }
    const dim3 grid{unsigned(c.tiles), unsigned(splits)};
    adder2d_weight_grad_tiled<scalar_t, A>
        <<<grid, kThreads, 0, stream>>>(dyp, xp, wp, gwp, partial, g, c.chunk);
    ADDERNET_KERNEL_LAUNCH_CHECK();
    if (splits > 1) {
      adder2d_weight_grad_sum_splits<scalar_t, A>
          <<<unsigned(c.sum_blocks), kThreads, 0, stream>>>(partial, gwp, c.elems, int(splits));
      ADDERNET_KERNEL_LAUNCH_CHECK();
    }
  });
  return gw;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(addernet, CUDA, m) {
  m.impl("adder2d_weight_grad", TORCH_BOX(&adder2d_weight_grad_cuda));
}

}  // namespace cuda
}  // namespace addernet
