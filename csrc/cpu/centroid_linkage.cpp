// Centroid linkage ("DCPE w/ centroid"): the distance between two clusters is the
// Euclidean distance between their means. It is not reducible (a merge can bring a cluster
// closer to a third one), so merges must be found in greedy order.
//
// Algorithm: the generic agglomerative algorithm with cached row minima [Müllner 2011,
// arXiv:1109.2378, Fig. 3]: every active slot i caches its nearest active slot j > i; the
// greedy pair is the smallest cached entry. After merging a < b into a, only rows whose
// cached neighbour was a or b are rescanned, and rows i < a compare their cache with the
// new distance to a (which may have decreased). Distances are computed from the centroids
// by direct differences in float64; no distance matrix is stored (memory O(N d)).
//
// Ties: the pair order is (distance, smaller slot, larger slot), slots being the clusters'
// smallest token indices.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/linkage_cpu.h"
#include "macros.h"

namespace dcpe {
namespace {

class CentroidState {
 public:
  CentroidState(int64_t n, int64_t d) : n_(n), d_(d), c_(n * d), size_(n, 1), active_(n, 1) {}

  double dist(int64_t i, int64_t j) const {
    const double* a = &c_[i * d_];
    const double* b = &c_[j * d_];
    double s = 0.0;
    for (int64_t k = 0; k < d_; ++k) {
      const double t = a[k] - b[k];
      s += t * t;
    }
    return std::sqrt(s);
  }

  // Nearest active j > i (smallest j on ties); j = -1 if none.
  void scan(int64_t i, double& bv, int64_t& bj) const {
    bv = std::numeric_limits<double>::infinity();
    bj = -1;
    for (int64_t j = i + 1; j < n_; ++j) {
      if (!active_[j]) continue;
      const double v = dist(i, j);
      if (bj < 0 || v < bv) {
        bv = v;
        bj = j;
      }
    }
  }

  int64_t n_, d_;
  std::vector<double> c_;
  std::vector<int64_t> size_;
  std::vector<char> active_;
};

}  // namespace

template <typename T>
std::vector<Merge> centroid_linkage(const T* x, int64_t n, int64_t d, const RunOptions& opt) {
  DCPE_CHECK_ARG(n >= 1, "n", n, "need at least one row");
  DCPE_CHECK_ARG(d >= 1, "d", d, "need at least one column");
  DCPE_CHECK(opt.method == Method::Centroid, "centroid_linkage: method is not centroid");
  DCPE_CHECK(opt.metric == Metric::Euclidean, "centroid linkage needs metric='euclidean'");
  const int threads = resolve_threads(opt.num_threads);
  CentroidState st(n, d);
  for (int64_t i = 0; i < n * d; ++i) st.c_[i] = static_cast<double>(x[i]);
  std::vector<double> nnv(n);
  std::vector<int64_t> nnj(n);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
  for (int64_t i = 0; i < n; ++i) st.scan(i, nnv[i], nnj[i]);

  std::vector<Merge> merges;
  merges.reserve(n > 0 ? n - 1 : 0);
  const int64_t cap = opt.max_cluster_size;
  std::vector<int64_t> rescan;
  while (true) {
    if ((merges.size() & 255) == 255) {
      if (opt.interrupted && opt.interrupted()) throw Interrupted();
    }
    int64_t a = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (st.active_[i] && nnj[i] >= 0 && (a < 0 || nnv[i] < nnv[a])) a = i;
    }
    if (a < 0) break;  // fewer than two active clusters
    const int64_t b = nnj[a];
    const double h = nnv[a];
    const int64_t sz = st.size_[a] + st.size_[b];
    merges.push_back({a, b, h, static_cast<double>(merges.size()), sz});
    const double wa = double(st.size_[a]) / double(sz), wb = double(st.size_[b]) / double(sz);
    for (int64_t k = 0; k < d; ++k) {
      st.c_[a * d + k] = wa * st.c_[a * d + k] + wb * st.c_[b * d + k];
    }
    st.size_[a] = sz;
    st.active_[b] = 0;
    const bool frozen = cap > 0 && sz > cap;
    if (frozen) st.active_[a] = 0;
    // Rows i < a: the distance to a changed (either way) and b is gone.
    rescan.clear();
#pragma omp parallel for num_threads(threads) schedule(static) if (a > 4096)
    for (int64_t i = 0; i < a; ++i) {
      if (!st.active_[i]) continue;
      if (nnj[i] == a || nnj[i] == b) {
        nnj[i] = -2;  // mark for rescan
        continue;
      }
      if (!frozen) {
        const double v = st.dist(i, a);
        if (v < nnv[i] || (v == nnv[i] && a < nnj[i])) {
          nnv[i] = v;
          nnj[i] = a;
        }
      }
    }
    for (int64_t i = 0; i < b; ++i) {
      if (st.active_[i] && (nnj[i] == -2 || (i > a && nnj[i] == b) || i == a)) {
        rescan.push_back(i);
      }
    }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (rescan.size() > 8)
    for (std::size_t t = 0; t < rescan.size(); ++t) {
      const int64_t i = rescan[t];
      st.scan(i, nnv[i], nnj[i]);
    }
    nnj[b] = -1;
    if (frozen) nnj[a] = -1;
  }
  return merges;
}

template std::vector<Merge> centroid_linkage<float>(const float*, int64_t, int64_t,
                                                    const RunOptions&);
template std::vector<Merge> centroid_linkage<double>(const double*, int64_t, int64_t,
                                                     const RunOptions&);

}  // namespace dcpe
