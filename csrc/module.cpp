// The Python extension module addernet_cuda._C. Loading it registers the adder2d ops with the
// dispatcher (torch.ops.addernet.*); the module itself only reports how it was built and lets
// tests choose the CPU instruction set.
#include <torch/extension.h>

#include "cpu/adder2d_cpu.h"
#include "cpu/adder2d_int8_cpu.h"

#ifndef ADDERNET_TORCH_VERSION
#define ADDERNET_TORCH_VERSION "unknown"
#endif
#ifndef ADDERNET_CUDA_ARCHS
#define ADDERNET_CUDA_ARCHS ""
#endif
#ifndef ADDERNET_BUILD_FLAGS
#define ADDERNET_BUILD_FLAGS ""
#endif

namespace {

py::dict build_info() {
  py::dict info;
  py::list backends;
  backends.append("cpu");
#ifdef ADDERNET_WITH_CUDA
  backends.append("cuda");
#endif
  info["backends"] = backends;
  info["torch_version"] = ADDERNET_TORCH_VERSION;
  info["cuda_archs"] = ADDERNET_CUDA_ARCHS;
  info["flags"] = ADDERNET_BUILD_FLAGS;
#ifdef NDEBUG
  info["debug"] = false;
#else
  info["debug"] = true;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["cpu_avx2_compiled"] = addernet::cpu::avx2_compiled();
  info["cpu_isa"] = addernet::cpu::cpu_isa();
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "adder2d kernels (registered as torch.ops.addernet.*) and build information";
  m.def("build_info", &build_info, "Backends, torch version, CUDA archs and flags of this build");
  m.def(
      "torch_version", [] { return std::string(ADDERNET_TORCH_VERSION); },
      "The torch version this extension was compiled against");
  m.def("cpu_isa", &addernet::cpu::cpu_isa, "The instruction set the CPU kernels use now");
  m.def("int8_sad_ceiling", &addernet::cpu::int8_sad_ceiling_avx2, py::arg("iterations"),
        py::call_guard<py::gil_scoped_release>(),
        "Byte-taps per second of a register-resident AVX2 vpsadbw loop on this thread (0 without "
        "AVX2 kernels); the benchmark's ceiling");
  m.def("set_cpu_isa", &addernet::cpu::set_cpu_isa, py::arg("isa"),
        "Use the \"base\" or \"avx2\" CPU kernels (for tests and benchmarks)");
}
