// The float forward's tile loops (adder2d_cpu_kernels.h: forward_tiles_direct and
// forward_tiles_batch, with micro_tile_zmm) and the float input gradient (input_grad_planes, whose
// stride-1 loop is input_grad_vectors_zmm, except with at most 4 output channels per group, where
// input_grad_row_all_taps keeps 32-byte vectors) and the float weight gradient (both kernels,
// their FMAs on 64-byte vectors: WgVec<float>) compiled for AVX-512 F/VL/DQ (DQ: the input
// gradient's clamp by vrangeps); every other kernel of
// the AVX-512 set is the AVX2 one. Only these functions are compiled for AVX-512 (a target
// pragma opened after the standard headers), so the extension still runs on a CPU without it:
// adder2d_cpu.cpp calls them only when the CPU has it. Results are bitwise equal to the AVX2
// kernels' (the same terms, summed in the same order).
#include "adder2d_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "adder2d_immintrin.h"
#define ADDER_HAVE_AVX512_BUILD 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,avx512f,avx512vl,avx512dq"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512vl,avx512dq")
#endif

#define ADDER_CPU_ISA avx512_float
#define ADDER_CPU_VECTOR_BYTES 32
#define ADDER_CPU_FMA 1
#define ADDER_CPU_ZMM 1
#include "adder2d_cpu_kernels.h"

#include "adder2d_target_pop.h"
#endif

namespace addernet {
namespace cpu {

#ifdef ADDER_HAVE_AVX512_BUILD
bool avx512_compiled() {
  return true;
}
KernelSet<float> avx512_kernels_float() {
  KernelSet<float> k = avx2_kernels_float();
  k.forward_tiles_direct = &avx512_float::forward_tiles_direct<float>;
  k.forward_tiles_batch = &avx512_float::forward_tiles_batch<float>;
  k.forward_interleave_weights = &avx512_float::forward_interleave_weights<float>;
  k.input_grad_planes = &avx512_float::input_grad_planes<float>;
  k.input_grad_register_bytes = 64;
  k.weight_grad_block = &avx512_float::weight_grad_block<float>;
  k.weight_grad_block_direct = &avx512_float::weight_grad_block_direct<float>;
  k.weight_grad_scratch = &avx512_float::weight_grad_scratch<float>;
  k.weight_grad_items = &avx512_float::weight_grad_items<float>;
  k.weight_grad_taps = avx512_float::weight_grad_taps<float>();
  k.weight_grad_register_bytes = 64;
  k.forward_tile_rows = avx512_float::forward_rows<float>();
  k.forward_register_bytes = 64;
  return k;
}
float avx512_register_ceiling(int64_t iterations, int64_t* terms_per_iteration) {
  *terms_per_iteration = avx512_float::CEILING_TERMS_ZMM;
  return avx512_float::register_ceiling_zmm(iterations);
}
#else
bool avx512_compiled() {
  return false;
}
KernelSet<float> avx512_kernels_float() {
  return avx2_kernels_float();
}
float avx512_register_ceiling(int64_t iterations, int64_t* terms_per_iteration) {
  return avx2_register_ceiling(iterations, terms_per_iteration);
}
#endif

}  // namespace cpu
}  // namespace addernet
