// Schema and argument checks of adder2d_int8, the 8-bit adder forward (inference only; the math
// in adder2d_int8.h, the kernels in cpu/adder2d_int8_kernels.h):
//
//   adder2d_int8(X float32, Wq int8, scale, alpha, beta)   Y = alpha * sum |q(Xp) - Wq| + beta
//
// The op has no autograd formula: addernet_cuda/ops.py registers one that raises.
#include "adder2d_int8.h"

#include <torch/csrc/stable/library.h>
#include <torch/headeronly/core/ScalarType.h>

namespace addernet {

using torch::headeronly::ScalarType;

namespace {

void check_pair(const char* op, const char* name, IntArrayRef value, int64_t min_value) {
  ADDERNET_CHECK(value.size() == 2, op, ": ", name, " must have 2 elements (height, width), got ",
                 value.size());
  ADDERNET_CHECK(value[0] >= min_value && value[1] >= min_value, op, ": ", name,
                 " must be >= ", min_value, ", got ", value);
}

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
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  ADDERNET_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);

  Adder2dShape s;
  s.batch = input.size(0);
  s.in_channels = input.size(1);
  s.in_h = input.size(2);
  s.in_w = input.size(3);
  s.out_channels = weight.size(0);
  s.kernel_h = weight.size(2);
  s.kernel_w = weight.size(3);
  s.groups = groups;
  ADDERNET_CHECK(s.in_channels % groups == 0, op, ": groups (", groups,
                 ") must divide the input channels (", s.in_channels, ")");
  ADDERNET_CHECK(s.out_channels % groups == 0, op, ": groups (", groups,
                 ") must divide the output channels, weight.size(0) = ", s.out_channels);
  s.in_channels_per_group = s.in_channels / groups;
  s.out_channels_per_group = s.out_channels / groups;
  ADDERNET_CHECK(weight.size(1) == s.in_channels_per_group, op,
                 ": weight.size(1) must be in_channels / groups = ", s.in_channels, " / ", groups,
                 " = ", s.in_channels_per_group, ", got weight of shape ", weight.sizes());
  ADDERNET_CHECK(s.kernel_h >= 1 && s.kernel_w >= 1, op, ": weight kernel size must be >= 1, got ",
                 weight.sizes());
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dilation_h = dilation[0];
  s.dilation_w = dilation[1];
  const int64_t span_h = s.dilation_h * (s.kernel_h - 1) + 1;
  const int64_t span_w = s.dilation_w * (s.kernel_w - 1) + 1;
  ADDERNET_CHECK(span_h <= s.in_h + 2 * s.pad_h && span_w <= s.in_w + 2 * s.pad_w, op, ": kernel (",
                 s.kernel_h, "x", s.kernel_w, ", dilated to ", span_h, "x", span_w,
                 ") is larger than the padded input (", s.in_h + 2 * s.pad_h, "x",
                 s.in_w + 2 * s.pad_w, ")");
  s.out_h = adder2d_out_size(s.in_h, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h);
  s.out_w = adder2d_out_size(s.in_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w);
  s.taps = s.in_channels_per_group * s.kernel_h * s.kernel_w;
  check_vector(op, "alpha", alpha, input, s.out_channels);
  check_vector(op, "beta", beta, input, s.out_channels);
  return s;
}

STABLE_TORCH_LIBRARY_FRAGMENT(addernet, m) {
  m.def(
      "adder2d_int8(Tensor input, Tensor weight, Tensor scale, Tensor alpha, Tensor beta, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, bool relu=False) -> Tensor");
}

}  // namespace addernet
