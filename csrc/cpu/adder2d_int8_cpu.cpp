// CPU implementation of adder2d_int8 (schema and checks in ../adder2d_int8.cpp, kernels in
// adder2d_int8_kernels.h): the ATen part only. Quantizes the input once per call into the padded
// channels-last code buffer (parallel over images; for the AVX-512 min + dot GEMM also the code
// sums of each padded pixel and each output's patch), packs the weight codes, then runs the
// byte-sum implicit GEMM over (group, tile of output pixels) work items, each owning its outputs.
// Integer sums make the result independent of the thread count and of the instruction set.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "../adder2d_int8.h"
#include "adder2d_cpu.h"
#include "adder2d_int8_cpu.h"

namespace addernet {
namespace cpu {

using torch::headeronly::ScalarType;

Tensor adder2d_int8_cpu(const Tensor& input, const Tensor& weight, const Tensor& scale,
                        const Tensor& alpha, const Tensor& beta, IntArrayRef stride,
                        IntArrayRef padding, IntArrayRef dilation, int64_t groups, bool relu) {
  const Adder2dShape s = check_adder2d_int8_args("adder2d_int8", input, weight, scale, alpha, beta,
                                                 stride, padding, dilation, groups);
  ADDERNET_CHECK(scale.device().is_cpu(), "adder2d_int8: scale must be on the CPU, got ",
                 scale.device());
  const float sc = *torch::stable::contiguous(scale).const_data_ptr<float>();
  ADDERNET_CHECK(std::isfinite(sc) && sc > 0.0f, "adder2d_int8: scale must be finite and > 0, got ",
                 sc);
  // At "avx512" the GEMM runs vpminub + vpdpbusd on reductions of INT8_MIN_DOT_MIN_BYTES (512)
  // bytes or more (KH KW cpg), with the patch sums computed per image; on shorter ones the work
  // around that inner loop (patch sums, epilogue) makes it no faster than vpsadbw (measured,
  // docs/int8.md), and the zmm byte SAD runs without them.
  const std::string isa = cpu_isa();
  const Int8KernelSet ks = isa == "avx512" ? int8_avx512_kernels()
                           : isa == "avx2" ? int8_avx2_kernels()
                                           : int8_base_kernels();
  // A channels-last input is read in place and the output written channels-last; any other
  // layout is made contiguous NCHW first.
  const bool channels_last = adder2d_int8_channels_last(input);
  const Int8Geom gm = make_int8_geom(s, channels_last);
  Tensor y = adder2d_int8_empty_output(input, s, channels_last);
  if (y.numel() == 0) return y;
  const Tensor x = channels_last ? input : torch::stable::contiguous(input);
  const Tensor w = torch::stable::contiguous(weight);
  const Tensor a = torch::stable::contiguous(alpha);
  const Tensor b = torch::stable::contiguous(beta);
  const int64_t image_codes = s.groups * gm.hp * gm.wp * gm.cpg;
  Tensor xq =
      torch::stable::empty({s.batch * image_codes}, ScalarType::Byte, std::nullopt, input.device());
  Tensor wpk = torch::stable::empty({gm.wpk_bytes}, ScalarType::Byte, std::nullopt, input.device());
  // The min + dot GEMM also needs each padded pixel's code sum and each output's patch sum.
  const int64_t image_pixels = s.groups * gm.hp * gm.wp,
                image_outputs = s.groups * s.out_h * s.out_w;
  std::optional<Tensor> sums;
  if (ks.pixel_sums != nullptr && gm.kq >= INT8_MIN_DOT_MIN_BYTES)
    sums = torch::stable::empty({s.batch * (image_pixels + image_outputs)}, ScalarType::Int,
                                std::nullopt, input.device());
  int32_t* psp = sums ? sums->mutable_data_ptr<int32_t>() : nullptr;
  int32_t* asp = sums ? psp + s.batch * image_pixels : nullptr;
  uint8_t* xqp = xq.mutable_data_ptr<uint8_t>();
  uint8_t* wpkp = wpk.mutable_data_ptr<uint8_t>();
  ks.pack_weight(gm, w.const_data_ptr<int8_t>(), wpkp);
  const float* xp = x.const_data_ptr<float>();
  const int64_t image_floats = s.in_channels * s.in_h * s.in_w;
  torch::stable::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      ks.quantize_image(gm, xp + n * image_floats, sc, xqp + n * image_codes);
      if (psp != nullptr)
        ks.pixel_sums(gm, xqp + n * image_codes, psp + n * image_pixels, asp + n * image_outputs);
    }
  });
  const float* ap = a.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  const int64_t tiles = (gm.pixels + gm.tile_pixels - 1) / gm.tile_pixels;
  torch::stable::parallel_for(0, s.groups * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch(int8_scratch_bytes(gm) / 8);
    uint8_t* sp = reinterpret_cast<uint8_t*>(scratch.data());
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i / tiles, tile = i % tiles;
      ks.forward_tile(gm, xqp, asp, wpkp, ap, bp, relu, yp, g, tile * gm.tile_pixels, sp);
    }
  });
  return y;
}

STABLE_TORCH_LIBRARY_IMPL(addernet, CPU, m) {
  m.impl("adder2d_int8", TORCH_BOX(&adder2d_int8_cpu));
}

}  // namespace cpu
}  // namespace addernet
