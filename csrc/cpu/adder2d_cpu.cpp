// CPU implementations of the adder2d ops (schemas and math in adder2d.cpp): argument checks,
// contiguous layout, threading with at::parallel_for, and the choice of instruction set. The
// arithmetic lives in adder2d_cpu_kernels.h.
//
// float and double run natively; float16 and bfloat16 are computed in float and rounded once.
// Outputs are contiguous NCHW (and the fake kernels in ops.py say so too).
#include "adder2d_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <vector>

#include "../adder2d.h"

namespace addernet {
namespace cpu {

namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool default_use_avx2() {
  const char* env = std::getenv("ADDERNET_CPU_ISA");
  if (env != nullptr && std::string(env) == "base") return false;
  return avx2_compiled() && cpu_has_avx2();
}

std::atomic<bool>& use_avx2() {
  static std::atomic<bool> flag{default_use_avx2()};
  return flag;
}

template <typename T>
KernelSet<T> kernels();

template <>
KernelSet<float> kernels<float>() {
  return use_avx2() ? avx2_kernels_float() : base_kernels_float();
}

template <>
KernelSet<double> kernels<double>() {
  return use_avx2() ? avx2_kernels_double() : base_kernels_double();
}

bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return t;
  return t->to(at::kFloat);
}

}  // namespace

std::string cpu_isa() {
  return use_avx2() ? "avx2" : "base";
}

void set_cpu_isa(const std::string& isa) {
  TORCH_CHECK(isa == "base" || isa == "avx2",
              "set_cpu_isa: isa must be \"base\" or \"avx2\", got \"", isa, "\"");
  if (isa == "avx2") {
    TORCH_CHECK(avx2_compiled(), "set_cpu_isa: this build has no AVX2 kernels");
    TORCH_CHECK(cpu_has_avx2(), "set_cpu_isa: this CPU lacks AVX2 or FMA");
  }
  use_avx2() = (isa == "avx2");
}

at::Tensor adder2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       c10::string_view input_grad) {
  const Adder2dShape s =
      check_adder2d_args("adder2d", input, weight, bias, stride, padding, dilation, groups);
  parse_input_grad_mode("adder2d: input_grad", input_grad);
  if (is_reduced_float(input)) {
    return adder2d_cpu(input.to(at::kFloat), weight.to(at::kFloat), to_float(bias), stride, padding,
                       dilation, groups, input_grad)
        .to(input.scalar_type());
  }
  at::Tensor y = at::empty({s.batch, s.out_channels, s.out_h, s.out_w}, input.options());
  if (y.numel() == 0) return y;
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adder2d_cpu", [&] {
    const KernelSet<scalar_t> ks = kernels<scalar_t>();
    const int64_t L = s.out_h * s.out_w;
    const int64_t tiles = (L + ks.tile_pixels - 1) / ks.tile_pixels;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int64_t cig = s.in_channels_per_group, cog = s.out_channels_per_group;
    // Work item = (image, group, pixel tile); each owns its outputs.
    at::parallel_for(0, s.batch * s.groups * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(ks.forward_scratch + cog * ks.tile_pixels);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t tile = i % tiles, g = (i / tiles) % s.groups, n = i / (tiles * s.groups);
        ks.forward_tile(s, xp + (n * s.in_channels + g * cig) * s.in_h * s.in_w,
                        wp + g * cog * s.taps, bp ? bp + g * cog : nullptr,
                        yp + (n * s.out_channels + g * cog) * L, tile * ks.tile_pixels,
                        scratch.data());
      }
    });
  });
  return y;
}

at::Tensor adder2d_input_grad_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                  c10::string_view mode) {
  const Adder2dShape s = check_adder2d_args("adder2d_input_grad", input, weight, std::nullopt,
                                            stride, padding, dilation, groups, grad_output);
  const bool sign_mode =
      parse_input_grad_mode("adder2d_input_grad: mode", mode) == InputGradMode::Sign;
  if (is_reduced_float(input)) {
    return adder2d_input_grad_cpu(grad_output.to(at::kFloat), input.to(at::kFloat),
                                  weight.to(at::kFloat), stride, padding, dilation, groups, mode)
        .to(input.scalar_type());
  }
  at::Tensor gx = at::empty({s.batch, s.in_channels, s.in_h, s.in_w}, input.options());
  if (gx.numel() == 0) return gx;
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adder2d_input_grad_cpu", [&] {
    const KernelSet<scalar_t> ks = kernels<scalar_t>();
    TORCH_CHECK(ks.input_grad_scratch(s) >= 0, "adder2d_input_grad: padding ", padding,
                " and dilation ", dilation, " are too large: the work buffer overflows int64");
    const int64_t L = s.out_h * s.out_w, HW = s.in_h * s.in_w;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const int64_t cig = s.in_channels_per_group, cog = s.out_channels_per_group;
    // Work item = one input plane (n, c); each owns its gradient.
    at::parallel_for(0, s.batch * s.in_channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(ks.input_grad_scratch(s));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t c = i % s.in_channels, n = i / s.in_channels;
        const int64_t g = c / cig, ci = c % cig;
        // Consecutive planes of one image and group share dY (and its padded copy).
        const bool reuse = i > begin && (i - 1) / cig == i / cig;
        ks.input_grad_plane(s, dyp + (n * s.out_channels + g * cog) * L, xp + i * HW,
                            wp + g * cog * s.taps + ci * s.kernel_h * s.kernel_w, gxp + i * HW,
                            sign_mode, scratch.data(), reuse);
      }
    });
  });
  return gx;
}

at::Tensor adder2d_weight_grad_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& weight, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                   int64_t groups) {
  const Adder2dShape s = check_adder2d_args("adder2d_weight_grad", input, weight, std::nullopt,
                                            stride, padding, dilation, groups, grad_output);
  if (is_reduced_float(input)) {
    return adder2d_weight_grad_cpu(grad_output.to(at::kFloat), input.to(at::kFloat),
                                   weight.to(at::kFloat), stride, padding, dilation, groups)
        .to(input.scalar_type());
  }
  at::Tensor gw = at::empty(weight.sizes(), weight.options());
  if (gw.numel() == 0) return gw;
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adder2d_weight_grad_cpu", [&] {
    const KernelSet<scalar_t> ks = kernels<scalar_t>();
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    const int64_t cog = s.out_channels_per_group;
    const int64_t blocks = (s.taps + ks.weight_grad_taps - 1) / ks.weight_grad_taps;
    // Work item = (group, block of taps) for all the group's output channels: each reduces in a
    // fixed order whatever the thread count.
    at::parallel_for(0, s.groups * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(ks.weight_grad_scratch(s));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t g = i / blocks, k0 = (i % blocks) * ks.weight_grad_taps;
        ks.weight_grad_block(s, dyp, xp, wp + g * cog * s.taps, gwp + g * cog * s.taps, g, k0,
                             scratch.data());
      }
    });
  });
  return gw;
}

TORCH_LIBRARY_IMPL(addernet, CPU, m) {
  m.impl("adder2d", &adder2d_cpu);
  m.impl("adder2d_input_grad", &adder2d_input_grad_cpu);
  m.impl("adder2d_weight_grad", &adder2d_weight_grad_cpu);
}

}  // namespace cpu
}  // namespace addernet
