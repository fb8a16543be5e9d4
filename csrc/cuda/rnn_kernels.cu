// CUDA kernels of the reciprocal-nearest-neighbour (RNN) engine for exact agglomerative
// clustering (reducible linkages: average, weighted, single, complete).
//
// Algorithm: reciprocal nearest neighbours (Murtagh 1983, "A survey of recent advances in
// hierarchical clustering algorithms"; Müllner 2011, "Modern hierarchical, agglomerative
// clustering algorithms", arXiv:1109.2378).  Every pair of active clusters that are each
// other's nearest neighbour is a merge of the greedy dendrogram; all such disjoint pairs
// of a round are merged at once with Lance–Williams applied to two merged clusters on both
// sides.  The round driver (O(n) bookkeeping) is dcpe_kernels/rnn.py; these kernels are
// the O(n^2) passes:
//   pairwise_rownn_kernel       dense dissimilarities from direct differences (no
//                               |a|^2+|b|^2-2ab cancellation) + row argmin;
//   merge_compact_rownn_kernel  merge + compaction of the matrix + row argmin, one pass;
// and the round's O(n) bookkeeping in one launch:
//   round_scan_kernel           reciprocal pairs, merge records, next slots and weights
//                               (one block walking the clusters with two running counts;
//                               semantics in dcpe_kernels/round.py).
// One thread block per matrix row; row argmin ties go to the smallest column.  Each entry
// is computed in both of its rows, so the weighted merge uses an order of operations that
// is symmetric in (row, column) and no fma: the matrix stays exactly symmetric (see
// dcpe_kernels/merge.py).  Token distances round every square and sum in the cpu engine's
// order (no fma either), so both engines start from the same matrix.

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_ops.h"
#include "rnn_kernels.cuh"

namespace dcpe_cuda {
namespace {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("dcpe CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

using namespace kernels;

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

template <typename T>
void launch_pairwise(std::uintptr_t x, std::uintptr_t D, std::uintptr_t nn, std::uintptr_t nnd,
                     std::int64_t n, std::int64_t dim, std::int64_t ld, int metric,
                     std::uintptr_t stream) {
  pairwise_rownn_kernel<T><<<static_cast<unsigned>(n), kThreads, 0, as_stream(stream)>>>(
      reinterpret_cast<const T*>(x), reinterpret_cast<T*>(D),
      reinterpret_cast<std::int64_t*>(nn), reinterpret_cast<T*>(nnd), n, dim, ld, metric);
  check(cudaGetLastError(), "pairwise_rownn_kernel launch");
}

template <typename T>
void launch_merge(std::uintptr_t src, std::int64_t ld_src, std::uintptr_t dst,
                  std::int64_t ld_dst, std::uintptr_t p, std::uintptr_t q, std::uintptr_t wp,
                  std::uintptr_t wq, std::int64_t n_new, std::int64_t row0, std::int64_t nrows,
                  int mode, std::uintptr_t nn, std::uintptr_t nnd, std::uintptr_t stream) {
  merge_compact_rownn_kernel<T><<<static_cast<unsigned>(nrows), kThreads, 0,
                                  as_stream(stream)>>>(
      reinterpret_cast<const T*>(src), ld_src, reinterpret_cast<T*>(dst), ld_dst,
      reinterpret_cast<const std::int32_t*>(p), reinterpret_cast<const std::int32_t*>(q),
      reinterpret_cast<const T*>(wp), reinterpret_cast<const T*>(wq), n_new, row0, mode,
      reinterpret_cast<std::int64_t*>(nn), reinterpret_cast<T*>(nnd));
  check(cudaGetLastError(), "merge_compact_rownn_kernel launch");
}

template <typename T>
void launch_round_scan(std::int64_t n, std::uintptr_t nn, std::uintptr_t nnd,
                       std::uintptr_t size, std::uintptr_t rep, std::uintptr_t hfix,
                       std::uintptr_t m_a, std::uintptr_t m_b, std::uintptr_t m_h,
                       std::uintptr_t m_hf, std::uintptr_t m_s, std::int64_t m, bool count_below,
                       std::int64_t cap, bool average, std::uintptr_t p, std::uintptr_t q,
                       std::uintptr_t wp, std::uintptr_t wq, std::uintptr_t size_out,
                       std::uintptr_t rep_out, std::uintptr_t hfix_out, std::uintptr_t counts,
                       std::uintptr_t stream) {
  using I64 = std::int64_t;
  round_scan_kernel<T><<<1, kScanThreads, 0, as_stream(stream)>>>(
      n, reinterpret_cast<const I64*>(nn), reinterpret_cast<const T*>(nnd),
      reinterpret_cast<const I64*>(size), reinterpret_cast<const I64*>(rep),
      reinterpret_cast<const T*>(hfix), reinterpret_cast<I64*>(m_a),
      reinterpret_cast<I64*>(m_b), reinterpret_cast<T*>(m_h), reinterpret_cast<T*>(m_hf),
      reinterpret_cast<I64*>(m_s), m, count_below ? 1 : 0, cap, average ? 1 : 0,
      reinterpret_cast<std::int32_t*>(p), reinterpret_cast<std::int32_t*>(q),
      reinterpret_cast<T*>(wp), reinterpret_cast<T*>(wq), reinterpret_cast<I64*>(size_out),
      reinterpret_cast<I64*>(rep_out), reinterpret_cast<T*>(hfix_out),
      reinterpret_cast<I64*>(counts));
  check(cudaGetLastError(), "round_scan_kernel launch");
}

void check_args(int dtype, std::int64_t rows, const char* what) {
  if (dtype != kFloat32 && dtype != kFloat64) {
    throw std::invalid_argument(std::string(what) + ": dtype code must be 0 (float32) or "
                                "1 (float64), got " + std::to_string(dtype));
  }
  if (rows < 0 || rows > 0x7fffffffLL) {
    throw std::invalid_argument(std::string(what) + ": row count out of range: " +
                                std::to_string(rows));
  }
}

}  // namespace

void pairwise_nn(int dtype, std::uintptr_t x, std::uintptr_t D, std::uintptr_t nn,
                 std::uintptr_t nnd, std::int64_t n, std::int64_t dim, std::int64_t ld,
                 int metric, std::uintptr_t stream) {
  check_args(dtype, n, "pairwise_nn");
  if (metric < 0 || metric > 2) throw std::invalid_argument("pairwise_nn: metric code 0..2");
  if (n == 0) return;
  if (dtype == kFloat32) {
    launch_pairwise<float>(x, D, nn, nnd, n, dim, ld, metric, stream);
  } else {
    launch_pairwise<double>(x, D, nn, nnd, n, dim, ld, metric, stream);
  }
}

void merge_compact_nn(int dtype, std::uintptr_t src, std::int64_t ld_src, std::uintptr_t dst,
                      std::int64_t ld_dst, std::uintptr_t p, std::uintptr_t q,
                      std::uintptr_t wp, std::uintptr_t wq, std::int64_t n_new,
                      std::int64_t row0, std::int64_t nrows, int mode, std::uintptr_t nn,
                      std::uintptr_t nnd, std::uintptr_t stream) {
  check_args(dtype, nrows, "merge_compact_nn");
  if (mode < 0 || mode > 2) throw std::invalid_argument("merge_compact_nn: mode code 0..2");
  if (nrows == 0) return;
  if (dtype == kFloat32) {
    launch_merge<float>(src, ld_src, dst, ld_dst, p, q, wp, wq, n_new, row0, nrows, mode, nn,
                        nnd, stream);
  } else {
    launch_merge<double>(src, ld_src, dst, ld_dst, p, q, wp, wq, n_new, row0, nrows, mode, nn,
                         nnd, stream);
  }
}

void round_scan(int dtype, std::int64_t n, std::uintptr_t nn, std::uintptr_t nnd,
                std::uintptr_t size, std::uintptr_t rep, std::uintptr_t hfix,
                std::uintptr_t m_a, std::uintptr_t m_b, std::uintptr_t m_h, std::uintptr_t m_hf,
                std::uintptr_t m_s, std::int64_t m, bool check, std::int64_t cap, bool average,
                std::uintptr_t p, std::uintptr_t q, std::uintptr_t wp, std::uintptr_t wq,
                std::uintptr_t size_out, std::uintptr_t rep_out, std::uintptr_t hfix_out,
                std::uintptr_t counts, std::uintptr_t stream) {
  check_args(dtype, n, "round_scan");
  if (m < 0 || m > 0x7fffffffLL) {
    throw std::invalid_argument("round_scan: m out of range: " + std::to_string(m));
  }
  const std::int64_t cap_eff = cap > 0 ? cap : (std::int64_t(1) << 62);
  if (dtype == kFloat32) {
    launch_round_scan<float>(n, nn, nnd, size, rep, hfix, m_a, m_b, m_h, m_hf, m_s, m, check,
                             cap_eff, average, p, q, wp, wq, size_out, rep_out, hfix_out,
                             counts, stream);
  } else {
    launch_round_scan<double>(n, nn, nnd, size, rep, hfix, m_a, m_b, m_h, m_hf, m_s, m, check,
                              cap_eff, average, p, q, wp, wq, size_out, rep_out, hfix_out,
                              counts, stream);
  }
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a missing driver
    return 0;
  }
  return count;
}

}  // namespace dcpe_cuda
