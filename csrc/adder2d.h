// Host-side declarations shared by the adder2d backends: argument validation that turns the
// op arguments into an Adder2dShape (adder2d_shape.h), and the input-gradient modes.
//
//   Y[n,co,oh,ow] = -sum_{ci,kh,kw} |Xp[n, c, ih, iw] - W[co,ci,kh,kw]|  (+ bias[co])
//
// with c = grp(co) * (C/groups) + ci, grp(co) = co / (Co/groups) the group of output channel co,
// Xp the zero-padded input (padded taps count) and ih, iw as in adder2d_shape.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include "adder2d_shape.h"

namespace addernet {

// How adder2d_input_grad turns (W - X) into a gradient weight: clamp to [-1, 1] (AdderNet's
// HardTanh rule) or sign (the true derivative of -|X - W|).
enum class InputGradMode { HardTanh, Sign };

// `what` names the argument in the error message, e.g. "adder2d_input_grad: mode".
InputGradMode parse_input_grad_mode(const char* what, c10::string_view mode);

// Validates the arguments of every adder2d op and returns the sizes. `op` names the op in
// error messages. `grad_output`, when defined, must have the output's shape.
Adder2dShape check_adder2d_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                const at::Tensor& grad_output = at::Tensor());

}  // namespace addernet
