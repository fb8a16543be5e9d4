// Exhaustive scans for the nearest-center search and the k-means++ seeding (see
// nearest_scan_cpu.h).  This file keeps the compiler's default floating-point contraction:
// a scan compares only distances it computed itself, so fused multiply-adds are free to
// round them (its results need not match the kd-tree's, which runs at other sizes).
//
// nearest_center_scan: centers transposed (d x k) so that a block of 256 centers is a
// contiguous run per coordinate; the block's squared distances are summed in double in L1
// (in registers for the dimensions 4, 8 and 16), then reduced to the first smallest.
// Points run in parallel.
//
// kmeanspp_seeds_scan: the same blocked distances, from each candidate to all points
// (transposed), one partial potential per block of points, summed in order (the result
// does not depend on the thread count), and the potential, as summed, picks the
// candidate.

#include "nearest_scan_cpu.h"

#include <omp.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../macros.h"
#include "block_distances.h"
#include "linkage_cpu.h"

namespace dcpe {
namespace {

constexpr int64_t kBlock = 256;  // centers (points) per block

template <int D, typename T>
int64_t nearest_one(const T* xi, const T* ct, const double* penalty, int64_t k, int64_t d,
                    double* xd, double* acc) {
  for (int64_t t = 0; t < d; ++t) xd[t] = static_cast<double>(xi[t]);
  double best = std::numeric_limits<double>::infinity();
  int64_t arg = -1;
  for (int64_t j0 = 0; j0 < k; j0 += kBlock) {
    const int64_t len = std::min(kBlock, k - j0);
    block_distances<D>(xd, ct, k, d, j0, len, acc);
    double bv = std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < len; ++j) {
      acc[j] += penalty[j0 + j];
      bv = acc[j] < bv ? acc[j] : bv;
    }
    if (bv < best) {  // strict: an earlier block keeps a tie
      int64_t j = 0;
      while (acc[j] != bv) ++j;
      best = bv;
      arg = j0 + j;
    }
  }
  return arg;
}

template <int D, typename T>
void scan(const T* x, int64_t n, int64_t d, const T* c, int64_t k, const uint8_t* mask,
          int64_t first, int64_t* out, int threads, const std::function<bool()>& interrupted) {
  std::vector<T> ct(static_cast<size_t>(k * d));  // centers transposed, input type (exact)
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t t = 0; t < d; ++t) ct[t * k + j] = c[j * d + t];
  }
  std::vector<double> penalty(static_cast<size_t>(k), 0.0);  // +inf: a skipped center
  if (mask != nullptr) {
    for (int64_t j = 0; j < k; ++j) {
      if (!mask[j]) penalty[j] = std::numeric_limits<double>::infinity();
    }
  }
  const int64_t rows = 1024;  // points between two polls of Ctrl-C
  for (int64_t r0 = 0; r0 < n; r0 += rows) {
    if (interrupted && interrupted()) throw Interrupted();
    const int64_t r1 = std::min(n, r0 + rows);
#pragma omp parallel num_threads(threads)
    {
      std::vector<double> xd(static_cast<size_t>(d)), acc(static_cast<size_t>(kBlock));
#pragma omp for schedule(static)
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t j = nearest_one<D>(x + i * d, ct.data(), penalty.data(), k, d,
                                         xd.data(), acc.data());
        out[i] = j >= 0 ? j : first;
      }
    }
  }
}

template <int D, typename T>
void kmeanspp_scan(const T* x, int64_t n, int64_t d, int64_t k, int64_t first, const double* u,
                  int64_t trials, int64_t* idx, int threads,
                  const std::function<bool()>& interrupted) {
  std::vector<T> xt(static_cast<size_t>(n * d));  // points transposed (d x n), exact
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < d; ++t) xt[t * n + i] = x[i * d + t];
  }
  const int64_t chunks = (n + kBlock - 1) / kBlock;  // one partial sum per block of points
  std::vector<double> closest(static_cast<size_t>(n)), cum(static_cast<size_t>(n));
  std::vector<double> part(static_cast<size_t>(chunks * trials));
  std::vector<int64_t> cand(static_cast<size_t>(trials));
  // closest[i] = min(closest[i], |x_i - x_j|^2) for all i (all = true: assign instead)
  auto update = [&](int64_t j, bool all) {
    std::vector<double> xj(static_cast<size_t>(d));
    for (int64_t t = 0; t < d; ++t) xj[t] = static_cast<double>(x[j * d + t]);
#pragma omp parallel num_threads(threads)
    {
      std::vector<double> acc(static_cast<size_t>(kBlock));
#pragma omp for schedule(static)
      for (int64_t b = 0; b < chunks; ++b) {
        const int64_t lo = b * kBlock, len = std::min(kBlock, n - lo);
        block_distances<D>(xj.data(), xt.data(), n, d, lo, len, acc.data());
        for (int64_t i = 0; i < len; ++i) {
          closest[lo + i] = all ? acc[i] : std::min(closest[lo + i], acc[i]);
        }
      }
    }
  };
  idx[0] = first;
  update(first, true);
  for (int64_t c = 1; c < k; ++c) {
    if ((c & 63) == 0 && interrupted && interrupted()) throw Interrupted();
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) cum[i] = (total += closest[i]);
    for (int64_t t = 0; t < trials; ++t) {  // searchsorted(cum, u * total, right=True)
      const double target = u[(c - 1) * trials + t] * total;
      const int64_t at = std::upper_bound(cum.begin(), cum.end(), target) - cum.begin();
      cand[t] = std::min(at, n - 1);
    }
#pragma omp parallel num_threads(threads)
    {
      std::vector<double> acc(static_cast<size_t>(kBlock)), xj(static_cast<size_t>(d));
#pragma omp for schedule(static)
      for (int64_t b = 0; b < chunks; ++b) {
        const int64_t lo = b * kBlock, len = std::min(kBlock, n - lo);
        for (int64_t t = 0; t < trials; ++t) {
          for (int64_t q = 0; q < d; ++q) xj[q] = static_cast<double>(x[cand[t] * d + q]);
          block_distances<D>(xj.data(), xt.data(), n, d, lo, len, acc.data());
          double s = 0.0;
          for (int64_t i = 0; i < len; ++i) s += std::min(closest[lo + i], acc[i]);
          part[b * trials + t] = s;
        }
      }
    }
    int64_t best = 0;
    double best_pot = std::numeric_limits<double>::infinity();
    for (int64_t t = 0; t < trials; ++t) {
      double pot = 0.0;
      for (int64_t b = 0; b < chunks; ++b) pot += part[b * trials + t];
      if (pot < best_pot) {
        best_pot = pot;
        best = t;
      }
    }
    idx[c] = cand[best];
    update(cand[best], false);
  }
}

}  // namespace

template <typename T>
void nearest_center_scan(const T* x, int64_t n, int64_t d, const T* c, int64_t k,
                         const uint8_t* mask, int64_t first, int64_t* out, int threads,
                         const std::function<bool()>& interrupted) {
  with_dimension(d, [&](auto D) {
    scan<D.value>(x, n, d, c, k, mask, first, out, threads, interrupted);
  });
}

template <typename T>
void kmeanspp_seeds_scan(const T* x, int64_t n, int64_t d, int64_t k, int64_t first,
                         const double* u, int64_t trials, int64_t* idx, int threads,
                         const std::function<bool()>& interrupted) {
  with_dimension(d, [&](auto D) {
    kmeanspp_scan<D.value>(x, n, d, k, first, u, trials, idx, threads, interrupted);
  });
}

template void nearest_center_scan<float>(const float*, int64_t, int64_t, const float*, int64_t,
                                         const uint8_t*, int64_t, int64_t*, int,
                                         const std::function<bool()>&);
template void nearest_center_scan<double>(const double*, int64_t, int64_t, const double*,
                                          int64_t, const uint8_t*, int64_t, int64_t*, int,
                                          const std::function<bool()>&);
template void kmeanspp_seeds_scan<float>(const float*, int64_t, int64_t, int64_t, int64_t,
                                         const double*, int64_t, int64_t*, int,
                                         const std::function<bool()>&);
template void kmeanspp_seeds_scan<double>(const double*, int64_t, int64_t, int64_t, int64_t,
                                          const double*, int64_t, int64_t*, int,
                                          const std::function<bool()>&);

}  // namespace dcpe
