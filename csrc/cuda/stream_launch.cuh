// The launcher that rnn_dispatch.h and linear_dispatch.h take, for nvcc builds: runs
// kernel<<<grid, block, 0, stream>>>(args...) on the caller's stream and throws a launch
// error as std::runtime_error naming the kernel.  (The tests' CPU executor, tests/cuda_sim,
// has its own launcher.)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace dcpe_cuda {

struct StreamLaunch {
  cudaStream_t stream;

  template <typename... P, typename... A>
  void operator()(const char* name, void (*kernel)(P...), unsigned grid, unsigned block,
                  A... args) const {
    kernel<<<grid, block, 0, stream>>>(args...);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
      throw std::runtime_error(std::string("dcpe CUDA error in ") + name + " launch: " +
                               cudaGetErrorString(err));
    }
  }
};

inline StreamLaunch on(std::uintptr_t stream) {
  return StreamLaunch{reinterpret_cast<cudaStream_t>(stream)};
}

}  // namespace dcpe_cuda
