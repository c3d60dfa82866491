// Shape and index math of adder2d, shared by the CPU and CUDA kernels so they cannot drift.
//
// Input X[N, C, H, W], weight W[Co, C/groups, KH, KW]; output Y[N, Co, OH, OW] with
//   OH = floor((H + 2*ph - dh*(KH-1) - 1) / sh) + 1          (same for OW)
// Output pixel (oh, ow) reads, through tap (kh, kw), the (zero-padded) input pixel
//   ih = oh*sh + kh*dh - ph,   iw = ow*sw + kw*dw - pw.
// Everything here is plain integer arithmetic usable on the host and on the device.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ADDER_HOST_DEVICE __host__ __device__ __forceinline__
#else
// static: every translation unit keeps its own copy (the CPU kernels are compiled once per
// instruction set, and no AVX2 copy may be merged into the baseline one).
#define ADDER_HOST_DEVICE static inline
#endif

namespace addernet {

// Every size of one adder2d call, validated once on the host (see adder2d.cpp).
struct Adder2dShape {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups;
  int64_t in_channels_per_group, out_channels_per_group;
  // Reduction length of one output element: (C/groups) * KH * KW.
  int64_t taps;
};

// Overflow-checked int64 arithmetic for the host-side shape checks (GCC/Clang builtins; not
// for device code). Each stores the exact result in *out and returns whether it overflowed
// (then *out is unspecified).
static inline bool adder2d_mul_add_overflows(int64_t a, int64_t b, int64_t c, int64_t* out) {
  int64_t product;
  return __builtin_mul_overflow(a, b, &product) || __builtin_add_overflow(product, c, out);
}

// The zero-padded length in + 2 * pad.
static inline bool adder2d_padded_overflows(int64_t in, int64_t pad, int64_t* out) {
  return adder2d_mul_add_overflows(2, pad, in, out);
}

// The dilated kernel length dilation * (kernel - 1) + 1 (kernel >= 1).
static inline bool adder2d_span_overflows(int64_t kernel, int64_t dilation, int64_t* out) {
  return adder2d_mul_add_overflows(dilation, kernel - 1, 1, out);
}

// The product of n sizes (each >= 0).
static inline bool adder2d_numel_overflows(const int64_t* sizes, int n, int64_t* out) {
  *out = 1;
  for (int i = 0; i < n; ++i)
    if (adder2d_mul_add_overflows(*out, sizes[i], 0, out)) return true;
  return false;
}

// Only valid once the padded length and the span are known to fit (see adder2d.cpp); then no
// step here overflows.
ADDER_HOST_DEVICE int64_t adder2d_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                                           int64_t dilation) {
  return (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}

// The two coordinate maps below are written once for any signed integer type I: the CPU uses
// int64_t (the plain names); CUDA kernels instantiate them with int where the host checked that
// every spatial size fits, which saves 64-bit divisions on the device.

// Input coordinate read by output coordinate `out` through kernel tap `k` (may be < 0 or >= size:
// a padded tap, whose value is 0).
template <typename I>
ADDER_HOST_DEVICE I adder2d_in_index_t(I out, I k, I stride, I pad, I dilation) {
  return out * stride + k * dilation - pad;
}

// The output coordinate that reads input coordinate `in` through tap `k`, or -1 if none does
// (the inverse of adder2d_in_index; exact for any stride).
template <typename I>
ADDER_HOST_DEVICE I adder2d_out_index_t(I in, I k, I stride, I pad, I dilation, I out_size) {
  const I t = in + pad - k * dilation;
  if (t < 0 || t % stride != 0) return -1;
  const I out = t / stride;
  return out < out_size ? out : -1;
}

ADDER_HOST_DEVICE int64_t adder2d_in_index(int64_t out, int64_t k, int64_t stride, int64_t pad,
                                           int64_t dilation) {
  return adder2d_in_index_t<int64_t>(out, k, stride, pad, dilation);
}

ADDER_HOST_DEVICE int64_t adder2d_out_index(int64_t in, int64_t k, int64_t stride, int64_t pad,
                                            int64_t dilation, int64_t out_size) {
  return adder2d_out_index_t<int64_t>(in, k, stride, pad, dilation, out_size);
}

// Half-open range [*begin, *end) of output coordinates whose tap `k` lands inside [0, in_size).
// Outside it the tap reads padding.
ADDER_HOST_DEVICE void adder2d_valid_out_range(int64_t k, int64_t stride, int64_t pad,
                                               int64_t dilation, int64_t in_size, int64_t out_size,
                                               int64_t* begin, int64_t* end) {
  // out*stride + off >= 0  and  out*stride + off <= in_size - 1, with off = k*dilation - pad.
  const int64_t off = k * dilation - pad;
  // ceil(-off / stride) without forming -off + stride - 1, which can overflow for huge strides.
  int64_t lo = off >= 0 ? 0 : (-off) / stride + ((-off) % stride != 0);
  const int64_t last = in_size - 1 - off;
  int64_t hi = last < 0 ? 0 : last / stride + 1;
  if (hi > out_size) hi = out_size;
  if (lo > hi) lo = hi;
  *begin = lo;
  *end = hi;
}

// One axis of a phase of a strided layer's input gradient. Phase q holds the input pixels
// h = q + stride * a, a < size; through tap k either all of them read an output pixel or none
// does: the taps that do are k = first + step * t, t < count (those with q + pad - k * dilation a
// multiple of the stride; step = stride / gcd(stride, dilation)), and through tap first + step * t
// pixel a reads output row a + (q + pad - first * dilation) / stride - t * step * dilation /
// stride, the divisions exact: a stride-1 problem on the phase's pixels. count 0 (first = kernel):
// no tap reads the phase, its gradient is 0. The CPU and CUDA input gradients both split by it.
struct Adder2dPhaseAxis {
  int64_t size = 0;
  int first = 0, step = 1, count = 0;
};

ADDER_HOST_DEVICE Adder2dPhaseAxis adder2d_phase_axis(int q, int64_t in, int kernel, int stride,
                                                      int pad, int dilation) {
  Adder2dPhaseAxis a;
  a.size = q < in ? (in - q + stride - 1) / stride : 0;
  int gcd = stride, r = dilation % stride;
  while (r != 0) {
    const int t = gcd % r;
    gcd = r;
    r = t;
  }
  a.step = stride / gcd;  // validity repeats with this period in k
  a.first = kernel;
  for (int k = 0; k < a.step && k < kernel; ++k) {
    if ((int64_t(q) + pad - int64_t(k) * dilation) % stride == 0) {
      a.first = k;
      break;
    }
  }
  a.count = a.first < kernel ? (kernel - 1 - a.first) / a.step + 1 : 0;
  return a;
}

}  // namespace addernet
