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
//
// Layout: the device code is rnn_kernels.cuh, the host-side checks, dtype dispatch and
// launch configuration rnn_dispatch.h (shared with the tests' CPU executor); this file
// launches on the caller's stream and defines the functions of cuda_ops.h.

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_ops.h"
#include "rnn_dispatch.h"
#include "stream_launch.cuh"

namespace dcpe_cuda {

void pairwise_nn(int dtype, std::uintptr_t x, std::uintptr_t D, std::uintptr_t nn,
                 std::uintptr_t nnd, std::int64_t n, std::int64_t dim, std::int64_t ld,
                 int metric, std::uintptr_t stream) {
  dispatch::pairwise_nn(on(stream), dtype, x, D, nn, nnd, n, dim, ld, metric);
}

void merge_compact_nn(int dtype, std::uintptr_t src, std::int64_t ld_src, std::uintptr_t dst,
                      std::int64_t ld_dst, std::uintptr_t p, std::uintptr_t q,
                      std::uintptr_t wp, std::uintptr_t wq, std::int64_t n_new,
                      std::int64_t row0, std::int64_t nrows, int mode, std::uintptr_t nn,
                      std::uintptr_t nnd, std::uintptr_t count, std::uintptr_t stream) {
  dispatch::merge_compact_nn(on(stream), dtype, src, ld_src, dst, ld_dst, p, q, wp, wq, n_new,
                             row0, nrows, mode, nn, nnd, count);
}

void round_scan(int dtype, std::int64_t n, std::uintptr_t nn, std::uintptr_t nnd,
                std::uintptr_t size, std::uintptr_t rep, std::uintptr_t hfix,
                std::uintptr_t m_a, std::uintptr_t m_b, std::uintptr_t m_h, std::uintptr_t m_hf,
                std::uintptr_t m_s, std::int64_t m, bool check, std::int64_t cap, bool average,
                std::uintptr_t p, std::uintptr_t q, std::uintptr_t wp, std::uintptr_t wq,
                std::uintptr_t size_out, std::uintptr_t rep_out, std::uintptr_t hfix_out,
                std::uintptr_t counts, std::uintptr_t prev, std::int64_t need,
                std::uintptr_t stream) {
  dispatch::round_scan(on(stream), dtype, n, nn, nnd, size, rep, hfix, m_a, m_b, m_h, m_hf, m_s,
                       m, check, cap, average, p, q, wp, wq, size_out, rep_out, hfix_out,
                       counts, prev, need);
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
