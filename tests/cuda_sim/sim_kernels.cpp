// The CUDA kernels of csrc/cuda/rnn_kernels.cuh, compiled by the host compiler and run on
// the CPU by cuda_sim.h; loaded by tests/test_cuda_sim.py with ctypes.
//
// The three entry points take the arguments of dcpe._C.cuda's functions in the same order
// (pointers as integers; the stream is accepted and ignored) and go through the same host
// code as rnn_kernels.cu (csrc/cuda/rnn_dispatch.h: checks, dtype dispatch, grid and block)
// with this executor's launcher.  They return 0, or -1 with the message in
// dcpe_sim_last_error().
//
// Build: c++ -std=c++17 -O2 -ffp-contract=off -fPIC -shared -I<repo>/csrc sim_kernels.cpp
#include "cuda_sim.h"
// the kernel source and host code under test
#include "cuda/rnn_dispatch.h"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace {

using I64 = std::int64_t;
namespace dispatch = dcpe_cuda::dispatch;

std::string g_error;

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    g_error = e.what();
    return -1;
  }
}

// Executor self-test: thread t of a block of `threads` writes, for d = 1, 2, 4, 8, 16, the
// value its __shfl_down_sync(., t * 10 + d, d) returns, and the block's inclusive
// running sum of `values` from cub::BlockScan (exclusive sum + own value), as the kernels
// use them.  A divergent barrier is requested by diverge != 0: odd threads skip it.
template <int kBlock>
void selftest_kernel(I64* shfl_out, const I64* values, I64* scan_out, I64* agg_out,
                     int diverge) {
  const int t = static_cast<int>(threadIdx.x);
  for (int d = 1, k = 0; d < 32; d <<= 1, ++k) {
    shfl_out[t * 5 + k] = __shfl_down_sync(0xffffffffu, static_cast<I64>(t) * 10 + d, d);
  }
  using Scan = cub::BlockScan<long long, kBlock>;
  __shared__ typename Scan::TempStorage tmp;
  long long prefix = 0, total = 0;
  Scan(tmp).ExclusiveSum(values[t], prefix, total);
  scan_out[t] = prefix + values[t];
  agg_out[t] = total;
  if (diverge && (t & 1)) return;
  __syncthreads();
}

}  // namespace

extern "C" {

const char* dcpe_sim_last_error() { return g_error.c_str(); }

// Order in which the threads of a block run between two barriers: 0 first to last, 1 last
// to first.
void dcpe_sim_set_reverse(int reverse) { cuda_sim::state().reverse = reverse != 0; }

int dcpe_sim_pairwise_nn(int dtype, std::uintptr_t x, std::uintptr_t D, std::uintptr_t nn,
                         std::uintptr_t nnd, I64 n, I64 dim, I64 ld, int metric,
                         std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::pairwise_nn(cuda_sim::Launcher{}, dtype, x, D, nn, nnd, n, dim, ld, metric);
  });
}

int dcpe_sim_merge_compact_nn(int dtype, std::uintptr_t src, I64 ld_src, std::uintptr_t dst,
                              I64 ld_dst, std::uintptr_t p, std::uintptr_t q, std::uintptr_t wp,
                              std::uintptr_t wq, I64 n_new, I64 row0, I64 nrows, int mode,
                              std::uintptr_t nn, std::uintptr_t nnd, std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::merge_compact_nn(cuda_sim::Launcher{}, dtype, src, ld_src, dst, ld_dst, p, q, wp,
                               wq, n_new, row0, nrows, mode, nn, nnd);
  });
}

int dcpe_sim_round_scan(int dtype, I64 n, std::uintptr_t nn, std::uintptr_t nnd,
                        std::uintptr_t size, std::uintptr_t rep, std::uintptr_t hfix,
                        std::uintptr_t m_a, std::uintptr_t m_b, std::uintptr_t m_h,
                        std::uintptr_t m_hf, std::uintptr_t m_s, I64 m, bool check, I64 cap,
                        bool average, std::uintptr_t p, std::uintptr_t q, std::uintptr_t wp,
                        std::uintptr_t wq, std::uintptr_t size_out, std::uintptr_t rep_out,
                        std::uintptr_t hfix_out, std::uintptr_t counts,
                        std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::round_scan(cuda_sim::Launcher{}, dtype, n, nn, nnd, size, rep, hfix, m_a, m_b,
                         m_h, m_hf, m_s, m, check, cap, average, p, q, wp, wq, size_out,
                         rep_out, hfix_out, counts);
  });
}

// Block of 64 threads (two warps) for the executor self-test.
int dcpe_sim_selftest(I64* shfl_out, const I64* values, I64* scan_out, I64* agg_out,
                      int diverge) {
  return guarded([&] {
    cuda_sim::launch(1, 64, [=] { selftest_kernel<64>(shfl_out, values, scan_out, agg_out,
                                                      diverge); });
  });
}

}  // extern "C"
