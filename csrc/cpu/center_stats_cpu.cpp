// The per-step statistics of k-means (see center_stats_cpu.h).  Compiled without
// floating-point contraction (CMakeLists.txt): a squared difference is rounded before it is
// added, as PyTorch's elementwise kernels round it.
//
// paired_sq_distances: one row at a time, a plain loop over the coordinates.
//
// segment_sums: a stable counting sort by label (the order of torch.argsort(stable=True)),
// then one pass over the sorted rows per thread, each thread keeping the running sums of
// its range of columns; a cluster's sum is the running sum at its end less the one at its
// start.  The running sums start at +0.0, as torch.cumsum's do on the host (so a first
// value of -0.0 gives +0.0, not -0.0).

#include "center_stats_cpu.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "linkage_cpu.h"

namespace dcpe {

template <typename T>
void paired_sq_distances(const T* x, int64_t n, int64_t d, const T* c,
                         const int64_t* labels, double* out, int num_threads) {
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * d;
    const T* ci = c + labels[i] * d;
    const double e0 = static_cast<double>(xi[0]) - static_cast<double>(ci[0]);
    double acc = e0 * e0;
    for (int64_t t = 1; t < d; ++t) {
      const double e = static_cast<double>(xi[t]) - static_cast<double>(ci[t]);
      acc += e * e;
    }
    out[i] = acc;
  }
}

template <typename T>
void segment_sums(const T* x, int64_t n, int64_t d, const int64_t* labels, int64_t k,
                  double* sums, int64_t* counts, int num_threads) {
  std::fill(counts, counts + k, int64_t{0});
  for (int64_t i = 0; i < n; ++i) ++counts[labels[i]];
  std::vector<int64_t> start(static_cast<size_t>(k) + 1, 0), next;
  for (int64_t j = 0; j < k; ++j) start[j + 1] = start[j] + counts[j];
  next.assign(start.begin(), start.end() - 1);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[next[labels[i]]++] = i;

  // Each thread takes one range of columns (whole vectors of 8 doubles) and passes over
  // the sorted rows once.
  const int64_t vectors = (d + 7) / 8;
  const int threads =
      static_cast<int>(std::min<int64_t>(resolve_threads(num_threads), vectors));
  const int64_t* st = start.data();
  const int64_t* ord = order.data();
#pragma omp parallel num_threads(threads)
  {
    const int64_t part = omp_get_thread_num(), parts = omp_get_num_threads();
    const int64_t c0 = std::min(d, vectors * part / parts * 8);
    const int64_t c1 = std::min(d, vectors * (part + 1) / parts * 8);
    const int64_t w = c1 - c0;
    std::vector<double> running(static_cast<size_t>(w), 0.0);
    double* acc = running.data();
    for (int64_t j = 0; j < k && w > 0; ++j) {
      double* s = sums + j * d + c0;
      for (int64_t q = 0; q < w; ++q) s[q] = acc[q];
      for (int64_t r = st[j]; r < st[j + 1]; ++r) {
        if (r + 8 < n) __builtin_prefetch(x + ord[r + 8] * d + c0);
        const T* row = x + ord[r] * d + c0;
        for (int64_t q = 0; q < w; ++q) acc[q] += static_cast<double>(row[q]);
      }
      for (int64_t q = 0; q < w; ++q) s[q] = acc[q] - s[q];
    }
  }
}

#define DCPE_INSTANTIATE(T)                                                                 \
  template void paired_sq_distances<T>(const T*, int64_t, int64_t, const T*, const int64_t*, \
                                       double*, int);                                       \
  template void segment_sums<T>(const T*, int64_t, int64_t, const int64_t*, int64_t, double*, \
                                int64_t*, int);
DCPE_INSTANTIATE(float)
DCPE_INSTANTIATE(double)
#undef DCPE_INSTANTIATE

}  // namespace dcpe
