// The CUDA kernels of csrc/cuda/rnn_kernels.cuh and linear_kernels.cuh, compiled by the
// host compiler and run on the CPU by cuda_sim.h; loaded by tests/test_cuda_sim.py with
// ctypes.
//
// The entry points dcpe_sim_<name> take the arguments of dcpe._C.cuda's functions <name> in
// the same order (pointers as integers; the stream is accepted and ignored) and go through
// the same host code as rnn_kernels.cu and linear_kernels.cu (csrc/cuda/rnn_dispatch.h,
// linear_dispatch.h: checks, dtype dispatch, grid and block) with this executor's launcher.
// The centroid scans' grid depends on n (linear_dispatch.h, scan_split): the split a GPU
// uses for a large n is set for the small n of the tests with dcpe_sim_set_scan_split.
// They return 0, or -1 with the message in dcpe_sim_last_error().
//
// Build: c++ -std=c++17 -O2 -ffp-contract=off -fPIC -shared -I<repo>/csrc sim_kernels.cpp
#include "cuda_sim.h"
// the kernel source and host code under test
#include "cuda/linear_dispatch.h"
#include "cuda/rnn_dispatch.h"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace {

using I64 = std::int64_t;
namespace dispatch = dcpe_cuda::dispatch;

std::string g_error;
int g_scan_split = 0;  // 0: linear_dispatch.h's choice for n

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
                              std::uintptr_t nn, std::uintptr_t nnd, std::uintptr_t count,
                              std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::merge_compact_nn(cuda_sim::Launcher{}, dtype, src, ld_src, dst, ld_dst, p, q, wp,
                               wq, n_new, row0, nrows, mode, nn, nnd, count);
  });
}

int dcpe_sim_round_scan(int dtype, I64 n, std::uintptr_t nn, std::uintptr_t nnd,
                        std::uintptr_t size, std::uintptr_t rep, std::uintptr_t hfix,
                        std::uintptr_t m_a, std::uintptr_t m_b, std::uintptr_t m_h,
                        std::uintptr_t m_hf, std::uintptr_t m_s, I64 m, bool check, I64 cap,
                        bool average, std::uintptr_t p, std::uintptr_t q, std::uintptr_t wp,
                        std::uintptr_t wq, std::uintptr_t size_out, std::uintptr_t rep_out,
                        std::uintptr_t hfix_out, std::uintptr_t counts, std::uintptr_t prev,
                        I64 need, std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::round_scan(cuda_sim::Launcher{}, dtype, n, nn, nnd, size, rep, hfix, m_a, m_b,
                         m_h, m_hf, m_s, m, check, cap, average, p, q, wp, wq, size_out,
                         rep_out, hfix_out, counts, prev, need);
  });
}

// Warps per row group of the centroid scans (1, 2, 4, 8), or 0 for the choice a GPU makes.
void dcpe_sim_set_scan_split(int split) { g_scan_split = split; }

int dcpe_sim_centroid_nn(int dtype, std::uintptr_t mu_t, std::uintptr_t s2, I64 n, I64 dim,
                         int mode, double scale, std::uintptr_t out, std::uintptr_t nn,
                         std::uintptr_t rows, I64 nrows, std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::centroid_nn(cuda_sim::Launcher{}, dtype, mu_t, s2, n, dim, mode, scale, out, nn,
                          rows, nrows, g_scan_split);
  });
}

int dcpe_sim_candidate_pairs(int dtype, std::uintptr_t mu_t, std::uintptr_t s2,
                             std::uintptr_t rad, std::uintptr_t tau, I64 n, I64 dim, double rel,
                             double absm, std::uintptr_t pa, std::uintptr_t pb,
                             std::uintptr_t count, I64 capacity, std::uintptr_t rows,
                             I64 nrows, std::uintptr_t needy, std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::candidate_pairs(cuda_sim::Launcher{}, dtype, mu_t, s2, rad, tau, n, dim, rel,
                              absm, pa, pb, count, capacity, rows, nrows, needy, g_scan_split);
  });
}

int dcpe_sim_centroid_nn_gram(int dtype, std::uintptr_t g, I64 g_rs, I64 g_cs,
                              std::uintptr_t nrm, double gerr, std::uintptr_t s2, I64 n, I64 c0,
                              I64 c1, std::uintptr_t out, std::uintptr_t nn, std::uintptr_t rows,
                              I64 nrows, std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::centroid_nn_gram(cuda_sim::Launcher{}, dtype, g, g_rs, g_cs, nrm, gerr, s2, n, c0,
                               c1, out, nn, rows, nrows, g_scan_split);
  });
}

int dcpe_sim_candidate_pairs_gram(int dtype, std::uintptr_t g, I64 g_rs, I64 g_cs,
                                  std::uintptr_t nrm, double gerr, std::uintptr_t s2,
                                  std::uintptr_t rad, std::uintptr_t tau, I64 n, I64 c0, I64 c1,
                                  double rel, double absm, std::uintptr_t pa, std::uintptr_t pb,
                                  std::uintptr_t count, I64 capacity, std::uintptr_t rows,
                                  I64 nrows, std::uintptr_t needy, std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::candidate_pairs_gram(cuda_sim::Launcher{}, dtype, g, g_rs, g_cs, nrm, gerr, s2,
                                   rad, tau, n, c0, c1, rel, absm, pa, pb, count, capacity, rows,
                                   nrows, needy, g_scan_split);
  });
}

int dcpe_sim_pair_average(int dtype, std::uintptr_t x, I64 dim, I64 ts, I64 cs,
                          std::uintptr_t offsets,
                          std::uintptr_t sizes, std::uintptr_t pa, std::uintptr_t pb,
                          std::uintptr_t count, I64 capacity, std::uintptr_t val,
                          bool val_f64, std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::pair_average(cuda_sim::Launcher{}, dtype, x, dim, ts, cs, offsets, sizes, pa, pb,
                           count, capacity, val, val_f64);
  });
}

int dcpe_sim_cluster_matrix(int dtype, std::uintptr_t x, I64 dim, I64 ts, I64 cs,
                            std::uintptr_t offsets,
                            std::uintptr_t sizes, I64 n, std::uintptr_t out, I64 ld,
                            std::uintptr_t nn, std::uintptr_t nnd, std::uintptr_t /*stream*/) {
  return guarded([&] {
    dispatch::cluster_matrix(cuda_sim::Launcher{}, dtype, x, dim, ts, cs, offsets, sizes, n, out,
                             ld, nn, nnd);
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
