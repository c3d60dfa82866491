// The argument checks every adder2d backend shares (the op schemas are in adder2d_library.cpp):
//
//   adder2d(X, W, b)               Y  = -sum |Xp - W| (+ b)                  [N, Co, OH, OW]
//   adder2d_input_grad(dY, X, W)   dX = sum dY * HT(W - X)  (or sign(W - X)) [N, C, H, W]
//   adder2d_weight_grad(dY, X, W)  dW = sum dY * (Xp - W)   full precision   [Co, C/g, KH, KW]
//
// Compiled into the CPU op library and the CUDA one alike (each backend checks its arguments).
#include "adder2d.h"

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

namespace addernet {

InputGradMode parse_input_grad_mode(const char* what, const std::string& mode) {
  if (mode == "hardtanh") return InputGradMode::HardTanh;
  if (mode == "exact") return InputGradMode::Sign;
  ADDERNET_CHECK(false, what, " must be \"hardtanh\" or \"exact\", got \"", mode, "\"");
  return InputGradMode::HardTanh;
}

namespace {

using torch::headeronly::ScalarType;

void check_pair(const char* op, const char* name, IntArrayRef value, int64_t min_value) {
  ADDERNET_CHECK(value.size() == 2, op, ": ", name, " must have 2 elements (height, width), got ",
                 value.size());
  ADDERNET_CHECK(value[0] >= min_value && value[1] >= min_value, op, ": ", name,
                 " must be >= ", min_value, ", got ", value);
}

// The floating-point dtypes the kernels compute: float32, float64, and float16 / bfloat16 (in
// float); the float8 types are refused with the same message.
bool is_supported_float(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half ||
         t == ScalarType::BFloat16;
}

void check_like_input(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  ADDERNET_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
                 " does not match input dtype ", input.scalar_type());
  ADDERNET_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
                 " but input is on ", input.device());
}

}  // namespace

Adder2dShape check_adder2d_geometry(const char* op, const Tensor& input, const Tensor& weight,
                                    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                    int64_t groups) {
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
  // No channel means no tap: a reduction over nothing, which the kernels' tiling divides by.
  ADDERNET_CHECK(s.in_channels >= 1, op, ": input must have at least one channel, got shape ",
                 input.sizes());
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
  int64_t padded_h, padded_w, span_h, span_w, out_numel;
  ADDERNET_CHECK(!adder2d_padded_overflows(s.in_h, s.pad_h, &padded_h) &&
                     !adder2d_padded_overflows(s.in_w, s.pad_w, &padded_w),
                 op, ": padding ", padding, " is too large: the padded input size overflows int64");
  ADDERNET_CHECK(!adder2d_span_overflows(s.kernel_h, s.dilation_h, &span_h) &&
                     !adder2d_span_overflows(s.kernel_w, s.dilation_w, &span_w),
                 op, ": dilation ", dilation,
                 " is too large: the dilated kernel size overflows int64");
  ADDERNET_CHECK(span_h <= padded_h && span_w <= padded_w, op, ": kernel (", s.kernel_h, "x",
                 s.kernel_w, ", dilated to ", span_h, "x", span_w,
                 ") is larger than the padded input (", padded_h, "x", padded_w, ")");
  s.out_h = adder2d_out_size(s.in_h, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h);
  s.out_w = adder2d_out_size(s.in_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w);
  const int64_t out_sizes[] = {s.batch, s.out_channels, s.out_h, s.out_w};
  ADDERNET_CHECK(!adder2d_numel_overflows(out_sizes, 4, &out_numel), op, ": the output [", s.batch,
                 ", ", s.out_channels, ", ", s.out_h, ", ", s.out_w,
                 "] has too many elements for int64 (padding ", padding, ", stride ", stride, ")");
  s.taps = s.in_channels_per_group * s.kernel_h * s.kernel_w;
  return s;
}

Adder2dShape check_adder2d_args(const char* op, const Tensor& input, const Tensor& weight,
                                const std::optional<Tensor>& bias, IntArrayRef stride,
                                IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                const std::optional<Tensor>& grad_output) {
  ADDERNET_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W], got ", input.dim(),
                 "-D with shape ", input.sizes());
  ADDERNET_CHECK(weight.dim() == 4, op, ": weight must be 4-D [out_channels, in_channels/groups, ",
                 "kH, kW], got ", weight.dim(), "-D with shape ", weight.sizes());
  ADDERNET_CHECK(is_supported_float(input.scalar_type()), op,
                 ": input must be a floating-point tensor (float32, float64, float16 or "
                 "bfloat16), got ",
                 input.scalar_type());
  check_like_input(op, "weight", weight, input);
  const Adder2dShape s =
      check_adder2d_geometry(op, input, weight, stride, padding, dilation, groups);
  if (bias.has_value() && bias->defined()) {
    ADDERNET_CHECK(bias->dim() == 1 && bias->size(0) == s.out_channels, op,
                   ": bias must have shape [", s.out_channels, "], got ", bias->sizes());
    check_like_input(op, "bias", *bias, input);
  }
  if (grad_output.has_value() && grad_output->defined()) {
    const int64_t expected[] = {s.batch, s.out_channels, s.out_h, s.out_w};
    const IntArrayRef got = grad_output->sizes();
    const bool same = got.size() == 4 && got[0] == expected[0] && got[1] == expected[1] &&
                      got[2] == expected[2] && got[3] == expected[3];
    ADDERNET_CHECK(same, op, ": grad_output must have the output's shape ", IntArrayRef(expected),
                   ", got ", got);
    check_like_input(op, "grad_output", *grad_output, input);
  }
  return s;
}

Adder2dShape check_adder2d_forward_args(const Tensor& input, const Tensor& weight,
                                        const std::optional<Tensor>& bias, IntArrayRef stride,
                                        IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                        const std::string& input_grad) {
  const Adder2dShape s =
      check_adder2d_args("adder2d", input, weight, bias, stride, padding, dilation, groups);
  parse_input_grad_mode("adder2d: input_grad", input_grad);
  return s;
}

Adder2dInputGradArgs check_adder2d_input_grad_args(const Tensor& grad_output, const Tensor& input,
                                                   const Tensor& weight, IntArrayRef stride,
                                                   IntArrayRef padding, IntArrayRef dilation,
                                                   int64_t groups, const std::string& mode) {
  const Adder2dShape s = check_adder2d_args("adder2d_input_grad", input, weight, std::nullopt,
                                            stride, padding, dilation, groups, grad_output);
  return {s, parse_input_grad_mode("adder2d_input_grad: mode", mode) == InputGradMode::Sign};
}

}  // namespace addernet
