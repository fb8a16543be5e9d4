// Nearest center of every point (see nearest_cpu.h), and the greedy k-means++ seeding.
//
// nearest_center: up to kTreeMaxD dimensions, from kTreeMinK usable centers on, a kd-tree
// over the usable centers, searched by branch and bound [Friedman, Bentley & Finkel, ACM
// TOMS 3(3), 1977], the nearer child first.  A node's lower bound is the squared distance
// to its bounding box, summed in the order of the distances; this file is built without
// floating-point contraction, so rounding keeps that bound at most the computed distance
// of every center inside, and a node is skipped only when its bound exceeds the best
// distance so far (an equal bound may still hold a tie with a smaller index).  A leaf's
// centers are stored transposed and their distances computed as the scan's blocks are.
// Otherwise the exhaustive scan of nearest_scan_cpu.cpp.  Both return the first nearest
// center (ties to the smaller index).
//
// kmeanspp_seeds, up to kPruneMaxD dimensions: every point belongs to the group of its
// nearest chosen center, and a group's points are kept by their squared distance D^2 to
// it, largest first.  A candidate c can bring a point x of group j closer only if
// |c - c_j| < 2 |x - c_j| (triangle inequality [Elkan, ICML 2003, Lemma 1]), so a
// candidate's gain, sum_i max(0, D_i^2 - |x_i - c|^2), visits of each group only its
// points with D^2 > |c - c_j|^2 / 4, and no group whose largest D^2 is smaller.  The tests
// keep a relative margin of 32 (d + 8) machine epsilons for the roundings of the
// distances, so a point they skip is not brought closer as computed either.  The candidate
// with the largest gain is the one with the smallest potential (ties: the first).  The
// cumulative sum of D^2 that the candidates are drawn from is kept as sums over blocks of
// 256 points: block b's prefix P_b, plus the block's own running sums (kept, and searched
// by bisection), which are nondecreasing and equal P_(b+1) at the block's end; only the
// blocks whose points moved are summed again.  A candidate lists the groups within its
// reach (the test above) before it visits them, in order.  Past kPruneMaxD dimensions the
// triangle inequality prunes little and the seeding tests every point (nearest_scan_cpu.cpp:
// by float32 dot products first, the same seeds as its exhaustive scan).

#include "nearest_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cfloat>
#include <limits>
#include <numeric>
#include <vector>

#include "../macros.h"
#include "block_distances.h"
#include "linkage_cpu.h"
#include "nearest_scan_cpu.h"

namespace dcpe {
namespace {

constexpr int64_t kBlock = 256;    // points per block of the seeding's sums
constexpr int64_t kTreeMaxD = 12;  // the kd-tree up to this dimension...
constexpr int64_t kTreeMinK = 256; // ...from this many usable centers on
constexpr int64_t kLeaf = 64;      // centers per leaf
constexpr int64_t kPruneMaxD = 16;  // the seeding's groups up to this dimension

// |xd - c|^2 as block_distances computes it: differences in double, summed in order
template <int D, typename T>
inline double sq_dist(const double* xd, const T* c, int64_t d) {
  const int64_t dd = D > 0 ? D : d;
  double s = 0.0;
  for (int64_t t = 0; t < dd; ++t) {
    const double diff = xd[t] - static_cast<double>(c[t]);
    s += diff * diff;
  }
  return s;
}

// keep center id at distance dist if it is nearer than the best so far, or as near with a
// smaller index (arg < 0: none yet; a distance of +inf is never taken, so that the caller
// answers `first` when every distance overflows)
inline void take(double dist, int64_t id, double& best, int64_t& arg) {
  if (dist < best || (dist == best && arg >= 0 && id < arg)) {
    best = dist;
    arg = id;
  }
}

// A kd-tree over the usable centers: leaves of at most kLeaf centers, split at the median
// of the widest coordinate; each node keeps its centers' bounding box.
struct CenterTree {
  struct Node {
    int64_t begin, end, left, right;  // centers rows[begin, end); left < 0: a leaf
  };
  int64_t d = 0;
  std::vector<int64_t> id;    // center index of each row, leaf order
  std::vector<double> rows;   // the centers in leaf order, transposed (d x m), in double
  std::vector<double> lo, hi;  // per node, d each
  std::vector<Node> nodes;

  template <typename T>
  CenterTree(const T* c, int64_t k, int64_t dim, const uint8_t* mask) : d(dim) {
    for (int64_t j = 0; j < k; ++j) {
      if (mask == nullptr || mask[j]) id.push_back(j);
    }
    std::vector<int64_t> order = id;
    build_node(c, order, 0, static_cast<int64_t>(order.size()));
    id = order;
    const size_t m = id.size();
    rows.resize(m * static_cast<size_t>(d));
    for (size_t q = 0; q < m; ++q) {
      for (int64_t t = 0; t < d; ++t) rows[t * m + q] = static_cast<double>(c[id[q] * d + t]);
    }
  }

  template <typename T>
  int64_t build_node(const T* c, std::vector<int64_t>& order, int64_t begin, int64_t end) {
    const int64_t node = static_cast<int64_t>(nodes.size());
    nodes.push_back({begin, end, -1, -1});
    lo.resize(lo.size() + d, std::numeric_limits<double>::infinity());
    hi.resize(hi.size() + d, -std::numeric_limits<double>::infinity());
    double* l = &lo[node * d];
    double* h = &hi[node * d];
    for (int64_t q = begin; q < end; ++q) {
      for (int64_t t = 0; t < d; ++t) {
        const double v = static_cast<double>(c[order[q] * d + t]);
        l[t] = std::min(l[t], v);
        h[t] = std::max(h[t], v);
      }
    }
    int64_t axis = 0;
    for (int64_t t = 1; t < d; ++t) {
      if (h[t] - l[t] > h[axis] - l[axis]) axis = t;
    }
    if (end - begin <= kLeaf || !(h[axis] > l[axis])) return node;
    const int64_t mid = begin + (end - begin) / 2;
    std::nth_element(order.begin() + begin, order.begin() + mid, order.begin() + end,
                     [&](int64_t a, int64_t b) {
                       const T va = c[a * d + axis], vb = c[b * d + axis];
                       return va < vb || (va == vb && a < b);
                     });
    const int64_t left = build_node(c, order, begin, mid);
    const int64_t right = build_node(c, order, mid, end);
    nodes[node].left = left;
    nodes[node].right = right;
    return node;
  }

  // squared distance from xd to the node's box, summed in the distances' order: at most
  // the distance of every center inside (rounding is monotone)
  template <int D>
  double box_bound(const double* xd, int64_t node) const {
    const int64_t dd = D > 0 ? D : d;
    const double* l = &lo[node * d];
    const double* h = &hi[node * d];
    double s = 0.0;
    for (int64_t t = 0; t < dd; ++t) {
      const double g = xd[t] < l[t] ? l[t] - xd[t] : (xd[t] > h[t] ? xd[t] - h[t] : 0.0);
      s += g * g;
    }
    return s;
  }

  template <int D>
  void search(const double* xd, int64_t node, double& best, int64_t& arg, double* acc) const {
    const Node& nd = nodes[node];
    if (nd.left < 0) {  // kLeaf centers at a time (a leaf of equal centers may hold more)
      for (int64_t q0 = nd.begin; q0 < nd.end; q0 += kLeaf) {
        const int64_t len = std::min(kLeaf, nd.end - q0);
        block_distances<D>(xd, rows.data(), static_cast<int64_t>(id.size()), d, q0, len, acc);
        for (int64_t q = 0; q < len; ++q) take(acc[q], id[q0 + q], best, arg);
      }
      return;
    }
    const double bl = box_bound<D>(xd, nd.left), br = box_bound<D>(xd, nd.right);
    const bool left_first = bl <= br;
    const int64_t a = left_first ? nd.left : nd.right, b = left_first ? nd.right : nd.left;
    const double ba = left_first ? bl : br, bb = left_first ? br : bl;
    if (!(ba > best)) search<D>(xd, a, best, arg, acc);
    if (!(bb > best)) search<D>(xd, b, best, arg, acc);
  }
};

// first: the first usable center, the answer when every distance overflows to +inf
template <int D, typename T>
void tree_search(const T* x, int64_t n, int64_t d, const CenterTree& tree, int64_t first,
                 int64_t* out, int threads, const std::function<bool()>& interrupted) {
  const int64_t rows = 4096;  // points between two polls of Ctrl-C
  for (int64_t r0 = 0; r0 < n; r0 += rows) {
    if (interrupted && interrupted()) throw Interrupted();
    const int64_t r1 = std::min(n, r0 + rows);
#pragma omp parallel num_threads(threads)
    {
      std::vector<double> xd(static_cast<size_t>(d)), acc(static_cast<size_t>(kLeaf));
#pragma omp for schedule(dynamic, 64)
      for (int64_t i = r0; i < r1; ++i) {
        for (int64_t t = 0; t < d; ++t) xd[t] = static_cast<double>(x[i * d + t]);
        double best = std::numeric_limits<double>::infinity();
        int64_t arg = -1;
        tree.search<D>(xd.data(), 0, best, arg, acc.data());
        out[i] = arg >= 0 ? arg : first;
      }
    }
  }
}

}  // namespace

template <typename T>
void nearest_center(const T* x, int64_t n, int64_t d, const T* c, int64_t k,
                    const uint8_t* mask, int64_t* out, int num_threads,
                    const std::function<bool()>& interrupted) {
  if (n == 0) return;
  int64_t first = 0, usable = 0;
  for (int64_t j = k - 1; j >= 0; --j) {
    if (mask == nullptr || mask[j]) {
      first = j;
      ++usable;
    }
  }
  if (usable == 0) first = k - 1;
  const int threads = resolve_threads(num_threads);
  if (d > kTreeMaxD || usable < kTreeMinK) {
    nearest_center_scan<T>(x, n, d, c, k, mask, first, out, threads, interrupted);
    return;
  }
  const CenterTree tree(c, k, d, mask);
  with_dimension(d, [&](auto D) {
    tree_search<D.value>(x, n, d, tree, first, out, threads, interrupted);
  });
}

namespace {

template <int D, typename T>
void kmeanspp_run(const T* x, int64_t n, int64_t d, int64_t k, int64_t first, const double* u,
                  int64_t trials, int64_t* idx, int threads,
                  const std::function<bool()>& interrupted) {
  const int64_t dd = D > 0 ? D : d;
  const double margin = 1.0 + 32.0 * static_cast<double>(dd + 8) * DBL_EPSILON;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> closest(static_cast<size_t>(n));  // D^2: to the nearest chosen row
  std::vector<int64_t> owner(static_cast<size_t>(n), 0);  // its group (chosen row's rank)
  std::vector<std::vector<int64_t>> members(static_cast<size_t>(k));  // by D^2, largest first
  std::vector<double> r2(static_cast<size_t>(k), 0.0);  // a group's largest D^2
  std::vector<double> bsum(static_cast<size_t>(blocks)), prefix(static_cast<size_t>(blocks + 1));
  std::vector<uint8_t> dirty_block(static_cast<size_t>(blocks), 0);
  std::vector<uint8_t> dirty_group(static_cast<size_t>(k), 0);
  std::vector<int64_t> dirty_blocks, dirty_groups;
  std::vector<int64_t> cand(static_cast<size_t>(trials));
  std::vector<double> gain(static_cast<size_t>(trials));
  std::vector<std::vector<std::pair<int64_t, double>>> moved(static_cast<size_t>(trials));
  std::vector<std::vector<int64_t>> near_of(static_cast<size_t>(trials));

  // the chosen rows transposed (d x k), for a candidate's distances to all of them
  std::vector<double> ct(static_cast<size_t>(k * dd));
  std::vector<std::vector<double>> dcc(static_cast<size_t>(trials),
                                       std::vector<double>(static_cast<size_t>(k)));

  // a group's points by D^2, largest first (ties: smaller index first)
  auto by_distance = [&](int64_t a, int64_t b) {
    return closest[a] > closest[b] || (closest[a] == closest[b] && a < b);
  };
  auto choose = [&](int64_t c, int64_t row) {
    idx[c] = row;
    for (int64_t t = 0; t < dd; ++t) ct[t * k + c] = static_cast<double>(x[row * d + t]);
  };
  std::vector<double> run(static_cast<size_t>(n));  // each block's running sum of D^2
  auto block_sum = [&](int64_t b) {
    const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
    double s = 0.0;
    for (int64_t i = lo; i < hi; ++i) run[i] = (s += closest[i]);
    bsum[b] = s;
  };
  // The points of group j (at squared distance dc from the candidate xq) that the
  // candidate brings closer: only those with D^2 > dc / 4 can be (triangle inequality).
  // (called only for the groups within reach: dc <= 4 r2[j] margin)
  auto visit = [&](int64_t j, double dc, const double* xq, double& g,
                   std::vector<std::pair<int64_t, double>>& mv) {
    const double reach = dc / (4.0 * margin);
    for (const int64_t i : members[j]) {
      if (!(closest[i] > reach)) break;  // neither this point nor the rest come closer
      const double di = sq_dist<D>(xq, x + i * d, d);
      if (di < closest[i]) {
        g += closest[i] - di;
        mv.emplace_back(i, di);
      }
    }
  };
  choose(0, first);
  {
    std::vector<double> xf(static_cast<size_t>(dd));
    for (int64_t t = 0; t < dd; ++t) xf[t] = static_cast<double>(x[first * d + t]);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) closest[i] = sq_dist<D>(xf.data(), x + i * d, d);
  }
  members[0].resize(static_cast<size_t>(n));
  std::iota(members[0].begin(), members[0].end(), int64_t{0});
  std::sort(members[0].begin(), members[0].end(), by_distance);
  r2[0] = closest[members[0][0]];
  for (int64_t b = 0; b < blocks; ++b) block_sum(b);

  for (int64_t c = 1; c < k; ++c) {
    if ((c & 63) == 0 && interrupted && interrupted()) throw Interrupted();
    prefix[0] = 0.0;
    for (int64_t b = 0; b < blocks; ++b) prefix[b + 1] = prefix[b] + bsum[b];
    const double total = prefix[blocks];
    for (int64_t t = 0; t < trials; ++t) {  // searchsorted(cum, u * total, right=True)
      const double target = u[(c - 1) * trials + t] * total;
      const int64_t b = std::upper_bound(prefix.begin() + 1, prefix.end(), target) -
                        (prefix.begin() + 1);
      int64_t at = n;
      if (b < blocks) {  // the first point whose prefix[b] + running sum exceeds target: a
        // binary search, as prefix[b] + run[i] (rounded) does not decrease with i
        const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
        const double base = prefix[b];
        const auto it = std::upper_bound(run.begin() + lo, run.begin() + hi, target,
                                         [base](double v, double r) { return v < base + r; });
        // none: the last point (the block's end is prefix[b + 1] > target)
        at = it == run.begin() + hi ? hi - 1 : it - run.begin();
      }
      cand[t] = std::min(at, n - 1);
    }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t t = 0; t < trials; ++t) {
      std::vector<double> xv(static_cast<size_t>(dd));
      const double* xq = xv.data();
      for (int64_t q = 0; q < dd; ++q) xv[q] = static_cast<double>(x[cand[t] * d + q]);
      double g = 0.0;
      auto& mv = moved[t];
      mv.clear();
      double* dc = dcc[t].data();
      for (int64_t j0 = 0; j0 < c; j0 += kBlock) {
        block_distances<D>(xq, ct.data(), k, dd, j0, std::min(kBlock, c - j0), dc + j0);
      }
      auto& near = near_of[t];  // the groups within reach, in order
      near.clear();
      for (int64_t j = 0; j < c; ++j) {
        if (!(dc[j] > 4.0 * r2[j] * margin)) near.push_back(j);
      }
      for (const int64_t j : near) visit(j, dc[j], xq, g, mv);
      gain[t] = g;
    }
    int64_t best = 0;
    for (int64_t t = 1; t < trials; ++t) {
      if (gain[t] > gain[best]) best = t;
    }
    choose(c, cand[best]);
    double r = 0.0;
    for (const auto& [i, di] : moved[best]) {
      const int64_t j = owner[i];
      if (!dirty_group[j]) {
        dirty_group[j] = 1;
        dirty_groups.push_back(j);
      }
      if (!dirty_block[i / kBlock]) {
        dirty_block[i / kBlock] = 1;
        dirty_blocks.push_back(i / kBlock);
      }
      closest[i] = di;
      owner[i] = c;
      members[c].push_back(i);
      r = std::max(r, di);
    }
    std::sort(members[c].begin(), members[c].end(), by_distance);
    r2[c] = r;
    for (const int64_t j : dirty_groups) {  // drop the points that left, in order
      dirty_group[j] = 0;
      auto& m = members[j];
      size_t kept = 0;
      for (const int64_t i : m) {
        if (owner[i] == j) m[kept++] = i;
      }
      m.resize(kept);
      r2[j] = kept > 0 ? closest[m[0]] : 0.0;
    }
    dirty_groups.clear();
    for (const int64_t b : dirty_blocks) {
      dirty_block[b] = 0;
      block_sum(b);
    }
    dirty_blocks.clear();
  }
}

}  // namespace

template <typename T>
void kmeanspp_seeds(const T* x, int64_t n, int64_t d, int64_t k, int64_t first,
                    const double* u, int64_t trials, int64_t* idx, int num_threads,
                    const std::function<bool()>& interrupted) {
  if (k < 1) return;
  const int threads = resolve_threads(num_threads);
  if (d > kPruneMaxD) {
    kmeanspp_seeds_scan<T>(x, n, d, k, first, u, trials, idx, threads, interrupted);
    return;
  }
  with_dimension(d, [&](auto D) {
    kmeanspp_run<D.value>(x, n, d, k, first, u, trials, idx, threads, interrupted);
  });
}

template void kmeanspp_seeds<float>(const float*, int64_t, int64_t, int64_t, int64_t,
                                    const double*, int64_t, int64_t*, int,
                                    const std::function<bool()>&);
template void kmeanspp_seeds<double>(const double*, int64_t, int64_t, int64_t, int64_t,
                                     const double*, int64_t, int64_t*, int,
                                     const std::function<bool()>&);

template void nearest_center<float>(const float*, int64_t, int64_t, const float*, int64_t,
                                    const uint8_t*, int64_t*, int, const std::function<bool()>&);
template void nearest_center<double>(const double*, int64_t, int64_t, const double*, int64_t,
                                     const uint8_t*, int64_t*, int,
                                     const std::function<bool()>&);

}  // namespace dcpe
