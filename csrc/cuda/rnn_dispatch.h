// Host side of the CUDA reciprocal-nearest-neighbour kernels (rnn_kernels.cuh; Murtagh
// 1983, Müllner 2011): argument checks, dtype dispatch, pointer casts and launch
// configuration, written once for any launcher.  rnn_kernels.cu passes one that launches
// on a CUDA stream; the tests' CPU executor (tests/cuda_sim) one that runs the kernel on
// the host, so both run the same host code.
//
// A launcher is a callable `launch(name, kernel, grid, block, args...)` that runs
// `kernel<<<grid, block>>>(args...)`; `name` is for its error messages.  The arguments are
// those of the functions in cuda_ops.h, without the stream (part of the launcher).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_ops.h"
#include "rnn_kernels.cuh"

namespace dcpe_cuda {
namespace dispatch {

using U = std::uintptr_t;
using I64 = std::int64_t;

template <typename P>
P* as(U p) {
  return reinterpret_cast<P*>(p);
}

inline void check_args(int dtype, I64 rows, const char* what) {
  if (dtype != kFloat32 && dtype != kFloat64) {
    throw std::invalid_argument(std::string(what) + ": dtype code must be 0 (float32) or "
                                "1 (float64), got " + std::to_string(dtype));
  }
  if (rows < 0 || rows > 0x7fffffffLL) {
    throw std::invalid_argument(std::string(what) + ": row count out of range: " +
                                std::to_string(rows));
  }
}

template <typename T, typename Launch>
void pairwise_typed(Launch& launch, U x, U D, U nn, U nnd, I64 n, I64 dim, I64 ld,
                    int metric) {
  launch("pairwise_rownn_kernel", kernels::pairwise_rownn_kernel<T>,
         static_cast<unsigned>(n), kernels::kThreads, as<const T>(x), as<T>(D), as<I64>(nn),
         as<T>(nnd), n, dim, ld, metric);
}

template <typename Launch>
void pairwise_nn(Launch&& launch, int dtype, U x, U D, U nn, U nnd, I64 n, I64 dim, I64 ld,
                 int metric) {
  check_args(dtype, n, "pairwise_nn");
  if (metric < 0 || metric > 2) throw std::invalid_argument("pairwise_nn: metric code 0..2");
  if (n == 0) return;
  if (dtype == kFloat32) {
    pairwise_typed<float>(launch, x, D, nn, nnd, n, dim, ld, metric);
  } else {
    pairwise_typed<double>(launch, x, D, nn, nnd, n, dim, ld, metric);
  }
}

template <typename T, typename Launch>
void merge_typed(Launch& launch, U src, I64 ld_src, U dst, I64 ld_dst, U p, U q, U wp, U wq,
                 I64 n_new, I64 row0, I64 nrows, int mode, U nn, U nnd, U count) {
  launch("merge_compact_rownn_kernel", kernels::merge_compact_rownn_kernel<T>,
         static_cast<unsigned>(nrows), kernels::kThreads, as<const T>(src), ld_src, as<T>(dst),
         ld_dst, as<const std::int32_t>(p), as<const std::int32_t>(q), as<const T>(wp),
         as<const T>(wq), n_new, row0, mode, as<I64>(nn), as<T>(nnd), as<const I64>(count));
}

template <typename Launch>
void merge_compact_nn(Launch&& launch, int dtype, U src, I64 ld_src, U dst, I64 ld_dst, U p,
                      U q, U wp, U wq, I64 n_new, I64 row0, I64 nrows, int mode, U nn, U nnd,
                      U count = 0) {
  check_args(dtype, nrows, "merge_compact_nn");
  if (mode < 0 || mode > 2) throw std::invalid_argument("merge_compact_nn: mode code 0..2");
  if (count != 0 && row0 != 0) {
    throw std::invalid_argument("merge_compact_nn: a count on the device needs row0 = 0");
  }
  if (nrows == 0) return;
  if (dtype == kFloat32) {
    merge_typed<float>(launch, src, ld_src, dst, ld_dst, p, q, wp, wq, n_new, row0, nrows,
                       mode, nn, nnd, count);
  } else {
    merge_typed<double>(launch, src, ld_src, dst, ld_dst, p, q, wp, wq, n_new, row0, nrows,
                        mode, nn, nnd, count);
  }
}

template <typename T, typename Launch>
void round_scan_typed(Launch& launch, I64 n, U nn, U nnd, U size, U rep, U hfix, U m_a,
                      U m_b, U m_h, U m_hf, U m_s, I64 m, bool check, I64 cap, bool average,
                      U p, U q, U wp, U wq, U size_out, U rep_out, U hfix_out, U counts,
                      U prev, I64 need) {
  launch("round_scan_kernel", kernels::round_scan_kernel<T>, 1u, kernels::kScanThreads, n,
         as<const I64>(nn), as<const T>(nnd), as<const I64>(size), as<const I64>(rep),
         as<const T>(hfix), as<I64>(m_a), as<I64>(m_b), as<T>(m_h), as<T>(m_hf), as<I64>(m_s),
         m, check ? 1 : 0, cap, average ? 1 : 0, as<std::int32_t>(p), as<std::int32_t>(q),
         as<T>(wp), as<T>(wq), as<I64>(size_out), as<I64>(rep_out), as<T>(hfix_out),
         as<I64>(counts), as<const I64>(prev), need);
}

template <typename Launch>
void round_scan(Launch&& launch, int dtype, I64 n, U nn, U nnd, U size, U rep, U hfix, U m_a,
                U m_b, U m_h, U m_hf, U m_s, I64 m, bool check, I64 cap, bool average, U p, U q,
                U wp, U wq, U size_out, U rep_out, U hfix_out, U counts, U prev = 0,
                I64 need = -1) {
  check_args(dtype, n, "round_scan");
  if (m < 0 || m > 0x7fffffffLL) {
    throw std::invalid_argument("round_scan: m out of range: " + std::to_string(m));
  }
  const I64 cap_eff = cap > 0 ? cap : (I64(1) << 62);
  if (dtype == kFloat32) {
    round_scan_typed<float>(launch, n, nn, nnd, size, rep, hfix, m_a, m_b, m_h, m_hf, m_s, m,
                            check, cap_eff, average, p, q, wp, wq, size_out, rep_out, hfix_out,
                            counts, prev, need);
  } else {
    round_scan_typed<double>(launch, n, nn, nnd, size, rep, hfix, m_a, m_b, m_h, m_hf, m_s, m,
                             check, cap_eff, average, p, q, wp, wq, size_out, rep_out,
                             hfix_out, counts, prev, need);
  }
}

}  // namespace dispatch
}  // namespace dcpe_cuda
