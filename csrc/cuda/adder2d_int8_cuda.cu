// CUDA op entry of adder2d_int8, the 8-bit adder forward (schema and checks in ../adder2d_int8.cpp):
// argument check, the scale on the host, allocation, stream, and the three launches that
// adder2d_int8_launch configures (quantize the input, pack the weight codes, byte-SAD implicit
// GEMM). The kernels, their math and the launch configuration live in adder2d_int8_kernels.cuh
// (torch-free, shared with the CPU emulation in tests/cuda_emulation/).
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cmath>

#include "../adder2d_int8.h"
#include "adder2d_cuda_stable.h"
#include "adder2d_int8_kernels.cuh"

namespace addernet {
namespace cuda {

namespace {

using torch::headeronly::ScalarType;

// The scale as a host float: read directly when it lies on the CPU, else copied from the input's
// device in stream order (which waits for the stream: a CPU scale avoids that wait).
float host_scale(const Tensor& scale, const Tensor& input, cudaStream_t stream) {
  const Tensor sc = torch::stable::contiguous(scale);
  if (sc.device().is_cpu()) return *sc.const_data_ptr<float>();
  ADDERNET_CHECK(sc.device() == input.device(), "adder2d_int8: scale must be on the CPU or on ",
                 input.device(), ", got ", sc.device());
  float v = 0.0f;
  ADDERNET_CUDA_CHECK(cudaMemcpyAsync(&v, sc.const_data_ptr<float>(), sizeof(float),
                                      cudaMemcpyDeviceToHost, stream));
  ADDERNET_CUDA_CHECK(cudaStreamSynchronize(stream));
  return v;
}

template <typename Tile>
void launch_forward(const uint32_t* xq, const uint32_t* wq, const float* alpha, const float* beta,
                    bool relu, float* y, const Adder2dInt8Geom& q, const Int8Launch& c,
                    cudaStream_t stream) {
  const dim3 grid{unsigned(c.grid_x), unsigned(c.grid_y)};
  adder2d_int8_forward_tiled<float, Tile>
      <<<grid, kThreads, 0, stream>>>(xq, wq, alpha, beta, relu, y, q);
  ADDERNET_KERNEL_LAUNCH_CHECK();
}

Tensor adder2d_int8_cuda(const Tensor& input, const Tensor& weight, const Tensor& scale,
                         const Tensor& alpha, const Tensor& beta, IntArrayRef stride,
                         IntArrayRef padding, IntArrayRef dilation, int64_t groups, bool relu) {
  const Adder2dShape s = check_adder2d_int8_args("adder2d_int8", input, weight, scale, alpha, beta,
                                                 stride, padding, dilation, groups);
  ADDERNET_CHECK(
      adder2d_geom_fits(s) && adder2d_int8_geom_fits(s),
      "adder2d_int8: the CUDA kernels need spatial sizes, strides, paddings, dilations, ",
      "channels per group and H * W * ceil(C/groups / 4) below 2^31");
  const torch::stable::accelerator::DeviceGuard guard(input.get_device_index());
  const cudaStream_t stream = current_stream(input.get_device_index());
  const float sc = host_scale(scale, input, stream);
  ADDERNET_CHECK(std::isfinite(sc) && sc > 0.0f, "adder2d_int8: scale must be finite and > 0, got ",
                 sc);
  // The output is channels-last for a channels-last input, as on the CPU; the kernels read and
  // write NCHW, so such an input costs a copy each way here.
  const bool channels_last = adder2d_int8_channels_last(input);
  Tensor y = adder2d_int8_empty_output(input, s, false);
  if (y.numel() == 0) return adder2d_int8_empty_output(input, s, channels_last);
  const Adder2dInt8Geom q = adder2d_int8_geom(s);
  LaunchLimits lim;
  lim.sm_count = multiprocessor_count(input.get_device_index());
  const Int8Launch c = adder2d_int8_launch(q, lim);
  ADDERNET_CHECK(c.fits, "adder2d_int8: batch * OH * OW = ", q.g.columns,
                 " is too large for the CUDA kernel");
  const Tensor x = torch::stable::contiguous(input);
  const Tensor w = torch::stable::contiguous(weight);
  const Tensor a = torch::stable::contiguous(alpha);
  const Tensor b = torch::stable::contiguous(beta);
  // Code buffers of 32-bit words (int32 tensors, read as uint32).
  Tensor xq =
      torch::stable::empty({c.quantize_total}, ScalarType::Int, std::nullopt, input.device());
  Tensor wq = torch::stable::empty({c.pack_total}, ScalarType::Int, std::nullopt, input.device());
  uint32_t* xqp = reinterpret_cast<uint32_t*>(xq.mutable_data_ptr<int32_t>());
  uint32_t* wqp = reinterpret_cast<uint32_t*>(wq.mutable_data_ptr<int32_t>());
  if (c.quantize_blocks > 0) {  // none for an empty image (only padding: the gather's zeros)
    adder2d_int8_quantize<float><<<unsigned(c.quantize_blocks), kThreads, 0, stream>>>(
        x.const_data_ptr<float>(), sc, xqp, q, c.quantize_total);
    ADDERNET_KERNEL_LAUNCH_CHECK();
  }
  adder2d_int8_pack_weight<<<unsigned(c.pack_blocks), kThreads, 0, stream>>>(
      w.const_data_ptr<int8_t>(), wqp, q, c.pack_total);
  ADDERNET_KERNEL_LAUNCH_CHECK();
  const float* ap = a.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  switch (c.variant) {
    case Int8Variant::Large:
      launch_forward<Int8TileLarge>(xqp, wqp, ap, bp, relu, yp, q, c, stream);
      break;
    case Int8Variant::Medium:
      launch_forward<Int8TileMedium>(xqp, wqp, ap, bp, relu, yp, q, c, stream);
      break;
    case Int8Variant::Small:
      launch_forward<Int8TileSmall>(xqp, wqp, ap, bp, relu, yp, q, c, stream);
      break;
    case Int8Variant::Narrow:
      launch_forward<Int8TileNarrow>(xqp, wqp, ap, bp, relu, yp, q, c, stream);
      break;
  }
  if (channels_last) {
    Tensor y_cl = adder2d_int8_empty_output(input, s, true);
    torch::stable::copy_(y_cl, y);
    return y_cl;
  }
  return y;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(addernet, CUDA, m) {
  m.impl("adder2d_int8", TORCH_BOX(&adder2d_int8_cuda));
}

}  // namespace cuda
}  // namespace addernet
