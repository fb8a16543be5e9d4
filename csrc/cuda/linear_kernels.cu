// CUDA kernels of the matrix-free engine for exact average-linkage clustering: reciprocal-
// nearest-neighbour rounds (Murtagh 1983, "A survey of recent advances in hierarchical
// clustering algorithms"; Müllner 2011, arXiv:1109.2378) over clusters that are contiguous
// segments of the tokens sorted by cluster, with no n x n matrix.  The round driver is
// dcpe_kernels/linear.py; the PyTorch references (same arguments, same semantics) are in
// dcpe_kernels/centroid.py and dcpe_kernels/pair_average.py.  Per cluster the driver keeps
// the centroid mu, the mean squared distance s2 of its tokens to it and a radius rad; with
// dd = |mu_a - mu_b|^2 (rounded squares summed in dimension order, no fma):
//   centroid_scan_kernel / centroid_scan_chunked_kernel  O(n^2 d) brute-force scans in
//       shared-memory tiles, with one of two per-pair operations:
//     NearestOp    each cluster's minimum over b != a of sqrt(dd + s2_a + s2_b) (the
//                  Jensen upper bound of the average Euclidean distance, mode 0) or of
//                  scale * (dd + s2_a + s2_b) (the exact average for sqeuclidean / cosine,
//                  Ward's decomposition, mode 1), ties to the smallest b;
//     CandidateOp  the unordered pairs whose lower bound max(|mu_a - mu_b|,
//                  (dd + s2_a + s2_b) / (|mu_a - mu_b| + rad_a + rad_b)) does not exceed
//                  tau (the mode-0 minimum), with margins for rounding, each once, at an
//                  atomically counted position;
//   pair_average_kernel     exact average distances (UPGMA, Sokal & Michener 1958) of a
//                           list of pairs whose length is on the device: 4 or 8 lanes per
//                           pair of few token pairs, a warp per small pair, a block per
//                           large one;
//   cluster_matrix_kernel   the dense matrix of all exact averages (to hand the last rounds
//   + row_argmin_kernel     to the dense engine of rnn_kernels.cu) and its row argmin/min.
// Every pairwise quantity is computed in an order of operations symmetric in (a, b), so
// (a, b) and (b, a) give the same bits; token distances round as in pairwise_rownn_kernel;
// the float64 sums of the averages have a fixed order (no atomics): results are
// deterministic.
//
// Layout: the device code is linear_kernels.cuh, the host-side checks, dtype dispatch and
// launch configuration linear_dispatch.h (shared with the tests' CPU executor); this file
// launches on the caller's stream and defines the functions of cuda_ops.h.

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_ops.h"
#include "linear_dispatch.h"
#include "stream_launch.cuh"

namespace dcpe_cuda {

void centroid_nn(int dtype, std::uintptr_t mu_t, std::uintptr_t s2, std::int64_t n,
                 std::int64_t dim, int mode, double scale, std::uintptr_t out,
                 std::uintptr_t nn, std::uintptr_t rows, std::int64_t nrows,
                 std::uintptr_t stream) {
  dispatch::centroid_nn(on(stream), dtype, mu_t, s2, n, dim, mode, scale, out, nn, rows,
                        nrows);
}

void candidate_pairs(int dtype, std::uintptr_t mu_t, std::uintptr_t s2, std::uintptr_t rad,
                     std::uintptr_t tau, std::int64_t n, std::int64_t dim, double rel,
                     double absm, std::uintptr_t pa, std::uintptr_t pb, std::uintptr_t count,
                     std::int64_t capacity, std::uintptr_t rows, std::int64_t nrows,
                     std::uintptr_t needy, std::uintptr_t stream) {
  dispatch::candidate_pairs(on(stream), dtype, mu_t, s2, rad, tau, n, dim, rel, absm, pa, pb,
                            count, capacity, rows, nrows, needy);
}

void centroid_nn_gram(int dtype, std::uintptr_t g, std::int64_t g_rs, std::int64_t g_cs,
                      std::uintptr_t nrm, double gerr, std::uintptr_t s2, std::int64_t n,
                      std::int64_t c0, std::int64_t c1, std::uintptr_t out, std::uintptr_t nn,
                      std::uintptr_t rows, std::int64_t nrows, std::uintptr_t stream) {
  dispatch::centroid_nn_gram(on(stream), dtype, g, g_rs, g_cs, nrm, gerr, s2, n, c0, c1, out,
                             nn, rows, nrows);
}

void candidate_pairs_gram(int dtype, std::uintptr_t g, std::int64_t g_rs, std::int64_t g_cs,
                          std::uintptr_t nrm, double gerr, std::uintptr_t s2,
                          std::uintptr_t rad, std::uintptr_t tau, std::int64_t n,
                          std::int64_t c0, std::int64_t c1, double rel, double absm,
                          std::uintptr_t pa, std::uintptr_t pb, std::uintptr_t count,
                          std::int64_t capacity, std::uintptr_t rows, std::int64_t nrows,
                          std::uintptr_t needy, std::uintptr_t stream) {
  dispatch::candidate_pairs_gram(on(stream), dtype, g, g_rs, g_cs, nrm, gerr, s2, rad, tau, n,
                                 c0, c1, rel, absm, pa, pb, count, capacity, rows, nrows,
                                 needy);
}

void pair_average(int dtype, std::uintptr_t x, std::int64_t dim, std::int64_t ts,
                  std::int64_t cs, std::uintptr_t offsets,
                  std::uintptr_t sizes, std::uintptr_t pa, std::uintptr_t pb,
                  std::uintptr_t count, std::int64_t capacity, std::uintptr_t val,
                  bool val_f64, std::uintptr_t stream) {
  dispatch::pair_average(on(stream), dtype, x, dim, ts, cs, offsets, sizes, pa, pb, count,
                         capacity, val, val_f64);
}

void cluster_matrix(int dtype, std::uintptr_t x, std::int64_t dim, std::int64_t ts,
                    std::int64_t cs, std::uintptr_t offsets,
                    std::uintptr_t sizes, std::int64_t n, std::uintptr_t out, std::int64_t ld,
                    std::uintptr_t nn, std::uintptr_t nnd, std::uintptr_t stream) {
  dispatch::cluster_matrix(on(stream), dtype, x, dim, ts, cs, offsets, sizes, n, out, ld, nn,
                           nnd);
}

}  // namespace dcpe_cuda
