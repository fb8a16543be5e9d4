// Host side of the CUDA kernels of the matrix-free engine (linear_kernels.cuh; reciprocal
// nearest neighbours, Murtagh 1983, Müllner 2011): argument checks, dtype dispatch, pointer
// casts and launch configuration, written once for any launcher, as rnn_dispatch.h (whose
// launcher convention, checks and pointer casts it shares).  linear_kernels.cu passes a
// launcher on a CUDA stream; the tests' CPU executor (tests/cuda_sim) one that runs the
// kernels on the host.
//
// The arguments are those of the functions in cuda_ops.h, without the stream.  The two
// centroid scans take one more, `split` (0: chosen here from n), so that the tests can run
// every split a GPU would get for some n.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_ops.h"
#include "linear_kernels.cuh"
#include "rnn_dispatch.h"

namespace dcpe_cuda {
namespace dispatch {

// Warps per group of 32 rows of a centroid scan: rows per block are 256 / split, so a
// smaller n gets more, smaller blocks (at least ~2048 of them, a few waves on any GPU),
// at no extra arithmetic; a larger n fewer column tiles staged per row.
inline int scan_split(I64 n) {
  int split = 1;
  while (split < kernels::kMaxSplit && n * split < I64(2048) * kernels::kTileThreads) split *= 2;
  return split;
}

inline void check_scan(const char* what, I64 dim, int split) {
  if (dim < 1) {
    throw std::invalid_argument(std::string(what) + ": dim must be positive, got " +
                                std::to_string(dim));
  }
  if (split != 0 && split != 1 && split != 2 && split != 4 && split != 8) {
    throw std::invalid_argument(std::string(what) + ": split must be 0, 1, 2, 4 or 8, got " +
                                std::to_string(split));
  }
}

// The rows scanned: rows[0 .. nrows) are distinct cluster indices below n (not checked on
// the device).
inline void check_rows(const char* what, I64 n, I64 nrows) {
  if (nrows < 0 || nrows > n) {
    throw std::invalid_argument(std::string(what) + ": nrows must be in [0, n], got " +
                                std::to_string(nrows) + " with n=" + std::to_string(n));
  }
}

inline void check_capacity(const char* what, I64 capacity) {
  if (capacity < 0) {
    throw std::invalid_argument(std::string(what) + ": capacity must be >= 0, got " +
                                std::to_string(capacity));
  }
}

// One scan of `op` over n centroids: the register kernel up to 16 dimensions, else chunks.
template <typename T, typename Op, typename Launch>
void centroid_scan(Launch& launch, const char* name, U mu_t, I64 n, I64 dim, U rows_,
                   I64 nrows, int split, const Op& op) {
  const unsigned grid = static_cast<unsigned>((nrows * split + kernels::kTileThreads - 1) /
                                              kernels::kTileThreads);
  const T* mu = as<const T>(mu_t);
  const std::int32_t* rows = as<const std::int32_t>(rows_);
  if (dim <= 4) {
    launch(name, kernels::centroid_scan_kernel<T, 4, Op>, grid, kernels::kTileThreads, mu, n,
           dim, rows, nrows, split, op);
  } else if (dim <= 8) {
    launch(name, kernels::centroid_scan_kernel<T, 8, Op>, grid, kernels::kTileThreads, mu, n,
           dim, rows, nrows, split, op);
  } else if (dim <= 16) {
    launch(name, kernels::centroid_scan_kernel<T, 16, Op>, grid, kernels::kTileThreads, mu, n,
           dim, rows, nrows, split, op);
  } else {
    launch(name, kernels::centroid_scan_chunked_kernel<T, Op>, grid, kernels::kTileThreads, mu,
           n, dim, rows, nrows, split, op);
  }
}

template <typename T, typename Launch>
void centroid_nn_typed(Launch& launch, U mu_t, U s2, I64 n, I64 dim, int mode, double scale,
                       U out, U nn, U rows, I64 nrows, int split) {
  const kernels::NearestOp<T> op{as<const T>(s2), as<T>(out), as<I64>(nn), mode,
                                 static_cast<T>(scale)};
  centroid_scan<T>(launch, "centroid_nn", mu_t, n, dim, rows, nrows, split, op);
}

template <typename Launch>
void centroid_nn(Launch&& launch, int dtype, U mu_t, U s2, I64 n, I64 dim, int mode,
                 double scale, U out, U nn, U rows, I64 nrows, int split = 0) {
  check_args(dtype, n, "centroid_nn");
  check_scan("centroid_nn", dim, split);
  if (mode != 0 && mode != 1) {
    throw std::invalid_argument("centroid_nn: mode must be 0 (sqrt bound) or 1 (closed form), "
                                "got " + std::to_string(mode));
  }
  if (mode == 1 && scale != 0.5 && scale != 1.0) {
    throw std::invalid_argument("centroid_nn: scale must be 0.5 or 1.0 in mode 1, got " +
                                std::to_string(scale));
  }
  check_rows("centroid_nn", n, nrows);
  if (n == 0 || nrows == 0) return;
  if (split == 0) split = scan_split(nrows);
  if (dtype == kFloat32) {
    centroid_nn_typed<float>(launch, mu_t, s2, n, dim, mode, scale, out, nn, rows, nrows, split);
  } else {
    centroid_nn_typed<double>(launch, mu_t, s2, n, dim, mode, scale, out, nn, rows, nrows,
                              split);
  }
}

template <typename T>
kernels::CandidateOp<T> candidate_op(U s2, U rad, U tau, I64 n, double rel, double absm, U pa,
                                     U pb, U count, I64 capacity, U needy) {
  const T rel_t = static_cast<T>(rel);
  return kernels::CandidateOp<T>{as<const T>(s2),
                                 as<const T>(rad),
                                 as<const T>(tau),
                                 static_cast<T>(T(1) + rel_t),
                                 static_cast<T>(absm),
                                 as<std::int32_t>(pa),
                                 as<std::int32_t>(pb),
                                 as<unsigned long long>(count),
                                 capacity,
                                 n,
                                 as<const std::int8_t>(needy)};
}

template <typename T, typename Launch>
void candidate_pairs_typed(Launch& launch, U mu_t, U s2, U rad, U tau, I64 n, I64 dim,
                           double rel, double absm, U pa, U pb, U count, I64 capacity,
                           U rows, I64 nrows, U needy, int split) {
  centroid_scan<T>(launch, "candidate_pairs", mu_t, n, dim, rows, nrows, split,
                   candidate_op<T>(s2, rad, tau, n, rel, absm, pa, pb, count, capacity, needy));
}

template <typename Launch>
void candidate_pairs(Launch&& launch, int dtype, U mu_t, U s2, U rad, U tau, I64 n, I64 dim,
                     double rel, double absm, U pa, U pb, U count, I64 capacity, U rows,
                     I64 nrows, U needy, int split = 0) {
  check_args(dtype, n, "candidate_pairs");
  check_scan("candidate_pairs", dim, split);
  check_capacity("candidate_pairs", capacity);
  check_rows("candidate_pairs", n, nrows);
  if (n == 0 || nrows == 0) return;
  if (split == 0) split = scan_split(nrows);
  if (dtype == kFloat32) {
    candidate_pairs_typed<float>(launch, mu_t, s2, rad, tau, n, dim, rel, absm, pa, pb, count,
                                 capacity, rows, nrows, needy, split);
  } else {
    candidate_pairs_typed<double>(launch, mu_t, s2, rad, tau, n, dim, rel, absm, pa, pb, count,
                                  capacity, rows, nrows, needy, split);
  }
}

// The scans from a tile of the Gram matrix (gram_scan_kernel): g float64, row i of the
// tile (cluster rows[i]) and column b (c0 <= b < c1) at g[i * g_rs + (b - c0) * g_cs]; nrm
// float64 (n,); gerr >= 0.
inline void check_gram(const char* what, I64 g_rs, I64 g_cs, double gerr, I64 n, I64 c0,
                       I64 c1) {
  if (c0 < 0 || c0 > c1 || c1 > n) {
    throw std::invalid_argument(std::string(what) + ": the tile's columns must be 0 <= c0 <= "
                                "c1 <= n, got " + std::to_string(c0) + ", " +
                                std::to_string(c1) + " with n=" + std::to_string(n));
  }
  if (g_rs < 0 || g_cs < 0) {
    throw std::invalid_argument(std::string(what) + ": the Gram tile's strides must be >= 0, "
                                "got " + std::to_string(g_rs) + ", " + std::to_string(g_cs));
  }
  if (!(gerr >= 0.0 && gerr < 1.0)) {
    throw std::invalid_argument(std::string(what) + ": gerr must be in [0, 1), got " +
                                std::to_string(gerr));
  }
}

template <typename T, typename Op, typename Launch>
void gram_scan(Launch& launch, const char* name, U g, I64 g_rs, I64 g_cs, U nrm, double gerr,
               I64 n, I64 c0, I64 c1, U rows, I64 nrows, int split, const Op& op) {
  const unsigned grid = static_cast<unsigned>((nrows * split + kernels::kTileThreads - 1) /
                                              kernels::kTileThreads);
  launch(name, kernels::gram_scan_kernel<T, Op>, grid, kernels::kTileThreads,
         as<const double>(g), g_rs, g_cs, as<const double>(nrm), gerr, n, c0, c1,
         as<const std::int32_t>(rows), nrows, split, op);
}

// out / nn: the smallest hi + (s2_a + s2_b) and its smallest argmin (NearestOp's mode 1 at
// scale 1), merged with the earlier columns' when c0 > 0.
template <typename T, typename Launch>
void centroid_nn_gram_typed(Launch& launch, U g, I64 g_rs, I64 g_cs, U nrm, double gerr,
                            U s2, I64 n, I64 c0, I64 c1, U out, U nn, U rows, I64 nrows,
                            int split) {
  const kernels::NearestOp<T> op{as<const T>(s2), as<T>(out), as<I64>(nn), 1, T(1), c0 > 0};
  gram_scan<T>(launch, "centroid_nn_gram", g, g_rs, g_cs, nrm, gerr, n, c0, c1, rows, nrows,
               split, op);
}

template <typename Launch>
void centroid_nn_gram(Launch&& launch, int dtype, U g, I64 g_rs, I64 g_cs, U nrm, double gerr,
                      U s2, I64 n, I64 c0, I64 c1, U out, U nn, U rows, I64 nrows,
                      int split = 0) {
  check_args(dtype, n, "centroid_nn_gram");
  check_scan("centroid_nn_gram", 1, split);
  check_gram("centroid_nn_gram", g_rs, g_cs, gerr, n, c0, c1);
  check_rows("centroid_nn_gram", n, nrows);
  if (n == 0 || nrows == 0 || c0 == c1) return;
  if (split == 0) split = scan_split(nrows);
  if (dtype == kFloat32) {
    centroid_nn_gram_typed<float>(launch, g, g_rs, g_cs, nrm, gerr, s2, n, c0, c1, out, nn,
                                  rows, nrows, split);
  } else {
    centroid_nn_gram_typed<double>(launch, g, g_rs, g_cs, nrm, gerr, s2, n, c0, c1, out, nn,
                                   rows, nrows, split);
  }
}

template <typename T, typename Launch>
void candidate_pairs_gram_typed(Launch& launch, U g, I64 g_rs, I64 g_cs, U nrm, double gerr,
                                U s2, U rad, U tau, I64 n, I64 c0, I64 c1, double rel,
                                double absm, U pa, U pb, U count, I64 capacity, U rows,
                                I64 nrows, U needy, int split) {
  gram_scan<T>(launch, "candidate_pairs_gram", g, g_rs, g_cs, nrm, gerr, n, c0, c1, rows,
               nrows, split,
               candidate_op<T>(s2, rad, tau, n, rel, absm, pa, pb, count, capacity, needy));
}

template <typename Launch>
void candidate_pairs_gram(Launch&& launch, int dtype, U g, I64 g_rs, I64 g_cs, U nrm,
                          double gerr, U s2, U rad, U tau, I64 n, I64 c0, I64 c1, double rel,
                          double absm, U pa, U pb, U count, I64 capacity, U rows, I64 nrows,
                          U needy, int split = 0) {
  check_args(dtype, n, "candidate_pairs_gram");
  check_scan("candidate_pairs_gram", 1, split);
  check_gram("candidate_pairs_gram", g_rs, g_cs, gerr, n, c0, c1);
  check_capacity("candidate_pairs_gram", capacity);
  check_rows("candidate_pairs_gram", n, nrows);
  if (n == 0 || nrows == 0 || c0 == c1) return;
  if (split == 0) split = scan_split(nrows);
  if (dtype == kFloat32) {
    candidate_pairs_gram_typed<float>(launch, g, g_rs, g_cs, nrm, gerr, s2, rad, tau, n, c0, c1,
                                      rel, absm, pa, pb, count, capacity, rows, nrows, needy,
                                      split);
  } else {
    candidate_pairs_gram_typed<double>(launch, g, g_rs, g_cs, nrm, gerr, s2, rad, tau, n, c0,
                                       c1, rel, absm, pa, pb, count, capacity, rows, nrows,
                                       needy, split);
  }
}

// A fixed grid (the pair count lives on the device): at most 1024 blocks of 8 warps,
// fewer when the capacity is smaller.
inline unsigned pair_grid(I64 capacity) {
  const I64 blocks = (capacity + kernels::kPairWarps - 1) / kernels::kPairWarps;
  return static_cast<unsigned>(blocks < 1024 ? blocks : 1024);
}

template <typename T, typename V, typename Launch>
void pair_average_typed(Launch& launch, U x, I64 dim, I64 ts, I64 cs, U offsets, U sizes, U pa,
                        U pb, U count, I64 capacity, U val) {
  launch("pair_average_kernel", kernels::pair_average_kernel<T, V>, pair_grid(capacity),
         kernels::kPairThreads, as<const T>(x), dim, ts, cs, as<const I64>(offsets),
         as<const I64>(sizes), as<const std::int32_t>(pa), as<const std::int32_t>(pb),
         as<const I64>(count), capacity, as<V>(val));
}

// The tokens' layout: ts elements between tokens, cs between a token's coordinates (rows:
// dim and 1; columns of a (dim, ld) buffer: 1 and ld).
inline void check_token_layout(const char* what, I64 dim, I64 ts, I64 cs) {
  if (dim < 1) {
    throw std::invalid_argument(std::string(what) + ": dim must be positive, got " +
                                std::to_string(dim));
  }
  if (ts < 1) {
    throw std::invalid_argument(std::string(what) + ": token stride must be positive, got " +
                                std::to_string(ts));
  }
  if (cs < 1) {
    throw std::invalid_argument(std::string(what) +
                                ": coordinate stride must be positive, got " +
                                std::to_string(cs));
  }
}

template <typename Launch>
void pair_average(Launch&& launch, int dtype, U x, I64 dim, I64 ts, I64 cs, U offsets, U sizes,
                  U pa, U pb, U count, I64 capacity, U val, bool val_f64 = false) {
  check_args(dtype, 0, "pair_average");
  check_token_layout("pair_average", dim, ts, cs);
  check_capacity("pair_average", capacity);
  if (capacity == 0) return;
  if (dtype == kFloat32) {
    if (val_f64) {
      pair_average_typed<float, double>(launch, x, dim, ts, cs, offsets, sizes, pa, pb, count,
                                        capacity, val);
    } else {
      pair_average_typed<float, float>(launch, x, dim, ts, cs, offsets, sizes, pa, pb, count,
                                       capacity, val);
    }
  } else {
    pair_average_typed<double, double>(launch, x, dim, ts, cs, offsets, sizes, pa, pb, count,
                                       capacity, val);
  }
}

template <typename T, typename Launch>
void cluster_matrix_typed(Launch& launch, U x, I64 dim, I64 ts, I64 cs, U offsets, U sizes,
                          I64 n, U out, I64 ld, U nn, U nnd) {
  const unsigned grid = static_cast<unsigned>(n);
  launch("cluster_matrix_kernel", kernels::cluster_matrix_kernel<T>, grid, kernels::kThreads,
         as<const T>(x), dim, ts, cs, as<const I64>(offsets), as<const I64>(sizes), n, as<T>(out), ld);
  launch("row_argmin_kernel", kernels::row_argmin_kernel<T>, grid, kernels::kThreads,
         as<const T>(out), n, ld, as<I64>(nn), as<T>(nnd));
}

template <typename Launch>
void cluster_matrix(Launch&& launch, int dtype, U x, I64 dim, I64 ts, I64 cs, U offsets,
                    U sizes, I64 n, U out, I64 ld, U nn, U nnd) {
  check_args(dtype, n, "cluster_matrix");
  check_token_layout("cluster_matrix", dim, ts, cs);
  if (ld < n) {
    throw std::invalid_argument("cluster_matrix: ld must be >= n, got ld=" + std::to_string(ld) +
                                ", n=" + std::to_string(n));
  }
  if (n == 0) return;
  if (dtype == kFloat32) {
    cluster_matrix_typed<float>(launch, x, dim, ts, cs, offsets, sizes, n, out, ld, nn, nnd);
  } else {
    cluster_matrix_typed<double>(launch, x, dim, ts, cs, offsets, sizes, n, out, ld, nn, nnd);
  }
}

}  // namespace dispatch
}  // namespace dcpe_cuda
