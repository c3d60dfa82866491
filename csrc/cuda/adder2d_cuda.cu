// CUDA op entry of the adder2d forward (schema in adder2d_library.cpp): argument check, allocation,
// stream, and the launch that adder2d_forward_launch chooses. The kernels, their math and the
// launch configuration live in adder2d_forward_kernels.cuh (torch-free, shared with the CPU
// emulation in tests/cuda_emulation/).
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <type_traits>

#include "../adder2d.h"
#include "adder2d_forward_kernels.cuh"
#include "adder2d_cuda_stable.h"

namespace addernet {
namespace cuda {

namespace {

template <typename T, typename A, typename Tile>
void launch_tiled(const T* x, const T* wt, const T* bias, T* y, const Adder2dGeom& g,
                  const ForwardLaunch& c, cudaStream_t stream) {
  const dim3 grid{unsigned(c.grid_x), unsigned(c.grid_y)};
  adder2d_forward_tiled<T, A, Tile><<<grid, kThreads, 0, stream>>>(x, wt, bias, y, g);
  ADDERNET_KERNEL_LAUNCH_CHECK();
}

Tensor adder2d_cuda(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                    const std::string& input_grad) {
  const Adder2dShape s = check_adder2d_forward_args(input, weight, bias, stride, padding, dilation,
                                                    groups, input_grad);
  ADDERNET_CHECK(adder2d_geom_fits(s), "adder2d: the CUDA kernels need spatial sizes, strides, ",
                 "paddings, dilations and channels per group below 2^31");
  const torch::stable::accelerator::DeviceGuard guard(input.get_device_index());
  Tensor y = empty_like_device({s.batch, s.out_channels, s.out_h, s.out_w}, input);
  if (y.numel() == 0) return y;
  const Tensor x = torch::stable::contiguous(input);
  const bool has_bias = bias.has_value() && bias->defined();
  const std::optional<Tensor> b =
      has_bias ? std::optional<Tensor>(torch::stable::contiguous(*bias)) : std::nullopt;
  const Adder2dGeom g = adder2d_geom(s);
  const cudaStream_t stream = current_stream(input.get_device_index());
  LaunchLimits lim;
  lim.sm_count = multiprocessor_count(input.get_device_index());
  const ForwardLaunch c =
      adder2d_forward_launch(g, x.scalar_type() == torch::headeronly::ScalarType::Double, lim);
  ADDERNET_CHECK(c.fits, "adder2d: batch * OH * OW = ", g.columns,
                 " is too large for the CUDA kernel");

  ADDERNET_DISPATCH_FLOATING_AND_HALF(x.scalar_type(), "adder2d_cuda", [&] {
    using A = typename AccType<scalar_t>::type;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (c.variant == ForwardVariant::Direct) {
      const Tensor w = torch::stable::contiguous(weight);
      adder2d_forward_direct<scalar_t, A><<<unsigned(c.grid_x), kThreads, 0, stream>>>(
          xp, w.const_data_ptr<scalar_t>(), bp, yp, g, c.total);
      ADDERNET_KERNEL_LAUNCH_CHECK();
      return;
    }
    // [Co, C/g, KH, KW] -> [KH, KW, C/g, Co]: a slice of BK channels x BM output channels of
    // one tap is then BK coalesced rows. Three transposes (torch::stable::permute's header is
    // newer than the oldest torch this builds with): [KH, C/g, Co, KW], [KH, KW, Co, C/g], then
    // [KH, KW, C/g, Co].
    const Tensor wt = torch::stable::contiguous(torch::stable::transpose(
        torch::stable::transpose(torch::stable::transpose(weight, 0, 2), 1, 3), 2, 3));
    const scalar_t* wtp = wt.const_data_ptr<scalar_t>();
    if (c.variant == ForwardVariant::TiledMedium) {
      launch_tiled<scalar_t, A, TileMedium>(xp, wtp, bp, yp, g, c, stream);
      return;
    }
    // float64 runs the 64x64 tile only: no other tile is instantiated for it.
    if constexpr (!std::is_same<A, double>::value) {
      if (c.variant == ForwardVariant::TiledLarge) {
        launch_tiled<scalar_t, A, TileLarge>(xp, wtp, bp, yp, g, c, stream);
      } else if (c.variant == ForwardVariant::TiledSmall) {
        launch_tiled<scalar_t, A, TileSmall>(xp, wtp, bp, yp, g, c, stream);
      } else {
        launch_tiled<scalar_t, A, TileNarrow>(xp, wtp, bp, yp, g, c, stream);
      }
    }
  });
  return y;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(addernet, CUDA, m) {
  m.impl("adder2d", TORCH_BOX(&adder2d_cuda));
}

}  // namespace cuda
}  // namespace addernet
