// Centroid linkage ("DCPE w/ centroid"): the distance between two clusters is the
// Euclidean distance between their means. It is not reducible (a merge can bring a cluster
// closer to a third one), so merges must be found in greedy order.
//
// Algorithm: the generic agglomerative algorithm with cached row minima [Müllner 2011,
// arXiv:1109.2378, Fig. 3]: every active slot i caches its nearest active slot j > i; the
// greedy pair is the smallest cached entry (kept in a tournament tree). After merging a < b
// into a, only rows whose cached neighbour was a or b are rescanned, and rows i < a compare
// their cache with the new distance to a (which may have decreased). Squared distances are
// computed from the centroids by direct differences in float64, one vectorised pass over
// the active clusters per merge plus one over the clusters above each rescanned row
// (packed_centroids.h keeps them in slot order); no distance matrix is stored (memory
// O(N d)).
//
// Merges come out in greedy order, so a flat cut at k clusters stops after the first N - k
// (RunOptions::max_merges): the later merges, between fewer and larger clusters, are never
// computed.
//
// Ties: the pair order is (squared distance, smaller slot, larger slot), slots being the
// clusters' smallest token indices.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/linkage_cpu.h"
#include "cpu/packed_centroids.h"
#include "macros.h"

namespace dcpe {
namespace {

// Tournament tree over slots: the smallest (value, slot) among the leaves, kept up to date
// in O(log N) per changed leaf.
class MinTree {
 public:
  explicit MinTree(int64_t n) : size_(1) {
    while (size_ < n) size_ *= 2;
    v_.assign(2 * size_, std::numeric_limits<double>::infinity());
    i_.assign(2 * size_, -1);
  }
  void set(int64_t slot, double value, bool present) {
    int64_t node = size_ + slot;
    v_[node] = present ? value : std::numeric_limits<double>::infinity();
    i_[node] = present ? slot : -1;
    for (node /= 2; node >= 1; node /= 2) {
      const int64_t l = 2 * node, r = l + 1;
      const bool left = i_[r] < 0 || (i_[l] >= 0 && (v_[l] < v_[r] || (v_[l] == v_[r] &&
                                                                      i_[l] < i_[r])));
      v_[node] = left ? v_[l] : v_[r];
      i_[node] = left ? i_[l] : i_[r];
    }
  }
  int64_t min_slot() const { return i_[1]; }  // -1 when empty

 private:
  int64_t size_;
  std::vector<double> v_;
  std::vector<int64_t> i_;
};

}  // namespace

template <typename T>
std::vector<Merge> centroid_linkage(const T* x, int64_t n, int64_t d, const RunOptions& opt) {
  DCPE_CHECK_ARG(n >= 1, "n", n, "need at least one row");
  DCPE_CHECK_ARG(d >= 1, "d", d, "need at least one column");
  DCPE_CHECK(opt.method == Method::Centroid, "centroid_linkage: method is not centroid");
  DCPE_CHECK(opt.metric == Metric::Euclidean, "centroid linkage needs metric='euclidean'");
  PackedCentroids st(n, d, resolve_threads(opt.num_threads));
  st.load(x);
  // Cached nearest active slot j > i of every active slot i, and its squared distance.
  std::vector<double> nnv(n, std::numeric_limits<double>::infinity());
  std::vector<int64_t> nnj(n, -1);
  MinTree tree(n);
  auto cache = [&](int64_t i, double v, int64_t j) {
    nnv[i] = v;
    nnj[i] = j;
    tree.set(i, v, j >= 0);
  };
  auto rescan = [&](int64_t i) {  // nearest slot above i: reads the positions above i's
    const Nearest nb = st.pass<false, Scan::Above>(i);
    cache(i, nb.v, nb.j);
  };
  st.nearest_above(nnv, nnj);
  for (int64_t i = 0; i < n; ++i) tree.set(i, nnv[i], nnj[i] >= 0);
  if (opt.interrupted && opt.interrupted()) throw Interrupted();

  std::vector<Merge> merges;
  merges.reserve(n > 0 ? n - 1 : 0);
  const int64_t cap = opt.max_cluster_size;
  std::vector<int64_t> stale;
  const std::size_t stop =
      opt.max_merges > 0 ? static_cast<std::size_t>(opt.max_merges) : static_cast<std::size_t>(n);
  while (merges.size() < stop) {
    if ((merges.size() & 255) == 255 && opt.interrupted && opt.interrupted()) {
      throw Interrupted();
    }
    // the greedy pair: smallest cached entry, ties to the smallest row slot
    const int64_t a = tree.min_slot();
    if (a < 0) break;  // fewer than two active clusters
    const int64_t b = nnj[a];
    const double h = std::sqrt(nnv[a]);
    const int64_t sz = st.size(a) + st.size(b);
    merges.push_back({a, b, h, static_cast<double>(merges.size()), sz});
    st.merge(a, b);
    cache(b, nnv[b], -1);
    const bool frozen = cap > 0 && sz > cap;
    if (frozen) {
      st.deactivate(a);
      cache(a, nnv[a], -1);
    } else {
      // every distance to a (for the rows below a) and a's own nearest slot above it
      const Nearest nb = st.pass<false, Scan::AllNearestAbove>(a);
      cache(a, nb.v, nb.j);
    }
    // Rows i < a: b is gone and the distance to a changed (either way); rows a < i < b
    // that pointed to b lost it. Rows past b cache slots past b: unaffected.
    stale.clear();
    for (int64_t p = 0; p < st.positions(); ++p) {
      const int64_t i = st.slot_at(p);
      if (i >= b) break;  // positions are in slot order
      if (i < 0 || i == a) continue;
      if (nnj[i] == a || nnj[i] == b) {
        stale.push_back(i);
      } else if (i < a && !frozen) {
        const double v = st.last(i);  // from the pass of a
        if (v < nnv[i] || (v == nnv[i] && a < nnj[i])) cache(i, v, a);
      }
    }
    for (int64_t i : stale) rescan(i);
  }
  return merges;
}

template std::vector<Merge> centroid_linkage<float>(const float*, int64_t, int64_t,
                                                    const RunOptions&);
template std::vector<Merge> centroid_linkage<double>(const double*, int64_t, int64_t,
                                                     const RunOptions&);

}  // namespace dcpe
