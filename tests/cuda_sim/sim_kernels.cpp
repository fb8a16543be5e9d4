// The CUDA kernels of csrc/cuda/rnn_kernels.cuh, compiled by the host compiler and run on
// the CPU by cuda_sim.h; loaded by tests/test_cuda_sim.py with ctypes.
//
// The three entry points take the arguments of dcpe._C.cuda's functions in the same order
// (pointers as integers; the stream is accepted and ignored) and launch each kernel with
// the grid, block size and argument conversions of the launchers in rnn_kernels.cu.  They
// return 0, or -1 with the message in dcpe_sim_last_error().
//
// Build: c++ -std=c++17 -O2 -ffp-contract=off -fPIC -shared -I<repo>/csrc sim_kernels.cpp
#include "cuda_sim.h"
// the kernel source under test
#include "cuda/rnn_kernels.cuh"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace {

using dcpe_cuda::kernels::kScanThreads;
using dcpe_cuda::kernels::kThreads;
using I64 = std::int64_t;

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

void check_dtype(int dtype) {
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype code must be 0 or 1");
}

template <typename T>
void pairwise(std::uintptr_t x, std::uintptr_t D, std::uintptr_t nn, std::uintptr_t nnd, I64 n,
              I64 dim, I64 ld, int metric) {
  auto* xp = reinterpret_cast<const T*>(x);
  auto* dp = reinterpret_cast<T*>(D);
  auto* nnp = reinterpret_cast<I64*>(nn);
  auto* nndp = reinterpret_cast<T*>(nnd);
  cuda_sim::launch(static_cast<unsigned>(n), kThreads, [=] {
    dcpe_cuda::kernels::pairwise_rownn_kernel<T>(xp, dp, nnp, nndp, n, dim, ld, metric);
  });
}

template <typename T>
void merge(std::uintptr_t src, I64 ld_src, std::uintptr_t dst, I64 ld_dst, std::uintptr_t p,
           std::uintptr_t q, std::uintptr_t wp, std::uintptr_t wq, I64 n_new, I64 row0,
           I64 nrows, int mode, std::uintptr_t nn, std::uintptr_t nnd) {
  auto* sp = reinterpret_cast<const T*>(src);
  auto* dp = reinterpret_cast<T*>(dst);
  auto* pp = reinterpret_cast<const std::int32_t*>(p);
  auto* qp = reinterpret_cast<const std::int32_t*>(q);
  auto* wpp = reinterpret_cast<const T*>(wp);
  auto* wqp = reinterpret_cast<const T*>(wq);
  auto* nnp = reinterpret_cast<I64*>(nn);
  auto* nndp = reinterpret_cast<T*>(nnd);
  cuda_sim::launch(static_cast<unsigned>(nrows), kThreads, [=] {
    dcpe_cuda::kernels::merge_compact_rownn_kernel<T>(sp, ld_src, dp, ld_dst, pp, qp, wpp, wqp,
                                                      n_new, row0, mode, nnp, nndp);
  });
}

template <typename T>
void round_scan(I64 n, std::uintptr_t nn, std::uintptr_t nnd, std::uintptr_t size,
                std::uintptr_t rep, std::uintptr_t hfix, std::uintptr_t m_a, std::uintptr_t m_b,
                std::uintptr_t m_h, std::uintptr_t m_hf, std::uintptr_t m_s, I64 m, bool check,
                I64 cap, bool average, std::uintptr_t p, std::uintptr_t q, std::uintptr_t wp,
                std::uintptr_t wq, std::uintptr_t size_out, std::uintptr_t rep_out,
                std::uintptr_t hfix_out, std::uintptr_t counts) {
  const I64 cap_eff = cap > 0 ? cap : (I64(1) << 62);
  auto c64 = [](std::uintptr_t v) { return reinterpret_cast<const I64*>(v); };
  auto w64 = [](std::uintptr_t v) { return reinterpret_cast<I64*>(v); };
  auto ct = [](std::uintptr_t v) { return reinterpret_cast<const T*>(v); };
  auto wt = [](std::uintptr_t v) { return reinterpret_cast<T*>(v); };
  auto w32 = [](std::uintptr_t v) { return reinterpret_cast<std::int32_t*>(v); };
  cuda_sim::launch(1, kScanThreads, [=] {
    dcpe_cuda::kernels::round_scan_kernel<T>(
        n, c64(nn), ct(nnd), c64(size), c64(rep), ct(hfix), w64(m_a), w64(m_b), wt(m_h),
        wt(m_hf), w64(m_s), m, check ? 1 : 0, cap_eff, average ? 1 : 0, w32(p), w32(q), wt(wp),
        wt(wq), w64(size_out), w64(rep_out), wt(hfix_out), w64(counts));
  });
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
    check_dtype(dtype);
    if (n == 0) return;
    if (dtype == 0) {
      pairwise<float>(x, D, nn, nnd, n, dim, ld, metric);
    } else {
      pairwise<double>(x, D, nn, nnd, n, dim, ld, metric);
    }
  });
}

int dcpe_sim_merge_compact_nn(int dtype, std::uintptr_t src, I64 ld_src, std::uintptr_t dst,
                              I64 ld_dst, std::uintptr_t p, std::uintptr_t q, std::uintptr_t wp,
                              std::uintptr_t wq, I64 n_new, I64 row0, I64 nrows, int mode,
                              std::uintptr_t nn, std::uintptr_t nnd, std::uintptr_t /*stream*/) {
  return guarded([&] {
    check_dtype(dtype);
    if (nrows == 0) return;
    if (dtype == 0) {
      merge<float>(src, ld_src, dst, ld_dst, p, q, wp, wq, n_new, row0, nrows, mode, nn, nnd);
    } else {
      merge<double>(src, ld_src, dst, ld_dst, p, q, wp, wq, n_new, row0, nrows, mode, nn, nnd);
    }
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
    check_dtype(dtype);
    if (dtype == 0) {
      round_scan<float>(n, nn, nnd, size, rep, hfix, m_a, m_b, m_h, m_hf, m_s, m, check, cap,
                        average, p, q, wp, wq, size_out, rep_out, hfix_out, counts);
    } else {
      round_scan<double>(n, nn, nnd, size, rep, hfix, m_a, m_b, m_h, m_hf, m_s, m, check, cap,
                         average, p, q, wp, wq, size_out, rep_out, hfix_out, counts);
    }
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
