// Host-side helpers of the CUDA op entries on torch's stable ABI: the current CUDA stream of a
// device, CUDA error checks, and output allocation. The kernels themselves use none of this.
#pragma once

#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/csrc/stable/version.h>

#include <cstdint>

#include "../adder2d.h"

#if TORCH_FEATURE_VERSION < TORCH_VERSION_2_13_0
// The C shim's current-stream call, exported by libtorch_cuda since long before the stable ABI
// (torch/csrc/inductor/aoti_torch/c/shim.h declares it only when torch itself is built with
// USE_CUDA). torch::stable::accelerator::Stream::nativeHandle() replaces it from 2.13 on.
extern "C" AOTITorchError aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret);
#endif

// Throws (RuntimeError in Python) when a CUDA runtime call fails.
#define ADDERNET_CUDA_CHECK(expr)                                                            \
  do {                                                                                       \
    const cudaError_t adder_err = (expr);                                                    \
    ADDERNET_CHECK(adder_err == cudaSuccess, "CUDA error: ", cudaGetErrorString(adder_err)); \
  } while (0)

// After a kernel launch: a bad configuration is reported at once.
#define ADDERNET_KERNEL_LAUNCH_CHECK() ADDERNET_CUDA_CHECK(cudaGetLastError())

namespace addernet {
namespace cuda {

// torch's current CUDA stream of the device (what c10::cuda::getCurrentCUDAStream returns).
inline cudaStream_t current_stream(int32_t device_index) {
#if TORCH_FEATURE_VERSION >= TORCH_VERSION_2_13_0
  return static_cast<cudaStream_t>(
      torch::stable::accelerator::getCurrentStream(device_index).nativeHandle());
#else
  void* stream = nullptr;
  ADDERNET_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream) == AOTI_TORCH_SUCCESS,
                 "cannot get the current CUDA stream of device ", device_index);
  return static_cast<cudaStream_t>(stream);
#endif
}

// An uninitialised contiguous tensor of the given sizes with like's dtype and device.
inline Tensor empty_like_device(IntArrayRef sizes, const Tensor& like) {
  return torch::stable::empty(sizes, like.scalar_type(), std::nullopt, like.device());
}

}  // namespace cuda
}  // namespace addernet
