// Schema and argument checks of adder2d_int8, the 8-bit adder forward (inference only; the math
// in adder2d_int8.h, the kernels in cpu/adder2d_int8_kernels.h):
//
//   adder2d_int8(X float32, Wq int8, scale, alpha, beta)   Y = alpha * sum |q(Xp) - Wq| + beta
//
// The op has no autograd formula: addernet_cuda/ops.py registers one that raises.
#include "adder2d_int8.h"

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/core/MemoryFormat.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <limits>

namespace addernet {

using torch::headeronly::MemoryFormat;
using torch::headeronly::ScalarType;

namespace {

void check_vector(const char* op, const char* name, const Tensor& t, const Tensor& input,
                  int64_t size) {
  ADDERNET_CHECK(t.scalar_type() == ScalarType::Float, op, ": ", name, " must be float32, got ",
                 t.scalar_type());
  ADDERNET_CHECK(t.dim() == 1 && t.size(0) == size, op, ": ", name, " must have shape [", size,
                 "], got ", t.sizes());
  ADDERNET_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
                 " but input is on ", input.device());
}

}  // namespace

Adder2dShape check_adder2d_int8_args(const char* op, const Tensor& input, const Tensor& weight,
                                     const Tensor& scale, const Tensor& alpha, const Tensor& beta,
                                     IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                     int64_t groups) {
  ADDERNET_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W], got ", input.dim(),
                 "-D with shape ", input.sizes());
  ADDERNET_CHECK(input.scalar_type() == ScalarType::Float, op, ": input must be float32, got ",
                 input.scalar_type());
  ADDERNET_CHECK(weight.dim() == 4, op, ": weight must be 4-D [out_channels, in_channels/groups, ",
                 "kH, kW], got ", weight.dim(), "-D with shape ", weight.sizes());
  ADDERNET_CHECK(weight.scalar_type() == ScalarType::Char, op, ": weight must be int8 codes, got ",
                 weight.scalar_type());
  ADDERNET_CHECK(weight.device() == input.device(), op, ": weight is on ", weight.device(),
                 " but input is on ", input.device());
  ADDERNET_CHECK(scale.scalar_type() == ScalarType::Float && scale.numel() == 1, op,
                 ": scale must be a float32 tensor with one element, got ", scale.scalar_type(),
                 " of shape ", scale.sizes());
  const Adder2dShape s =
      check_adder2d_geometry(op, input, weight, stride, padding, dilation, groups);
  check_vector(op, "alpha", alpha, input, s.out_channels);
  check_vector(op, "beta", beta, input, s.out_channels);
  // S <= 255 * (bytes summed per output); the CPU kernels sum KH * KW * roundup(C/G, 8) bytes,
  // the CUDA kernels fewer (channels padded to 4): one bound for both, so that both backends
  // accept the same layers and every sum is exact in int32.
  const int64_t bytes = s.kernel_h * s.kernel_w * ((s.in_channels_per_group + 7) / 8 * 8);
  ADDERNET_CHECK(bytes <= std::numeric_limits<int32_t>::max() / 255, op, ": the reduction (", bytes,
                 " bytes per output after padding) is too long for exact int32 sums (at most ",
                 std::numeric_limits<int32_t>::max() / 255, ")");
  return s;
}

bool adder2d_int8_channels_last(const Tensor& input) {
  if (input.dim() != 4 || input.is_contiguous()) return false;
  int64_t expected = 1;
  for (const int64_t d : {1, 3, 2, 0}) {
    if (input.size(d) == 1) continue;
    if (input.stride(d) != expected) return false;
    expected *= input.size(d);
  }
  return true;
}

Tensor adder2d_int8_empty_output(const Tensor& input, const Adder2dShape& s, bool channels_last) {
  return torch::stable::empty(
      {s.batch, s.out_channels, s.out_h, s.out_w}, ScalarType::Float, std::nullopt, input.device(),
      std::nullopt, channels_last ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous);
}

// The CUDA library compiles the checks only (cuda/adder2d_checks_cuda.cpp): the schema is the CPU
// library's.
#ifndef ADDERNET_INT8_CHECKS_ONLY
STABLE_TORCH_LIBRARY_FRAGMENT(addernet, m) {
  m.def(
      "adder2d_int8(Tensor input, Tensor weight, Tensor scale, Tensor alpha, Tensor beta, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, bool relu=False) -> Tensor");
}
#endif

}  // namespace addernet
