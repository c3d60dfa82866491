// CUDA op entry of the adder2d weight gradient (schema in adder2d.cpp): argument check,
// allocation, stream, workspace, and the launches that adder2d_weight_grad_launch chooses. The
// kernels, their math and the launch configuration live in adder2d_weight_grad_kernels.cuh
// (torch-free, shared with the CPU emulation in tests/cuda_emulation/).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../adder2d.h"
#include "adder2d_weight_grad_kernels.cuh"

namespace addernet {
namespace cuda {

namespace {

at::Tensor adder2d_weight_grad_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& weight, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t groups) {
  const Adder2dShape s = check_adder2d_args("adder2d_weight_grad", input, weight, std::nullopt,
                                            stride, padding, dilation, groups, grad_output);
  TORCH_CHECK(adder2d_geom_fits(s), "adder2d_weight_grad: the CUDA kernels need spatial sizes, ",
              "strides, paddings, dilations and channels per group below 2^31");
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor gw = at::empty(weight.sizes(), weight.options());
  if (gw.numel() == 0) return gw;
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const Adder2dGeom g = adder2d_geom(s);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const WeightGradLaunch c = adder2d_weight_grad_launch(g, LaunchLimits());
  TORCH_CHECK(c.fits, "adder2d_weight_grad: the weight is too large for the CUDA kernel");
  const int64_t splits = c.splits;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "adder2d_weight_grad_cuda", [&] {
        using A = typename AccType<scalar_t>::type;
        const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const scalar_t* wp = w.const_data_ptr<scalar_t>();
        scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
        at::Tensor workspace;
        A* partial = nullptr;
        if (splits > 1) {
          workspace = at::empty({splits, gw.numel()},
                                x.options().dtype(c10::CppTypeToScalarType<A>::value));
          partial = workspace.mutable_data_ptr<A>();
        }
        const dim3 grid{unsigned(c.tiles), unsigned(splits)};
        adder2d_weight_grad_tiled<scalar_t, A>
            <<<grid, kThreads, 0, stream>>>(dyp, xp, wp, gwp, partial, g, c.chunk);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (splits > 1) {
          adder2d_weight_grad_sum_splits<scalar_t, A>
              <<<unsigned(c.sum_blocks), kThreads, 0, stream>>>(partial, gwp, c.elems, int(splits));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(addernet, CUDA, m) {
  m.impl("adder2d_weight_grad", &adder2d_weight_grad_cuda);
}

}  // namespace cuda
}  // namespace addernet
