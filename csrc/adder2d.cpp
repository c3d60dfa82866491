// Op schemas of the `addernet` library and the argument checks every backend shares.
//
//   adder2d(X, W, b)               Y  = -sum |Xp - W| (+ b)                  [N, Co, OH, OW]
//   adder2d_input_grad(dY, X, W)   dX = sum dY * HT(W - X)  (or sign(W - X)) [N, C, H, W]
//   adder2d_weight_grad(dY, X, W)  dW = sum dY * (Xp - W)   full precision   [Co, C/g, KH, KW]
//
// adder2d's `input_grad` ("hardtanh" or "exact") only selects the rule its autograd formula
// uses for dX. The bias gradient is sum(dY) over (n, oh, ow) and needs no op of its own. Autograd and
// fake (meta) kernels are registered in Python (addernet_cuda/ops.py).
#include "adder2d.h"

#include <torch/library.h>

namespace addernet {

InputGradMode parse_input_grad_mode(const char* what, c10::string_view mode) {
  if (mode == "hardtanh") return InputGradMode::HardTanh;
  if (mode == "exact") return InputGradMode::Sign;
  TORCH_CHECK(false, what, " must be \"hardtanh\" or \"exact\", got \"", std::string(mode), "\"");
}

namespace {

void check_pair(const char* op, const char* name, at::IntArrayRef value, int64_t min_value) {
  TORCH_CHECK(value.size() == 2, op, ": ", name, " must have 2 elements (height, width), got ",
              value.size());
  TORCH_CHECK(value[0] >= min_value && value[1] >= min_value, op, ": ", name,
              " must be >= ", min_value, ", got ", value);
}

}  // namespace

Adder2dShape check_adder2d_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                const at::Tensor& grad_output) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W], got ", input.dim(),
              "-D with shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D [out_channels, in_channels/groups, ",
              "kH, kW], got ", weight.dim(), "-D with shape ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": input must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op, ": weight dtype ",
              weight.scalar_type(), " does not match input dtype ", input.scalar_type());
  TORCH_CHECK(weight.device() == input.device(), op, ": weight is on ", weight.device(),
              " but input is on ", input.device());
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);

  Adder2dShape s;
  s.batch = input.size(0);
  s.in_channels = input.size(1);
  s.in_h = input.size(2);
  s.in_w = input.size(3);
  s.out_channels = weight.size(0);
  s.kernel_h = weight.size(2);
  s.kernel_w = weight.size(3);
  s.groups = groups;
  TORCH_CHECK(s.in_channels % groups == 0, op, ": groups (", groups,
              ") must divide the input channels (", s.in_channels, ")");
  TORCH_CHECK(s.out_channels % groups == 0, op, ": groups (", groups,
              ") must divide the output channels, weight.size(0) = ", s.out_channels);
  s.in_channels_per_group = s.in_channels / groups;
  s.out_channels_per_group = s.out_channels / groups;
  TORCH_CHECK(weight.size(1) == s.in_channels_per_group, op,
              ": weight.size(1) must be in_channels / groups = ", s.in_channels, " / ", groups,
              " = ", s.in_channels_per_group, ", got weight of shape ", weight.sizes());
  TORCH_CHECK(s.kernel_h >= 1 && s.kernel_w >= 1, op, ": weight kernel size must be >= 1, got ",
              weight.sizes());
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dilation_h = dilation[0];
  s.dilation_w = dilation[1];
  int64_t padded_h, padded_w, span_h, span_w, out_numel;
  TORCH_CHECK(!adder2d_padded_overflows(s.in_h, s.pad_h, &padded_h) &&
                  !adder2d_padded_overflows(s.in_w, s.pad_w, &padded_w),
              op, ": padding ", padding, " is too large: the padded input size overflows int64");
  TORCH_CHECK(!adder2d_span_overflows(s.kernel_h, s.dilation_h, &span_h) &&
                  !adder2d_span_overflows(s.kernel_w, s.dilation_w, &span_w),
              op, ": dilation ", dilation,
              " is too large: the dilated kernel size overflows int64");
  TORCH_CHECK(span_h <= padded_h && span_w <= padded_w, op, ": kernel (", s.kernel_h, "x",
              s.kernel_w, ", dilated to ", span_h, "x", span_w,
              ") is larger than the padded input (", padded_h, "x", padded_w, ")");
  s.out_h = adder2d_out_size(s.in_h, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h);
  s.out_w = adder2d_out_size(s.in_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w);
  const int64_t out_sizes[] = {s.batch, s.out_channels, s.out_h, s.out_w};
  TORCH_CHECK(!adder2d_numel_overflows(out_sizes, 4, &out_numel), op, ": the output [", s.batch,
              ", ", s.out_channels, ", ", s.out_h, ", ", s.out_w,
              "] has too many elements for int64 (padding ", padding, ", stride ", stride, ")");
  s.taps = s.in_channels_per_group * s.kernel_h * s.kernel_w;

  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.out_channels, op, ": bias must have shape [",
                s.out_channels, "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), op, ": bias dtype ",
                bias->scalar_type(), " does not match input dtype ", input.scalar_type());
    TORCH_CHECK(bias->device() == input.device(), op, ": bias is on ", bias->device(),
                " but input is on ", input.device());
  }
  if (grad_output.defined()) {
    const std::vector<int64_t> expected{s.batch, s.out_channels, s.out_h, s.out_w};
    TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op,
                ": grad_output must have the output's shape ", at::IntArrayRef(expected), ", got ",
                grad_output.sizes());
    TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output dtype ",
                grad_output.scalar_type(), " does not match input dtype ", input.scalar_type());
    TORCH_CHECK(grad_output.device() == input.device(), op, ": grad_output is on ",
                grad_output.device(), " but input is on ", input.device());
  }
  return s;
}

TORCH_LIBRARY(addernet, m) {
  m.def(
      "adder2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, str input_grad=\"hardtanh\") -> Tensor");
  m.def(
      "adder2d_input_grad(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, str mode) -> Tensor");
  m.def(
      "adder2d_weight_grad(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
}

}  // namespace addernet
