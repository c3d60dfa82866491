// The adder2d CPU kernels (adder2d_cpu_kernels.h) compiled for the baseline instruction set of
// the build (SSE2 on x86-64), vectorised by the compiler.
#include "adder2d_cpu.h"

#define ADDER_CPU_ISA base
#include "adder2d_cpu_kernels.h"

namespace addernet {
namespace cpu {

KernelSet<float> base_kernels_float() {
  return base::make_kernel_set<float>();
}
KernelSet<double> base_kernels_double() {
  return base::make_kernel_set<double>();
}
float base_register_ceiling(int64_t iterations, int64_t* terms_per_iteration) {
  *terms_per_iteration = base::CEILING_TERMS;
  return base::register_ceiling(iterations);
}

}  // namespace cpu
}  // namespace addernet
