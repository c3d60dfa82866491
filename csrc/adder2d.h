// Host-side declarations shared by the adder2d backends: argument validation that turns the
// op arguments into an Adder2dShape (adder2d_shape.h), the input-gradient modes, and the error
// macro of every op entry.
//
//   Y[n,co,oh,ow] = -sum_{ci,kh,kw} |Xp[n, c, ih, iw] - W[co,ci,kh,kw]|  (+ bias[co])
//
// with c = grp(co) * (C/groups) + ci, grp(co) = co / (Co/groups) the group of output channel co,
// Xp the zero-padded input (padded taps count) and ih, iw as in adder2d_shape.h.
//
// Everything here is on torch's stable ABI (torch/csrc/stable, torch/headeronly): one build of
// the op libraries runs on every torch from the TORCH_TARGET_VERSION that setup.py sets.
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/Dispatch_v2.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>

#include <cstdint>
#include <optional>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

#include "adder2d_shape.h"

namespace addernet {

using Tensor = torch::stable::Tensor;
using IntArrayRef = torch::headeronly::IntHeaderOnlyArrayRef;

namespace detail {

// The error message is built with std::string alone, no iostream: an extension linked against a
// libstdc++ other than the one the process loaded (a static copy, or another compiler's) can
// crash formatting a number through the other copy's locale facets, and did on one GPU machine.
template <typename T>
inline constexpr bool unsupported_in_message = false;

template <typename T>
void append(std::string& out, const T& v) {
  if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    out.append(std::string_view(v));
  } else if constexpr (std::is_same_v<T, bool>) {
    out.append(v ? "true" : "false");
  } else if constexpr (std::is_same_v<T, char>) {
    out.push_back(v);
  } else if constexpr (std::is_integral_v<T>) {
    out.append(std::to_string(v));
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));
    out.append(buf);
  } else if constexpr (std::is_same_v<T, torch::headeronly::ScalarType>) {
    out.append(torch::headeronly::toString(v));
  } else if constexpr (std::is_same_v<T, IntArrayRef>) {
    out.push_back('[');
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) out.append(", ");
      out.append(std::to_string(v[i]));
    }
    out.push_back(']');
  } else if constexpr (std::is_same_v<T, torch::stable::Device>) {
    out.append(v.is_cuda() ? "cuda" : v.is_cpu() ? "cpu" : "device type ");
    if (!v.is_cuda() && !v.is_cpu()) out.append(std::to_string(static_cast<int>(v.type())));
    if (v.has_index() && !v.is_cpu()) {
      out.push_back(':');
      out.append(std::to_string(static_cast<int>(v.index())));
    }
  } else {
    static_assert(unsupported_in_message<T>, "ADDERNET_CHECK: no text form for this type");
  }
}

template <typename... Args>
std::string message(const Args&... args) {
  std::string out;
  (append(out, args), ...);
  return out;
}

}  // namespace detail

// Throws std::runtime_error (RuntimeError in Python) with the concatenated message. Unlike
// STD_TORCH_CHECK it adds no function name, source path or line: the message is what the user
// reads, and a build directory's path means nothing to them.
#define ADDERNET_CHECK(cond, ...)                                                    \
  do {                                                                               \
    if (!(cond)) throw std::runtime_error(::addernet::detail::message(__VA_ARGS__)); \
  } while (0)

// Header-only dtype dispatch: runs the lambda (a body using scalar_t) for float and double, or
// also for float16 and bfloat16. THO_DISPATCH_V2 hands its body through several macros without
// wrapping it again, so it goes in parentheses: no comma inside it (template arguments, kernel
// launches) can split it.
#define ADDERNET_DISPATCH_FLOAT_DOUBLE(TYPE, NAME, ...) \
  THO_DISPATCH_V2(TYPE, NAME, AT_WRAP((__VA_ARGS__)), AT_EXPAND(AT_FLOATING_TYPES))
#define ADDERNET_DISPATCH_FLOATING_AND_HALF(TYPE, NAME, ...)                        \
  THO_DISPATCH_V2(TYPE, NAME, AT_WRAP((__VA_ARGS__)), AT_EXPAND(AT_FLOATING_TYPES), \
                  torch::headeronly::ScalarType::Half, torch::headeronly::ScalarType::BFloat16)

// How adder2d_input_grad turns (W - X) into a gradient weight: clamp to [-1, 1] (AdderNet's
// HardTanh rule) or sign (the true derivative of -|X - W|).
enum class InputGradMode { HardTanh, Sign };

// `what` names the argument in the error message, e.g. "adder2d_input_grad: mode".
InputGradMode parse_input_grad_mode(const char* what, const std::string& mode);

// The checks every adder2d op shares, the int8 one included, once the ranks (4-D input and
// weight), dtypes and devices are checked: stride, padding, dilation and groups, the channel
// counts, the kernel against the padded input, int64 overflow of the sizes. Returns the sizes.
Adder2dShape check_adder2d_geometry(const char* op, const Tensor& input, const Tensor& weight,
                                    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                    int64_t groups);

// The preamble of the adder2d op entries of every backend: check_adder2d_args under the op's
// name, then the input-gradient mode (its error names the argument). The forward returns the
// sizes; the input gradient the sizes and whether the mode is "exact" (sign).
Adder2dShape check_adder2d_forward_args(const Tensor& input, const Tensor& weight,
                                        const std::optional<Tensor>& bias, IntArrayRef stride,
                                        IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                        const std::string& input_grad);
struct Adder2dInputGradArgs {
  Adder2dShape shape;
  bool sign_mode;
};
Adder2dInputGradArgs check_adder2d_input_grad_args(const Tensor& grad_output, const Tensor& input,
                                                   const Tensor& weight, IntArrayRef stride,
                                                   IntArrayRef padding, IntArrayRef dilation,
                                                   int64_t groups, const std::string& mode);

// Validates the arguments of every adder2d op and returns the sizes. `op` names the op in
// error messages. `grad_output`, when given, must have the output's shape.
Adder2dShape check_adder2d_args(const char* op, const Tensor& input, const Tensor& weight,
                                const std::optional<Tensor>& bias, IntArrayRef stride,
                                IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                const std::optional<Tensor>& grad_output = std::nullopt);

}  // namespace addernet
