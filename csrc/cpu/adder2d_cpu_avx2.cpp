// The adder2d CPU kernels (adder2d_cpu_kernels.h) compiled for AVX2 + FMA. Only the kernels are
// compiled for AVX2 (GCC/Clang target pragmas, opened after the standard headers), so the
// extension still loads and runs on a CPU without AVX2: adder2d_cpu.cpp calls these only when
// the CPU reports both features.
#include "adder2d_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ADDER_HAVE_AVX2_BUILD 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define ADDER_CPU_ISA avx2
#define ADDER_CPU_VECTOR_BYTES 32
#define ADDER_CPU_FMA 1
#include "adder2d_cpu_kernels.h"

#include "adder2d_target_pop.h"
#endif

namespace addernet {
namespace cpu {

#ifdef ADDER_HAVE_AVX2_BUILD
bool avx2_compiled() {
  return true;
}
KernelSet<float> avx2_kernels_float() {
  return avx2::make_kernel_set<float>();
}
KernelSet<double> avx2_kernels_double() {
  return avx2::make_kernel_set<double>();
}
float avx2_register_ceiling(int64_t iterations, int64_t* terms_per_iteration) {
  *terms_per_iteration = avx2::CEILING_TERMS;
  return avx2::register_ceiling(iterations);
}
#else
bool avx2_compiled() {
  return false;
}
KernelSet<float> avx2_kernels_float() {
  return base_kernels_float();
}
KernelSet<double> avx2_kernels_double() {
  return base_kernels_double();
}
float avx2_register_ceiling(int64_t iterations, int64_t* terms_per_iteration) {
  return base_register_ceiling(iterations, terms_per_iteration);
}
#endif

}  // namespace cpu
}  // namespace addernet
