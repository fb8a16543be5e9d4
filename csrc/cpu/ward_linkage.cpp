// Ward linkage [Ward 1963, "Hierarchical grouping to optimize an objective function",
// JASA 58(301)]: merge the pair of clusters whose union increases the within-cluster sum
// of squares least. For clusters A, B with means a, b the increase is
// |A||B| / (|A| + |B|) * |a - b|^2; the height reported is SciPy's (and scikit-learn's)
// sqrt(2 |A||B| / (|A| + |B|)) * |a - b|, the value their Lance–Williams recursion computes.
//
// Algorithm: nearest-neighbour chain [Murtagh 1983, "A survey of recent advances in
// hierarchical clustering algorithms", The Computer Journal 26(4); Müllner 2011,
// arXiv:1109.2378, Fig. 4] on cluster centroids and sizes, O(N^2 d) time and O(N d)
// memory (no distance matrix). Ward is reducible, so the chain finds the merges of the
// greedy dendrogram; they are put in greedy order by their height made monotone up the
// tree (dendrogram.cpp). Each nearest-neighbour search is one vectorised pass over the
// active clusters (packed, coordinates stored by dimension), split across OpenMP threads;
// centroids are kept in float64.
//
// Ties: the nearest neighbour among equal criteria is the previous chain element if it is
// one of them (this keeps the chain from cycling), else the smallest slot; slots are the
// clusters' smallest token indices. Deterministic for any thread count.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/linkage_cpu.h"
#include "macros.h"

namespace dcpe {
namespace {

struct Nearest {
  double v;
  int64_t j;
};

inline bool closer(double v, int64_t j, const Nearest& best) {
  return v < best.v || (v == best.v && j < best.j);
}

// Active clusters packed at positions 0..m-1: centroid coordinates stored by dimension
// (k * n + p) so that a nearest-neighbour pass is one contiguous, vectorisable loop.
class WardChain {
 public:
  WardChain(int64_t n, int64_t d, int threads)
      : n_(n), d_(d), threads_(threads), m_(n), c_(n * d), size_(n, 1.0), slot_(n), pos_(n),
        val_(n) {
    for (int64_t i = 0; i < n; ++i) slot_[i] = pos_[i] = i;
  }

  template <typename T>
  void load(const T* x) {
    for (int64_t i = 0; i < n_; ++i) {
      for (int64_t k = 0; k < d_; ++k) c_[k * n_ + i] = static_cast<double>(x[i * d_ + k]);
    }
  }

  int64_t active() const { return m_; }
  int64_t first_active() const { return *std::min_element(slot_.begin(), slot_.begin() + m_); }
  int64_t size(int64_t s) const { return static_cast<int64_t>(size_[pos_[s]]); }

  // Criterion 2 |t||j| / (|t| + |j|) * |c_t - c_j|^2 (the squared height) of every active
  // j into val_ (by position), and the nearest j by (criterion, slot).
  Nearest nearest(int64_t t) {
    const int64_t pt = pos_[t], m = m_, n = n_, d = d_;
    const double nt = size_[pt];
    double ct[64];
    const bool small_d = d <= 64;
    if (small_d) {
      for (int64_t k = 0; k < d; ++k) ct[k] = c_[k * n + pt];
    }
    Nearest best{std::numeric_limits<double>::infinity(), -1};
    const int nthreads = m > 4096 ? threads_ : 1;
#pragma omp parallel num_threads(nthreads)
    {
      const int nth = omp_get_num_threads(), me = omp_get_thread_num();
      const int64_t lo = m * me / nth, hi = m * (me + 1) / nth;
      double* v = val_.data();
      for (int64_t p = lo; p < hi; ++p) v[p] = 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const double* col = c_.data() + k * n;
        const double ck = small_d ? ct[k] : col[pt];
        for (int64_t p = lo; p < hi; ++p) {
          const double t = col[p] - ck;
          v[p] += t * t;
        }
      }
      const double* sz = size_.data();
      for (int64_t p = lo; p < hi; ++p) v[p] *= 2.0 * nt * sz[p] / (nt + sz[p]);
      Nearest mine{std::numeric_limits<double>::infinity(), -1};
      for (int64_t p = lo; p < hi; ++p) {
        if (p != pt && (mine.j < 0 || closer(v[p], slot_[p], mine))) mine = {v[p], slot_[p]};
      }
#pragma omp critical
      if (mine.j >= 0 && (best.j < 0 || closer(mine.v, mine.j, best))) best = mine;
    }
    return best;
  }

  // Criterion of the last nearest() pass for slot s.
  double last(int64_t s) const { return val_[pos_[s]]; }

  // a absorbs b (sizes and centroids); b leaves the active set.
  void merge(int64_t a, int64_t b) {
    const int64_t pa = pos_[a], pb = pos_[b];
    const double na = size_[pa], nb = size_[pb], sz = na + nb;
    const double wa = na / sz, wb = nb / sz;
    for (int64_t k = 0; k < d_; ++k) {
      double* col = c_.data() + k * n_;
      col[pa] = wa * col[pa] + wb * col[pb];
    }
    size_[pa] = sz;
    deactivate(b);
  }

  void deactivate(int64_t s) {  // move the last active cluster into s's position
    const int64_t p = pos_[s], last = m_ - 1;
    if (p != last) {
      for (int64_t k = 0; k < d_; ++k) c_[k * n_ + p] = c_[k * n_ + last];
      size_[p] = size_[last];
      slot_[p] = slot_[last];
      pos_[slot_[p]] = p;
    }
    pos_[s] = -1;
    --m_;
  }

 private:
  int64_t n_, d_;
  int threads_;
  int64_t m_;                  // active clusters
  std::vector<double> c_;      // d x n, by position
  std::vector<double> size_;   // by position
  std::vector<int64_t> slot_;  // position -> slot (smallest token index of the cluster)
  std::vector<int64_t> pos_;   // slot -> position, -1 once inactive
  std::vector<double> val_;    // criteria of the last pass, by position
};

}  // namespace

template <typename T>
std::vector<Merge> ward_linkage(const T* x, int64_t n, int64_t d, const RunOptions& opt) {
  DCPE_CHECK_ARG(n >= 1, "n", n, "need at least one row");
  DCPE_CHECK_ARG(d >= 1, "d", d, "need at least one column");
  DCPE_CHECK(opt.method == Method::Ward, "ward_linkage: method is not ward");
  DCPE_CHECK(opt.metric == Metric::Euclidean, "ward linkage needs metric='euclidean'");
  const int threads = resolve_threads(opt.num_threads);
  WardChain st(n, d, threads);
  st.load(x);
  std::vector<double> adj(n, -std::numeric_limits<double>::infinity());  // monotone heights
  std::vector<Merge> merges;
  merges.reserve(n > 0 ? n - 1 : 0);
  const int64_t cap = opt.max_cluster_size;
  std::vector<int64_t> chain;
  chain.reserve(n);
  int64_t steps = 0;
  while (st.active() >= 2) {
    if ((++steps & 255) == 0 && opt.interrupted && opt.interrupted()) throw Interrupted();
    if (chain.empty()) chain.push_back(st.first_active());
    const int64_t t = chain.back();
    const int64_t prev = chain.size() >= 2 ? chain[chain.size() - 2] : -1;
    Nearest nb = st.nearest(t);
    if (prev >= 0 && nb.j != prev && st.last(prev) <= nb.v) nb = {st.last(prev), prev};
    if (nb.j != prev) {
      chain.push_back(nb.j);
      continue;
    }
    chain.pop_back();
    chain.pop_back();
    const int64_t a = std::min(t, prev), b = std::max(t, prev);
    const double h = std::sqrt(nb.v);
    const int64_t sz = st.size(a) + st.size(b);
    const double hm = std::max({h, adj[a], adj[b]});
    merges.push_back({a, b, h, hm, sz});
    adj[a] = hm;
    st.merge(a, b);
    if (cap > 0 && sz > cap) st.deactivate(a);  // frozen: takes no further part
  }
  return merges;
}

template std::vector<Merge> ward_linkage<float>(const float*, int64_t, int64_t,
                                                const RunOptions&);
template std::vector<Merge> ward_linkage<double>(const double*, int64_t, int64_t,
                                                 const RunOptions&);

}  // namespace dcpe
