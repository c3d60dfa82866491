// The adder2d_int8 CPU kernels (adder2d_int8_kernels.h) compiled for the baseline instruction set
// of the build: SSE2's psadbw on x86-64, a scalar loop elsewhere.
#include "adder2d_int8_cpu.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define ADDER_CPU_ISA base
#include "adder2d_int8_kernels.h"

namespace addernet {
namespace cpu {

Int8KernelSet int8_base_kernels() {
  return base::int8::make_int8_kernel_set();
}

}  // namespace cpu
}  // namespace addernet
