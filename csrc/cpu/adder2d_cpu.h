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
  // scratch: input_grad_scratch(shape) elements; reuse: the previous call on this scratch had
  // the same dy.
  void (*input_grad_plane)(const Adder2dShape&, const T* dy, const T* x, const T* w, T* gx,
                           bool sign_mode, T* scratch, bool reuse);
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

// The instruction set the CPU ops use: "avx2" when compiled in and the CPU has AVX2 and FMA,
// else "base". ADDERNET_CPU_ISA=base (environment, read once) or set_cpu_isa forces one.
std::string cpu_isa();
void set_cpu_isa(const std::string& isa);

// |x - w| terms per second of thread CPU time of the forward's float32 micro-tile arithmetic on
// registers (the current instruction set's), run on the calling thread for `iterations` taps:
// the ceiling the forward's inner loop can reach on one core.
double register_ceiling_rate(int64_t iterations);

}  // namespace cpu
}  // namespace addernet
