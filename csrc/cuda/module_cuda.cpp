// The Python extension module addernet_cuda._C_cuda: loading it registers the CUDA kernels of
// the adder2d ops (STABLE_TORCH_LIBRARY_IMPL(addernet, CUDA, m) in the .cu files of this
// directory). A library of its own, apart from addernet_cuda._C, so that a build made with a
// CUDA torch still imports under a CPU-only one: addernet_cuda/_extension.py loads this module
// only when the running torch has CUDA. No torch header, Python's limited API only.
#include <Python.h>

namespace {

PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                          "_C_cuda",
                          "CUDA kernels of the adder2d ops (registered as torch.ops.addernet.*)",
                          -1,
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C_cuda() {
  return PyModule_Create(&module_def);
}
