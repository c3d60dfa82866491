// The CPU kernels of adder2d as a table of function pointers, one table per instruction set
// (adder2d_cpu_kernels.h compiled in adder2d_cpu_base.cpp and adder2d_cpu_avx2.cpp); the op
// implementations in adder2d_cpu.cpp pick a table at run time.
#pragma once

#include <cstdint>
#include <string>

#include "../adder2d_shape.h"

namespace addernet {
namespace cpu {

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
  void (*weight_grad_block)(const Adder2dShape&, const T* dy, const T* x, const T* w, T* gw,
                            int64_t g, int64_t k0, T* scratch);
  void (*weight_grad_block_direct)(const Adder2dShape&, const T* dy, const T* x, const T* w, T* gw,
                                   int64_t g, int64_t k0, T* scratch);
  int64_t (*input_grad_scratch)(const Adder2dShape&);
  int64_t (*weight_grad_scratch)(const Adder2dShape&);
  int64_t (*weight_grad_item_taps)(const Adder2dShape&);
  int64_t weight_grad_taps;
  int64_t tile_pixels;
  // forward_tile's scratch is forward_scratch + out_channels_per_group * tile_pixels elements.
  int64_t forward_scratch;
  int64_t input_grad_planes_max;
};

// Baseline build (any x86-64 / other CPU) and, on x86-64, an AVX2+FMA build.
KernelSet<float> base_kernels_float();
KernelSet<double> base_kernels_double();
bool avx2_compiled();
KernelSet<float> avx2_kernels_float();
KernelSet<double> avx2_kernels_double();

// The instruction set the CPU ops use: "avx2" when compiled in and the CPU has AVX2 and FMA,
// else "base". ADDERNET_CPU_ISA=base (environment, read once) or set_cpu_isa forces one.
std::string cpu_isa();
void set_cpu_isa(const std::string& isa);

}  // namespace cpu
}  // namespace addernet
