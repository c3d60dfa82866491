// The Python extension module addernet_cuda._C. Loading it registers the adder2d ops with the
// dispatcher (torch.ops.addernet.*: the schemas in adder2d_library.cpp, the CPU kernels in
// cpu/adder2d_cpu.cpp, all in this shared object); the module itself only reports how it was
// built and lets tests choose the CPU instruction set.
//
// No torch header here and Python's limited API only (Py_LIMITED_API, set by setup.py): nothing
// in this file ties the build to one torch or one Python version.
#include <Python.h>

#include <exception>
#include <string>

#include "cpu/adder2d_cpu.h"
#include "cpu/adder2d_int8_cpu.h"

#ifndef ADDERNET_TORCH_VERSION
#define ADDERNET_TORCH_VERSION "unknown"
#endif
#ifndef ADDERNET_STABLE_ABI
#define ADDERNET_STABLE_ABI "unknown"
#endif
#ifndef ADDERNET_CUDA_ARCHS
#define ADDERNET_CUDA_ARCHS ""
#endif
#ifndef ADDERNET_BUILD_FLAGS
#define ADDERNET_BUILD_FLAGS ""
#endif

namespace {

bool set_item(PyObject* dict, const char* key, PyObject* value) {
  if (value == nullptr) return false;
  const int rc = PyDict_SetItemString(dict, key, value);
  Py_DECREF(value);
  return rc == 0;
}

// The current CPU instruction set; a RuntimeError for an invalid ADDERNET_CPU_ISA.
PyObject* cpu_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(addernet::cpu::cpu_isa().c_str());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

PyObject* build_info(PyObject*, PyObject*) {
#ifdef ADDERNET_WITH_CUDA
  const bool cuda_compiled = true;
#else
  const bool cuda_compiled = false;
#endif
#ifdef NDEBUG
  const bool debug = false;
#else
  const bool debug = true;
#endif
  PyObject* info = PyDict_New();
  if (info == nullptr) return nullptr;
  const bool ok =
      set_item(info, "torch_version", PyUnicode_FromString(ADDERNET_TORCH_VERSION)) &&
      set_item(info, "stable_abi", PyUnicode_FromString(ADDERNET_STABLE_ABI)) &&
      set_item(info, "cuda_compiled", PyBool_FromLong(cuda_compiled)) &&
      set_item(info, "cuda_archs", PyUnicode_FromString(ADDERNET_CUDA_ARCHS)) &&
      set_item(info, "flags", PyUnicode_FromString(ADDERNET_BUILD_FLAGS)) &&
      set_item(info, "debug", PyBool_FromLong(debug)) &&
      set_item(info, "cpu_avx2_compiled", PyBool_FromLong(addernet::cpu::avx2_compiled())) &&
      set_item(info, "cpu_avx512_compiled",
               PyBool_FromLong(addernet::cpu::int8_avx512_compiled() &&
                               addernet::cpu::avx512_compiled())) &&
      set_item(info, "int8_min_dot_min_bytes",
               PyLong_FromLongLong(addernet::cpu::INT8_MIN_DOT_MIN_BYTES)) &&
      set_item(info, "cpu_isa", cpu_isa(nullptr, nullptr));
  if (!ok) {
    Py_DECREF(info);
    return nullptr;
  }
  return info;
}

PyObject* set_cpu_isa(PyObject*, PyObject* arg) {
  PyObject* bytes = PyUnicode_AsUTF8String(arg);
  if (bytes == nullptr) return nullptr;
  const std::string isa = PyBytes_AsString(bytes);
  Py_DECREF(bytes);
  try {
    addernet::cpu::set_cpu_isa(isa);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

// rate(iterations) of a register-resident ceiling loop on this thread, with the GIL released so
// that several Python threads can measure at once.
// A C++ exception (an invalid ADDERNET_CPU_ISA, read at the first use) becomes a RuntimeError.
PyObject* ceiling(PyObject* arg, double (*rate)(int64_t)) {
  const long long iterations = PyLong_AsLongLong(arg);
  if (iterations == -1 && PyErr_Occurred()) return nullptr;
  double value = 0.0;
  std::string error;
  Py_BEGIN_ALLOW_THREADS try { value = rate(iterations); } catch (const std::exception& e) {
    error = e.what();
  }
  Py_END_ALLOW_THREADS if (!error.empty()) {
    PyErr_SetString(PyExc_RuntimeError, error.c_str());
    return nullptr;
  }
  return PyFloat_FromDouble(value);
}

// int8_sad_ceiling(iterations): the vpsadbw + vpaddq ceiling (byte-taps per second of thread CPU
// time; on zmm at cpu_isa "avx512", else ymm; 0 without AVX2 kernels).
PyObject* int8_sad_ceiling(PyObject*, PyObject* arg) {
  bool zmm = false;
  try {
    zmm = addernet::cpu::cpu_isa() == "avx512";
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  return ceiling(
      arg, zmm ? &addernet::cpu::int8_sad_ceiling_avx512 : &addernet::cpu::int8_sad_ceiling_avx2);
}

// int8_min_dot_ceiling(iterations): the AVX-512 vpminub + vpdpbusd ceiling (0 without AVX-512
// kernels; the caller checks that the CPU has AVX-512 VNNI).
PyObject* int8_min_dot_ceiling(PyObject*, PyObject* arg) {
  return ceiling(arg, &addernet::cpu::int8_min_dot_ceiling_avx512);
}

// adder2d_register_ceiling(iterations): |x - w| terms per second of thread CPU time of the
// float32 forward's micro-tile arithmetic on registers (the current CPU instruction set's).
PyObject* adder2d_register_ceiling(PyObject*, PyObject* arg) {
  return ceiling(arg, &addernet::cpu::register_ceiling_rate);
}

// Parses (input_size, weight_size, stride, padding, dilation, groups, float64) into *s and
// *float64; false with a Python error set when they are not a valid adder2d geometry with a
// nonempty output. name: the calling function's, for the message.
bool parse_cpu_forward_geometry(PyObject* args, const char* name, addernet::Adder2dShape* out,
                                int* float64) {
  using addernet::adder2d_mul_add_overflows;
  using addernet::adder2d_padded_overflows;
  using addernet::adder2d_span_overflows;
  addernet::Adder2dShape s{};
  int64_t ci_per_group = 0;
  if (!PyArg_ParseTuple(args, "(LLLL)(LLLL)(LL)(LL)(LL)Lp", &s.batch, &s.in_channels, &s.in_h,
                        &s.in_w, &s.out_channels, &ci_per_group, &s.kernel_h, &s.kernel_w,
                        &s.stride_h, &s.stride_w, &s.pad_h, &s.pad_w, &s.dilation_h, &s.dilation_w,
                        &s.groups, float64))
    return false;
  int64_t span_h = 0, span_w = 0, padded_h = 0, padded_w = 0, channels = 0, khw = 0, taps = 0;
  int64_t pixels = 0;
  const bool ranges = s.batch >= 1 && s.groups >= 1 && ci_per_group >= 1 && s.out_channels >= 1 &&
                      s.out_channels % s.groups == 0 && s.kernel_h >= 1 && s.kernel_w >= 1 &&
                      s.stride_h >= 1 && s.stride_w >= 1 && s.pad_h >= 0 && s.pad_w >= 0 &&
                      s.dilation_h >= 1 && s.dilation_w >= 1 && s.in_h >= 0 && s.in_w >= 0;
  if (!ranges || adder2d_span_overflows(s.kernel_h, s.dilation_h, &span_h) ||
      adder2d_span_overflows(s.kernel_w, s.dilation_w, &span_w) ||
      adder2d_padded_overflows(s.in_h, s.pad_h, &padded_h) ||
      adder2d_padded_overflows(s.in_w, s.pad_w, &padded_w) ||
      adder2d_mul_add_overflows(ci_per_group, s.groups, 0, &channels) ||
      channels != s.in_channels || adder2d_mul_add_overflows(s.kernel_h, s.kernel_w, 0, &khw) ||
      adder2d_mul_add_overflows(ci_per_group, khw, 0, &taps) || padded_h < span_h ||
      padded_w < span_w ||
      adder2d_mul_add_overflows((padded_h - span_h) / s.stride_h + 1,
                                (padded_w - span_w) / s.stride_w + 1, 0, &pixels)) {
    PyErr_Format(PyExc_ValueError,
                 "%s: not a valid adder2d geometry with a nonempty output (input N, C, H, W and "
                 "weight Co, C/groups, KH, KW)",
                 name);
    return false;
  }
  s.out_h = (padded_h - span_h) / s.stride_h + 1;
  s.out_w = (padded_w - span_w) / s.stride_w + 1;
  s.in_channels_per_group = ci_per_group;
  s.out_channels_per_group = s.out_channels / s.groups;
  s.taps = taps;
  *out = s;
  return true;
}

// A query on the CPU forward of one geometry: parses (input_size, weight_size, stride, padding,
// dilation, groups, float64) and returns answer(shape, float64), a new Python object, any C++
// exception as a RuntimeError.
template <typename Answer>
PyObject* cpu_forward_query(PyObject* args, const char* name, Answer answer) {
  addernet::Adder2dShape s{};
  int float64 = 0;
  if (!parse_cpu_forward_geometry(args, name, &s, &float64)) return nullptr;
  try {
    return answer(s, float64 != 0);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// adder2d_cpu_forward_path(input_size, weight_size, stride, padding, dilation, groups, float64):
// "batch", "direct" or "packed", the CPU forward's path for that shape (adder2d_cpu.h).
PyObject* adder2d_cpu_forward_path(PyObject*, PyObject* args) {
  return cpu_forward_query(args, "adder2d_cpu_forward_path", [](const auto& s, bool float64) {
    return PyUnicode_FromString(addernet::cpu::forward_path(s, float64).c_str());
  });
}

// adder2d_cpu_forward_interleaves_weights(...): whether the CPU forward of that shape interleaves
// the weights (adder2d_cpu.h).
PyObject* adder2d_cpu_forward_interleaves_weights(PyObject*, PyObject* args) {
  return cpu_forward_query(
      args, "adder2d_cpu_forward_interleaves_weights", [](const auto& s, bool float64) {
        return PyBool_FromLong(addernet::cpu::forward_interleaves_weights(s, float64));
      });
}

// adder2d_cpu_forward_column_copies(...): the copies per plane of the direct path's layout by
// kernel columns, 0 where the forward of that shape takes the phases or another path
// (adder2d_cpu.h).
PyObject* adder2d_cpu_forward_column_copies(PyObject*, PyObject* args) {
  return cpu_forward_query(
      args, "adder2d_cpu_forward_column_copies", [](const auto& s, bool float64) {
        return PyLong_FromLongLong(addernet::cpu::forward_column_copies(s, float64));
      });
}

// adder2d_cpu_forward_tile(float64): (output channels, pixels, bytes per register) of the CPU
// forward's micro-tile with the current instruction set.
PyObject* adder2d_cpu_forward_tile(PyObject*, PyObject* arg) {
  const int float64 = PyObject_IsTrue(arg);
  if (float64 < 0) return nullptr;
  const std::array<int64_t, 3> t = addernet::cpu::forward_tile(float64 != 0);
  return Py_BuildValue("(LLL)", static_cast<long long>(t[0]), static_cast<long long>(t[1]),
                       static_cast<long long>(t[2]));
}

// adder2d_cpu_input_grad_register_bytes(float64): bytes per register of the CPU input gradient's
// stride-1 loop with the current instruction set.
PyObject* adder2d_cpu_input_grad_register_bytes(PyObject*, PyObject* arg) {
  const int float64 = PyObject_IsTrue(arg);
  if (float64 < 0) return nullptr;
  return PyLong_FromLongLong(addernet::cpu::input_grad_register_bytes(float64 != 0));
}

// adder2d_cpu_weight_grad_register_bytes(float64): bytes per register of the CPU weight
// gradient's FMAs with the current instruction set.
PyObject* adder2d_cpu_weight_grad_register_bytes(PyObject*, PyObject* arg) {
  const int float64 = PyObject_IsTrue(arg);
  if (float64 < 0) return nullptr;
  return PyLong_FromLongLong(addernet::cpu::weight_grad_register_bytes(float64 != 0));
}

PyMethodDef methods[] = {
    {"adder2d_cpu_forward_path", adder2d_cpu_forward_path, METH_VARARGS,
     "adder2d_cpu_forward_path(input_size, weight_size, stride, padding, dilation, groups, "
     "float64): the CPU forward's path for that shape with the current instruction set, "
     "\"batch\", \"direct\" or \"packed\" (all three give the same bits)"},
    {"adder2d_cpu_forward_interleaves_weights", adder2d_cpu_forward_interleaves_weights,
     METH_VARARGS,
     "adder2d_cpu_forward_interleaves_weights(input_size, weight_size, stride, padding, dilation, "
     "groups, float64): whether the CPU forward of that shape interleaves the weights for its "
     "micro-tile (the same bits either way)"},
    {"adder2d_cpu_forward_column_copies", adder2d_cpu_forward_column_copies, METH_VARARGS,
     "adder2d_cpu_forward_column_copies(input_size, weight_size, stride, padding, dilation, "
     "groups, float64): the copies per input plane of the CPU forward's direct layout by kernel "
     "columns (0: its phases, or another path)"},
    {"adder2d_cpu_forward_tile", adder2d_cpu_forward_tile, METH_O,
     "adder2d_cpu_forward_tile(float64): (output channels, pixels, bytes per register) of the "
     "CPU forward's micro-tile with the current instruction set"},
    {"adder2d_cpu_input_grad_register_bytes", adder2d_cpu_input_grad_register_bytes, METH_O,
     "adder2d_cpu_input_grad_register_bytes(float64): bytes per register of the CPU input "
     "gradient's stride-1 loop with the current instruction set"},
    {"adder2d_cpu_weight_grad_register_bytes", adder2d_cpu_weight_grad_register_bytes, METH_O,
     "adder2d_cpu_weight_grad_register_bytes(float64): bytes per register of the CPU weight "
     "gradient's FMAs with the current instruction set"},
    {"adder2d_register_ceiling", adder2d_register_ceiling, METH_O,
     "adder2d_register_ceiling(iterations): |x - w| terms per second of a register-resident loop "
     "of the float32 forward's micro-tile arithmetic on this thread (at cpu_isa avx512 the faster "
     "of its AVX2 and AVX-512 forms); the benchmark's ceiling"},
    {"build_info", build_info, METH_NOARGS,
     "Torch version and stable ABI, CUDA archs, flags and CPU instruction set of this build"},
    {"cpu_isa", cpu_isa, METH_NOARGS, "The instruction set the CPU kernels use now"},
    {"int8_min_dot_ceiling", int8_min_dot_ceiling, METH_O,
     "int8_min_dot_ceiling(iterations): byte-taps per second of a register-resident AVX-512 "
     "vpminub + vpdpbusd loop on this thread (0 without AVX-512 kernels; only on a CPU with "
     "AVX-512 VNNI); the int8 benchmark's ceiling for the avx512 kernels"},
    {"int8_sad_ceiling", int8_sad_ceiling, METH_O,
     "int8_sad_ceiling(iterations): byte-taps per second of a register-resident vpsadbw + "
     "vpaddq loop on this thread (zmm at cpu_isa avx512, else ymm; 0 without AVX2 kernels); "
     "the int8 benchmark's ceiling"},
    {"set_cpu_isa", set_cpu_isa, METH_O,
     "set_cpu_isa(isa): use the \"base\", \"avx2\" or \"avx512\" CPU kernels (for tests and "
     "benchmarks)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                          "_C",
                          "adder2d kernels (registered as torch.ops.addernet.*) and build "
                          "information",
                          -1,
                          methods,
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C() {
  return PyModule_Create(&module_def);
}
