// The CPU kernels of adder2d as a table of function pointers, one table per instruction set
// (adder2d_cpu_kernels.h compiled in adder2d_cpu_base.cpp and adder2d_cpu_avx2.cpp); the op
// implementations in adder2d_cpu.cpp pick a table at run time.
#pragma once

#include <cstdint>
#include <string>

#include "../adder2d_shape.h"

namespace addernet {
namespace cpu {

// The forward's input, prepared once per input plane for the direct path: zero padded, its columns
// split into stride_w phases, so that the `lanes` consecutive output pixels of a row segment read
// `lanes` consecutive elements through every tap (no packing). Element (f, r, i) of a prepared
// plane is X[r - pad_h][i * stride_w + f - pad_w], zero outside the image. Output pixels go by
// vectors of `lanes` pixels of one row, `tile_vectors` consecutive vectors (row-major) per tile.
struct ForwardLayout {
  bool direct;          // false: the copy would be much larger than the input, or rows too short
  int64_t rows, cols;   // of one phase
  int64_t plane;        // elements of a prepared plane: stride_w * rows * cols
  int64_t row_vectors;  // vectors per output row: ceil(out_w / lanes)
  int64_t tiles;        // tiles per image and group
};

// The layout for vectors of `lanes` elements and tiles of `tile_vectors` vectors.
inline ForwardLayout forward_layout(const Adder2dShape& s, int64_t lanes, int64_t tile_vectors) {
  ForwardLayout l{};
  l.row_vectors = (s.out_w + lanes - 1) / lanes;
  int64_t vectors = 0, last_row = 0, span_h = 0, rows = 0, cols = 0, plane = 0, in_plane = 0;
  // Rows read: (out_h - 1) * stride_h + (kernel_h - 1) * dilation_h + 1; columns of a phase:
  // every vector whole, shifted by up to (kernel_w - 1) * dilation_w / stride_w.
  const bool overflow =
      adder2d_mul_add_overflows(s.out_h, l.row_vectors, 0, &vectors) ||
      adder2d_mul_add_overflows(s.out_h - 1, s.stride_h, 0, &last_row) ||
      adder2d_mul_add_overflows(s.kernel_h - 1, s.dilation_h, 1, &span_h) ||
      __builtin_add_overflow(last_row, span_h, &rows) ||
      adder2d_mul_add_overflows(l.row_vectors, lanes, (s.kernel_w - 1) * s.dilation_w / s.stride_w,
                                &cols) ||
      adder2d_mul_add_overflows(s.stride_w * rows, cols, 0, &plane) ||
      adder2d_mul_add_overflows(s.in_h, s.in_w, 0, &in_plane);
  // Direct when the copy stays within a few times the input and at least half the lanes of a
  // row's vectors hold pixels.
  l.direct = !overflow && plane <= 4 * in_plane + 64 * lanes && 2 * s.out_w >= lanes;
  l.rows = rows;
  l.cols = cols;
  l.plane = plane;
  l.tiles = (vectors + tile_vectors - 1) / tile_vectors;
  return l;
}

template <typename T>
struct KernelSet {
  // Output pixels [p0, p0 + tile_pixels) of one image and group; see adder2d_cpu_kernels.h.
  void (*forward_tile)(const Adder2dShape&, const T* x, const T* w, const T* bias, T* y, int64_t p0,
                       T* scratch);
  // dX of np <= input_grad_planes_max consecutive input planes of one image and group;
  // scratch: input_grad_scratch(shape) elements; reuse: the previous call on this scratch had
  // the same dy.
  void (*input_grad_planes)(const Adder2dShape&, const T* dy, const T* x, const T* w, T* gx,
                            int64_t np, bool sign_mode, T* scratch, bool reuse);
  // dW of every output channel of group g: taps [k0, k0 + weight_grad_item_taps(shape)) by the
  // decomposition sum dY*Xp - W*sum dY (default), or taps [k0, k0 + weight_grad_taps) directly
  // as sum dY*(Xp - W).
  // dysum: weight_grad_dy_sum of the group's output channels (the decomposition's sum dY; the
  // direct kernel ignores it).
  void (*weight_grad_block)(const Adder2dShape&, const T* dy, const T* x, const T* w, T* gw,
                            const double* dysum, int64_t g, int64_t k0, T* scratch);
  void (*weight_grad_block_direct)(const Adder2dShape&, const T* dy, const T* x, const T* w, T* gw,
                                   const double* dysum, int64_t g, int64_t k0, T* scratch);
  // sum over images and pixels of dY of layer output channel co, in double (a fixed order).
  double (*weight_grad_dy_sum)(const Adder2dShape&, const T* dy, int64_t co);
  int64_t (*input_grad_scratch)(const Adder2dShape&);
  int64_t (*weight_grad_scratch)(const Adder2dShape&);
  int64_t (*weight_grad_item_taps)(const Adder2dShape&);
  int64_t weight_grad_taps;
  int64_t tile_pixels;
  // forward_tile's scratch is forward_scratch + out_channels_per_group * tile_pixels elements.
  int64_t forward_scratch;
  // The direct forward (ForwardLayout::direct): a prepared input plane (layout.plane elements),
  // then tiles [tile0, tile0 + ntiles) of one image and group from its prepared planes xp, with
  // tap_offsets[k] the offset of tap k = (ci, kh, kw) in them; scratch: ntiles *
  // out_channels_per_group * tile_pixels.
  void (*forward_prepare_plane)(const Adder2dShape&, const ForwardLayout&, const T* x, T* xp);
  void (*forward_tiles_direct)(const Adder2dShape&, const ForwardLayout&, const T* xp,
                               const int64_t* tap_offsets, const T* w, const T* bias, T* y,
                               int64_t tile0, int64_t ntiles, T* scratch);
  int64_t vector_lanes;  // output pixels per vector of the direct forward
  int64_t tile_vectors;  // vectors per tile: tile_vectors * vector_lanes = tile_pixels
  int64_t input_grad_planes_max;
};

// Baseline build (any x86-64 / other CPU) and, on x86-64, an AVX2+FMA build.
KernelSet<float> base_kernels_float();
KernelSet<double> base_kernels_double();
bool avx2_compiled();
KernelSet<float> avx2_kernels_float();
KernelSet<double> avx2_kernels_double();
// The forward's float32 micro-tile arithmetic on registers for `iterations` taps (checksum
// returned, terms per tap in *terms_per_iteration); register_ceiling_rate times the current
// instruction set's.
float base_register_ceiling(int64_t iterations, int64_t* terms_per_iteration);
float avx2_register_ceiling(int64_t iterations, int64_t* terms_per_iteration);

// The instruction set the CPU ops use: "avx512" when compiled in and the CPU has AVX2, FMA and
// AVX-512 F, BW, VL and VNNI (the int8 kernels' AVX-512 copy; the float kernels use AVX2 there),
// else "avx2" when compiled in and the CPU has AVX2 and FMA, else "base". ADDERNET_CPU_ISA=base,
// avx2 or avx512 (environment, read once) or set_cpu_isa forces one.
std::string cpu_isa();
void set_cpu_isa(const std::string& isa);

// |x - w| terms per second of thread CPU time of the forward's float32 micro-tile arithmetic on
// registers (the current instruction set's), run on the calling thread for `iterations` taps:
// the ceiling the forward's inner loop can reach on one core.
double register_ceiling_rate(int64_t iterations);

}  // namespace cpu
}  // namespace addernet
