// Host-side helpers of the CUDA op entries on torch's stable ABI: the current CUDA stream of a
// device, its SM count, CUDA error checks, and output allocation. The kernels themselves use none
// of this.
#pragma once

#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/csrc/stable/version.h>

#include <atomic>
#include <cstdint>
#include <memory>

#include "../adder2d.h"

// torch::stable::accelerator::Stream::nativeHandle() exists from 2.13 on. Headers older than 2.13
// do not define TORCH_VERSION_2_13_0 at all, and an undefined macro reads as 0 in #if, so the
// test names it first.
#if defined(TORCH_VERSION_2_13_0) && TORCH_FEATURE_VERSION >= TORCH_VERSION_2_13_0
#define ADDERNET_STREAM_NATIVE_HANDLE 1
#else
#define ADDERNET_STREAM_NATIVE_HANDLE 0
#endif

#if !ADDERNET_STREAM_NATIVE_HANDLE
// The C shim's current-stream call, exported by libtorch_cuda since long before the stable ABI
// (torch/csrc/inductor/aoti_torch/c/shim.h declares it only when torch itself is built with
// USE_CUDA).
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
#if ADDERNET_STREAM_NATIVE_HANDLE
  return static_cast<cudaStream_t>(
      torch::stable::accelerator::getCurrentStream(device_index).nativeHandle());
#else
  void* stream = nullptr;
  ADDERNET_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream) == AOTI_TORCH_SUCCESS,
                 "cannot get the current CUDA stream of device ", device_index);
  return static_cast<cudaStream_t>(stream);
#endif
}

// The SM count of each device, queried once per device (an attribute query on every call would
// cost a driver round trip per forward).
inline int multiprocessor_count(int device) {
  static const int devices = [] {
    int n = 0;
    ADDERNET_CUDA_CHECK(cudaGetDeviceCount(&n));
    return n;
  }();
  static const std::unique_ptr<std::atomic<int>[]> cache(new std::atomic<int>[devices]());
  ADDERNET_CHECK(device >= 0 && device < devices, "adder2d: CUDA device ", device, " out of range");
  int sms = cache[device].load(std::memory_order_relaxed);
  if (sms == 0) {
    ADDERNET_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

// An uninitialised contiguous tensor of the given sizes with like's dtype and device.
inline Tensor empty_like_device(IntArrayRef sizes, const Tensor& like) {
  return torch::stable::empty(sizes, like.scalar_type(), std::nullopt, like.device());
}

}  // namespace cuda
}  // namespace addernet
