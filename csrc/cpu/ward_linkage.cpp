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

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/linkage_cpu.h"
#include "cpu/packed_centroids.h"
#include "macros.h"

namespace dcpe {

template <typename T>
std::vector<Merge> ward_linkage(const T* x, int64_t n, int64_t d, const RunOptions& opt) {
  DCPE_CHECK_ARG(n >= 1, "n", n, "need at least one row");
  DCPE_CHECK_ARG(d >= 1, "d", d, "need at least one column");
  DCPE_CHECK(opt.method == Method::Ward, "ward_linkage: method is not ward");
  DCPE_CHECK(opt.metric == Metric::Euclidean, "ward linkage needs metric='euclidean'");
  const int threads = resolve_threads(opt.num_threads);
  PackedCentroids st(n, d, threads);
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
    Nearest nb = st.pass<true, Scan::All>(t);
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
