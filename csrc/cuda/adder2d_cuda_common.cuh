// Pieces shared by the adder2d CUDA kernels (adder2d_forward_kernels.cuh,
// adder2d_input_grad_kernels.cuh, adder2d_weight_grad_kernels.cuh). Free of torch headers: the
// kernels work on raw pointers and an Adder2dGeom, and the same source is compiled by nvcc and by
// the CPU emulation (tests/cuda_emulation/); only the op entry functions in the .cu files use
// torch (its stable ABI).
//
// Accumulation type: float for float, float16 and bfloat16, double for double. Tensors are
// contiguous NCHW (input, grad_output) and [Co, C/groups, KH, KW] (weight).
#pragma once

#include <cstdint>

#include "../adder2d_shape.h"

namespace addernet {
namespace cuda {

constexpr int kThreads = 256;

template <typename T>
struct AccType {
  using type = float;  // float, c10::Half, c10::BFloat16
};
template <>
struct AccType<double> {
  using type = double;
};

// Sizes of one call for the device: spatial sizes, strides, paddings, dilations and channel
// counts as int (the host checks they fit, adder2d_geom_fits), products that can pass 2^31
// as int64_t.
struct Adder2dGeom {
  int64_t batch, in_channels, out_channels;
  int64_t in_plane;   // H * W
  int64_t out_plane;  // OH * OW
  int64_t columns;    // batch * OH * OW: the pixel dimension of the implicit GEMM
  int64_t taps;       // (C/groups) * KH * KW: the reduction length of the forward
  int in_h, in_w, out_h, out_w, kernel_h, kernel_w;
  int stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int groups, in_per_group, out_per_group, kernel_area;
};

inline bool adder2d_geom_fits(const Adder2dShape& s) {
  const int64_t lim = INT32_MAX;
  const int64_t v[] = {s.in_h, s.in_w, s.out_h, s.out_w, s.kernel_h, s.kernel_w, s.stride_h,
                       s.stride_w, s.pad_h, s.pad_w, s.dilation_h, s.dilation_w, s.groups,
                       s.in_channels_per_group, s.out_channels_per_group, s.kernel_h * s.kernel_w,
                       // in + pad and k * dilation in adder2d_*_index_t<int>
                       s.in_h + 2 * s.pad_h, s.in_w + 2 * s.pad_w, s.dilation_h * s.kernel_h,
                       s.dilation_w * s.kernel_w, s.out_h * s.stride_h + s.dilation_h * s.kernel_h,
                       s.out_w * s.stride_w + s.dilation_w * s.kernel_w};
  for (int64_t x : v)
    if (x > lim) return false;
  return true;
}

inline Adder2dGeom adder2d_geom(const Adder2dShape& s) {
  Adder2dGeom g;
  g.batch = s.batch;
  g.in_channels = s.in_channels;
  g.out_channels = s.out_channels;
  g.in_plane = s.in_h * s.in_w;
  g.out_plane = s.out_h * s.out_w;
  g.columns = s.batch * g.out_plane;
  g.taps = s.taps;
  g.in_h = int(s.in_h);
  g.in_w = int(s.in_w);
  g.out_h = int(s.out_h);
  g.out_w = int(s.out_w);
  g.kernel_h = int(s.kernel_h);
  g.kernel_w = int(s.kernel_w);
  g.stride_h = int(s.stride_h);
  g.stride_w = int(s.stride_w);
  g.pad_h = int(s.pad_h);
  g.pad_w = int(s.pad_w);
  g.dilation_h = int(s.dilation_h);
  g.dilation_w = int(s.dilation_w);
  g.groups = int(s.groups);
  g.in_per_group = int(s.in_channels_per_group);
  g.out_per_group = int(s.out_channels_per_group);
  g.kernel_area = int(s.kernel_h * s.kernel_w);
  return g;
}

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// What a launch configuration may depend on besides the shape: the device's SM count and the grid
// caps. The defaults are the GPU's caps; the emulation lowers them (to 2 or 3) to run the
// grid-stride and split loops that the real caps reach only with gigabytes of data.
struct LaunchLimits {
  int sm_count = 1;
  int64_t max_blocks_1d = int64_t(1) << 20;   // grid-stride kernels: direct forward, input grad
  int64_t max_grid_y = 65535;                 // tiled forward's grid.y, weight-gradient splits
  int64_t max_sum_blocks = int64_t(1) << 16;  // the weight gradient's split sum
};

// q = a / b, r = a % b for a >= 0, b > 0, with 32-bit division when both fit.
__device__ __forceinline__ void divmod_nonneg(int64_t a, int64_t b, int64_t& q, int64_t& r) {
  if (((a | b) >> 32) == 0) {
    const uint32_t q32 = uint32_t(a) / uint32_t(b);
    q = q32;
    r = int64_t(uint32_t(a) - q32 * uint32_t(b));
  } else {
    q = a / b;
    r = a - q * b;
  }
}

__device__ __forceinline__ float adder_abs(float v) {
  return fabsf(v);
}
__device__ __forceinline__ double adder_abs(double v) {
  return fabs(v);
}

// Four consecutive accumulator values from shared memory (16-byte aligned) into r[0..3].
__device__ __forceinline__ void load4(const float* p, float* r) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  r[0] = v.x;
  r[1] = v.y;
  r[2] = v.z;
  r[3] = v.w;
}
__device__ __forceinline__ void load4(const double* p, double* r) {
  const double2 a = reinterpret_cast<const double2*>(p)[0];
  const double2 b = reinterpret_cast<const double2*>(p)[1];
  r[0] = a.x;
  r[1] = a.y;
  r[2] = b.x;
  r[3] = b.y;
}

}  // namespace cuda
}  // namespace addernet
