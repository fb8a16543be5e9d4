// A CPU executor for CUDA kernel source, for tests on machines without a GPU.
//
// The kernels of csrc/cuda/rnn_kernels.cuh and linear_kernels.cuh are compiled by the host compiler against this
// header and run on the CPU: the blocks of a grid run one after the other; the threads of
// a block are fibers (ucontext) on one OS thread, each on its own stack, and every
// barrier (__syncthreads, and the one barrier of each emulated warp shuffle or block-wide
// collective) runs all of them up to it, in thread order (or in reverse order, to expose a
// kernel whose result depends on the order of its threads between two barriers), before
// any continues.
// `__shared__` variables are function-local statics: one copy per kernel, shared by the
// threads of the block that runs (kept from the previous block, where a GPU's shared
// memory starts undefined).  The scheduler checks that every barrier is reached by
// all threads of the block or by none (a divergent __syncthreads is an error on a GPU).
//
// What it emulates:
//   threadIdx.x, blockIdx.x, blockDim.x, gridDim.x; __syncthreads; __shfl_down_sync (full
//   warps of 32, lanes past the end of the warp read their own value, as on a GPU);
//   __fmul_rn/__dmul_rn/__fadd_rn/__dadd_rn/__fdiv_rn/__ddiv_rn/__fsqrt_rn/__dsqrt_rn as
//   IEEE operations (compile with -ffp-contract=off so that nothing is fused);
//   __int_as_float, __longlong_as_double; atomicAdd on unsigned long long (the threads run
//   one at a time, so a plain read-modify-write is atomic; the order in which threads get
//   their positions follows the executor's thread order, one of the orders a GPU allows);
//   __align__(n) as the GNU aligned attribute;
//   cub::BlockScan<T, N>::ExclusiveSum(input, output, aggregate) and
//   cub::BlockReduce<T, N>::Reduce(input, op) / Sum(input), whose result, as CUB
//   documents, is valid in thread 0 only: the other threads get a poison value (NaN, or
//   0x5A5A... for integers) so that a kernel that reads it there produces wrong output.
//   As in CUB, the temporary storage may be reused only after a __syncthreads: the
//   collectives have one barrier (inputs written, then read), none after, so if a kernel
//   omits that __syncthreads the first thread to run overwrites its input of the reused
//   storage before the others have read it.
// What it does not: the memory model and data races as such (between two barriers the
// threads run one after the other; running them in both orders exposes a result that
// depends on it), timing, launch limits, and CUB's own code.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

using std::fmax;
using std::fmin;
using std::sqrt;

namespace cuda_sim {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

enum class Status { kRunning, kAtBarrier, kDone };

struct State {
  Dim3 thread_idx, block_idx, block_dim, grid_dim;
  int current = 0;
  std::vector<ucontext_t> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<Status> status;
  std::vector<std::uint64_t> exchange;  // two slots per thread, for warp shuffles
  std::vector<unsigned> shuffles;       // shuffles done by each thread of the block
  ucontext_t scheduler{};
  std::function<void()> body;
  std::string error;  // set by a fiber that detects misuse; reported after the block
  bool reverse = false;  // run the threads of a phase from the last to the first
};

inline State& state() {
  static State s;
  return s;
}

// Stack of each fiber (the kernels' frames are small; a sanitizer build may lower it, since
// AddressSanitizer clears the shadow of the whole stack at every switch).
#ifndef CUDA_SIM_STACK_BYTES
#define CUDA_SIM_STACK_BYTES (256 * 1024)
#endif
constexpr std::size_t kStackBytes = CUDA_SIM_STACK_BYTES;

inline void fiber_entry() {
  State& s = state();
  s.body();
  s.status[s.current] = Status::kDone;
  swapcontext(&s.fibers[s.current], &s.scheduler);  // never resumed
}

// Called by the running fiber: wait until every thread of the block is here.
inline void barrier() {
  State& s = state();
  const int me = s.current;
  s.status[me] = Status::kAtBarrier;
  swapcontext(&s.fibers[me], &s.scheduler);
}

inline void fail(const std::string& what) {
  State& s = state();
  if (s.error.empty()) s.error = what;
}

// Runs the kernel body once for every thread of one block.
inline void run_block(unsigned threads) {
  State& s = state();
  if (s.fibers.size() < threads) {
    s.fibers.resize(threads);
    s.status.resize(threads);
    s.shuffles.resize(threads);
    s.exchange.resize(2 * std::size_t(threads));
    while (s.stacks.size() < threads) s.stacks.emplace_back(new char[kStackBytes]);
  }
  for (unsigned t = 0; t < threads; ++t) {
    getcontext(&s.fibers[t]);
    s.fibers[t].uc_stack.ss_sp = s.stacks[t].get();
    s.fibers[t].uc_stack.ss_size = kStackBytes;
    s.fibers[t].uc_link = nullptr;
    makecontext(&s.fibers[t], fiber_entry, 0);
    s.status[t] = Status::kRunning;
    s.shuffles[t] = 0;
  }
  for (;;) {
    for (unsigned i = 0; i < threads; ++i) {
      const unsigned t = s.reverse ? threads - 1 - i : i;
      s.current = static_cast<int>(t);
      s.thread_idx.x = t;
      swapcontext(&s.scheduler, &s.fibers[t]);
    }
    unsigned at_barrier = 0, done = 0;
    for (unsigned t = 0; t < threads; ++t) {
      at_barrier += s.status[t] == Status::kAtBarrier;
      done += s.status[t] == Status::kDone;
    }
    if (done == threads) break;
    if (at_barrier != threads) {
      throw std::runtime_error("divergent barrier in block " + std::to_string(s.block_idx.x) +
                               ": " + std::to_string(at_barrier) + " of " +
                               std::to_string(threads) + " threads wait at a barrier, " +
                               std::to_string(done) + " have returned");
    }
    for (unsigned t = 0; t < threads; ++t) s.status[t] = Status::kRunning;
  }
  if (!s.error.empty()) throw std::runtime_error(s.error);
}

// kernel<<<grid, block>>>(...) becomes launch(grid, block, [=] { kernel(...); }).
template <typename F>
void launch(unsigned grid, unsigned block, F&& body) {
  State& s = state();
  s.error.clear();
  s.body = std::forward<F>(body);
  s.block_dim.x = block;
  s.grid_dim.x = grid;
  for (unsigned b = 0; b < grid; ++b) {
    s.block_idx.x = b;
    run_block(block);
  }
  s.body = nullptr;
}

// The launcher of csrc/cuda/rnn_dispatch.h and linear_dispatch.h for this executor.
struct Launcher {
  template <typename... P, typename... A>
  void operator()(const char* /*name*/, void (*kernel)(P...), unsigned grid, unsigned block,
                  A... args) const {
    launch(grid, block, [=] { kernel(args...); });
  }
};

// A block-wide collective's thread count (template argument) must be the block's.
inline void check_block(int threads, const char* what) {
  if (state().block_dim.x != static_cast<unsigned>(threads)) {
    fail(std::string(what) + ": block size differs from the template argument");
  }
}

template <typename T>
T poison() {
  if constexpr (std::is_floating_point_v<T>) {
    return std::numeric_limits<T>::quiet_NaN();
  } else {
    T v;
    std::memset(&v, 0x5A, sizeof v);
    return v;
  }
}

}  // namespace cuda_sim

#define threadIdx (::cuda_sim::state().thread_idx)
#define blockIdx (::cuda_sim::state().block_idx)
#define blockDim (::cuda_sim::state().block_dim)
#define gridDim (::cuda_sim::state().grid_dim)

inline void __syncthreads() { ::cuda_sim::barrier(); }

template <typename T>
T __shfl_down_sync(unsigned mask, T value, int delta) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t) && std::is_trivially_copyable_v<T>);
  auto& s = ::cuda_sim::state();
  if (mask != 0xffffffffu) ::cuda_sim::fail("__shfl_down_sync: only full warps are emulated");
  const unsigned me = static_cast<unsigned>(s.current);
  // Two exchange buffers used in turn: a thread that moves on to its next shuffle writes
  // the other buffer, so one barrier per shuffle suffices whatever the order of threads.
  std::uint64_t* buf = s.exchange.data() + (s.shuffles[me]++ & 1u) * s.block_dim.x;
  std::memcpy(&buf[me], &value, sizeof(T));
  ::cuda_sim::barrier();
  T out = value;
  const unsigned lane = me & 31u;
  if (delta >= 0 && lane + static_cast<unsigned>(delta) < 32u &&
      me + static_cast<unsigned>(delta) < s.block_dim.x) {
    std::memcpy(&out, &buf[me + static_cast<unsigned>(delta)], sizeof(T));
  }
  return out;
}

inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }

inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  *address = old + value;
  return old;
}

inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline double __longlong_as_double(long long v) {
  double f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}

namespace cub {

template <typename T, int kBlock>
class BlockScan {
 public:
  struct TempStorage {
    T v[kBlock];
  };
  explicit BlockScan(TempStorage& storage) : s_(storage) {
    ::cuda_sim::check_block(kBlock, "cub::BlockScan");
  }

  void ExclusiveSum(T input, T& output, T& aggregate) {
    const int me = ::cuda_sim::state().current;
    s_.v[me] = input;
    ::cuda_sim::barrier();
    T prefix = T(0), total = T(0);
    for (int j = 0; j < kBlock; ++j) {
      if (j < me) prefix = prefix + s_.v[j];
      total = total + s_.v[j];
    }
    output = prefix;
    aggregate = total;
  }

 private:
  TempStorage& s_;
};

template <typename T, int kBlock>
class BlockReduce {
 public:
  struct TempStorage {
    T v[kBlock];
  };
  explicit BlockReduce(TempStorage& storage) : s_(storage) {
    ::cuda_sim::check_block(kBlock, "cub::BlockReduce");
  }

  template <typename Op>
  T Reduce(T input, Op op) {
    const int me = ::cuda_sim::state().current;
    s_.v[me] = input;
    ::cuda_sim::barrier();
    T out = ::cuda_sim::poison<T>();
    if (me == 0) {
      out = s_.v[0];
      for (int j = 1; j < kBlock; ++j) out = op(out, s_.v[j]);
    }
    return out;
  }

  T Sum(T input) {
    return Reduce(input, [](const T& a, const T& b) { return a + b; });
  }

 private:
  TempStorage& s_;
};

}  // namespace cub
