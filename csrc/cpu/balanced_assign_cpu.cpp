// Capacity-constrained assignment by a forward auction with eps-scaling (see
// balanced_assign_cpu.h for the algorithm and references).
//
// Candidate lists.  Every point keeps its m best centers by value (at first: the m nearest)
// and `bound`, the best value of any center outside the list when it was made.  Prices
// never decrease, so values outside the list stay <= bound.  While the best value in the
// list is >= bound, the point bids on it against max(second best in the list, bound), an
// upper bound of its second best value over all k centers, which keeps eps-CS (O(m) per
// bid).  Otherwise the list is rebuilt from all k centers, twice as long as before (up to
// 256), so points that must travel far rescan rarely; the points queued next whose lists
// have run out too are rebuilt with it, in parallel (a list made earlier stays valid, as
// prices only rise).  Distances are computed from coordinate differences in double
// precision; the m best are picked by a filter whose threshold comes from a sample.
//
// Products.  From kAuctionProductMinD (64) dimensions and kAuctionProductMinK (1,024)
// centers on, a list is made from float32 products of the rows shifted by the centers'
// mean (packed panels, several points at a time): they rank all k centers within a proven
// error, and only the centers they cannot rule out get their distance, by the same
// block_distances (rebuild_by_product).  The lists, their distances and bounds are those of
// the scan, so the auction is the same, bid for bid.  DCPE_CPU_PRODUCTS=0 scans.
//
// Phases.  After the first phase (or given a previous assignment as a warm start), the
// points whose center still satisfies eps-CS for the new eps keep it, each holding its slot
// at the bid it would place now; only the others bid again.  A warm start's first eps is
// the typical eps-CS violation of the points that must move.
//
// Carried lists.  Between the steps of balanced k-means the centers move a little, and
// making every list anew (all n x k distances) was most of a late step.  A call can instead
// start from the previous call's lists (CarriedLists), cut to m0 centers when they were
// made: each keeps its centers, with their distances computed again, and its bound widened
// by the largest move of the centers but the sixteenth that moved farthest (widened_bound);
// those are compared with every point and join the lists whose bound they beat.  Lists
// that have run out under the widened bound are made anew.  eps_final comes from lower
// bounds of the nearest-center distances (the previous ones less the moves, and what the
// list and its bound allow), so n * eps_final stays within rel_eps of the optimum.  The
// lists differ from fresh ones, so the auction may take other (equally valid) bids; the
// guarantee is the same.  Not where products make the lists (see below).

#include "balanced_assign_cpu.h"

#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>
#include <functional>

#include "../macros.h"
#include "block_distances.h"
#include "float_dots.h"
#include "linkage_cpu.h"

namespace dcpe {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// One point's candidate list: ids and squared distances of its centers, and the bound.
struct List {
  std::vector<int64_t> id;
  std::vector<double> dist;
  double bound = -std::numeric_limits<double>::infinity();
};

// Scratch of one thread for rebuild() and rebuild_by_product(): k distances, a selection
// buffer and a block of gathered rows.
template <typename T>
struct RebuildScratch {
  std::vector<double> dist;
  std::vector<double> val;  // -dist - price
  std::vector<double> xd;  // the point in double
  std::vector<double> sample;
  std::vector<int32_t> idx;  // k + 4: the packed stores write four lanes
  std::vector<std::pair<double, int64_t>> buf;
  std::vector<T> block;  // candidate rows transposed (d x len)
  std::vector<int32_t> where;  // a center's place in the list being replaced, or -1
  std::vector<int32_t> fresh;  // the candidates whose distances are computed
  explicit RebuildScratch(int64_t k)
      : dist(static_cast<size_t>(k)), val(static_cast<size_t>(k)), idx(static_cast<size_t>(k) + 4),
        where(static_cast<size_t>(k), -1), fresh(static_cast<size_t>(k)) {}
};

// The order of (value, id) pairs, strict and total: larger value first, then smaller id.
inline bool better(const std::pair<double, int64_t>& a, const std::pair<double, int64_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// The indices j < k with val[j] >= thr, packed into idx in ascending order; their count.
inline int64_t at_least(const double* val, int64_t k, double thr, int32_t* idx) {
  int64_t passed = 0;
  int64_t j = 0;
#if defined(__AVX2__)
  // four values at a time: the lanes that pass are packed to the front (a table of the 16
  // lane masks), stored, and counted, with no branch
  alignas(64) static const int32_t kPack[16][4] = {
      {0, 0, 0, 0}, {0, 0, 0, 0}, {1, 0, 0, 0}, {0, 1, 0, 0}, {2, 0, 0, 0}, {0, 2, 0, 0},
      {1, 2, 0, 0}, {0, 1, 2, 0}, {3, 0, 0, 0}, {0, 3, 0, 0}, {1, 3, 0, 0}, {0, 1, 3, 0},
      {2, 3, 0, 0}, {0, 2, 3, 0}, {1, 2, 3, 0}, {0, 1, 2, 3}};
  const __m256d thr4 = _mm256_set1_pd(thr);
  for (; j + 4 <= k; j += 4) {
    const int mask =
        _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(val + j), thr4, _CMP_GE_OQ));
    const __m128i lanes = _mm_load_si128(reinterpret_cast<const __m128i*>(kPack[mask]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(idx + passed),
                     _mm_add_epi32(lanes, _mm_set1_epi32(static_cast<int32_t>(j))));
    passed += __builtin_popcount(static_cast<unsigned>(mask));
  }
#endif
  for (; j < k; ++j) {
    idx[passed] = static_cast<int32_t>(j);
    passed += (val[j] >= thr) ? 1 : 0;
  }
  return passed;
}

// The keep best (value, id) pairs of val[0..k) by `better`, in s.buf[0..keep), the keep-th
// best at s.buf[keep - 1] (keep <= k).  A threshold from a sample of every 16th value should
// let about twice the keep needed pass the filter; the survivors are then cut to the keep
// best.  If fewer pass, all centers are candidates (the sample only saves work).  The
// sample's threshold is the least of its top_n best values, kept sorted as they are met
// (few values enter: about top_n * ln(samples / top_n)).
template <typename T>
void select_best(const double* val, int64_t k, int64_t keep, RebuildScratch<T>& s) {
  constexpr int64_t kStride = 16;
  double thr = -kInf;
  // sample values kept (best last): the threshold is met by about top_n of the sample, and
  // by about top_n * kStride >= 2 * keep of all; at least 17, so that fewer than keep pass
  // in well under 1% of the calls (a Poisson tail) even for short lists.  Sampled when at
  // most half of the sample is kept; fewer centers are all candidates.
  const int64_t top_n = std::max<int64_t>(2 * keep / kStride, 16) + 1;
  if (2 * top_n * kStride <= k) {
    auto& top = s.sample;
    top.assign(static_cast<size_t>(top_n), -kInf);
    double* tp = top.data();
    for (int64_t j = 0; j < k; j += kStride) {
      const double v = val[j];
      if (!(v > tp[0])) continue;
      int64_t q = 1;
      for (; q < top_n && tp[q] < v; ++q) tp[q - 1] = tp[q];
      tp[q - 1] = v;
    }
    thr = tp[0];
  }
  int32_t* idx = s.idx.data();
  int64_t passed = at_least(val, k, thr, idx);
  if (passed < keep) {  // the sample's threshold was too high
    for (int64_t q = 0; q < k; ++q) idx[q] = static_cast<int32_t>(q);
    passed = k;
  }
  auto& buf = s.buf;
  buf.clear();
  for (int64_t q = 0; q < passed; ++q) buf.emplace_back(val[idx[q]], idx[q]);
  std::nth_element(buf.begin(), buf.begin() + (keep - 1), buf.end(), better);
}

// Rebuild a point's list with its m best centers by value -dist - price; bound = the best
// value outside the list (-inf when the list holds every center).  ct holds the centers
// transposed (d x k) so that the distance loop runs along the centers.
template <typename T>
void rebuild(const T* xi, const T* ct, int64_t k, int64_t d, const double* price,
             int64_t m, List& list, RebuildScratch<T>& s) {
  double* dist = s.dist.data();
  double* val = s.val.data();
  s.xd.resize(static_cast<size_t>(d));
  for (int64_t t = 0; t < d; ++t) s.xd[t] = static_cast<double>(xi[t]);
  with_dimension(d, [&](auto D) {  // the usual codebook dimensions: register-resident sums
    constexpr int64_t kBlock = 256;
    for (int64_t j0 = 0; j0 < k; j0 += kBlock) {
      const int64_t len = std::min(kBlock, k - j0);
      block_distances<D.value>(s.xd.data(), ct, k, d, j0, len, dist + j0);
      for (int64_t j = j0; j < j0 + len; ++j) val[j] = -dist[j] - price[j];
    }
  });
  m = std::min(m, k);
  list.id.clear();
  list.dist.clear();
  if (m == k) {  // every center
    for (int64_t j = 0; j < k; ++j) {
      list.id.push_back(j);
      list.dist.push_back(dist[j]);
    }
    list.bound = -kInf;
    return;
  }
  const int64_t keep = m + 1;
  select_best(val, k, keep, s);
  list.bound = s.buf[keep - 1].first;  // the best value left outside
  for (int64_t t = 0; t + 1 < keep; ++t) {
    list.id.push_back(s.buf[t].second);
    list.dist.push_back(dist[s.buf[t].second]);
  }
}

// The centers shifted by their mean for rebuild_by_product's float32 products (float_dots.h),
// packed in panels of 8; the frame's scale covers the points and the centers.
struct CenterProducts {
  int64_t dp = 0;
  int64_t stride = 0;         // a row of products: the centers padded to whole panels
  ProductFrame frame;
  std::vector<float> packed;  // panel_count(k) x dp x 8
  std::vector<double> sq;     // |cs_j|^2 (the frame's units)
  double radius = 0.0;        // max_j |cs_j| (the frame's units)
  double scale = 0.0;         // product_scale(d)
};

// A group of points and its products with the centers: xs (count x dp) the points shifted,
// sqx = |xs|^2, dots (count x stride) the products.
struct Group {
  int64_t count = 0;
  std::vector<float> xs, dots;
  std::vector<double> sqx;
  template <typename T>
  void shift(const T* x, int64_t d, const int64_t* ids, int64_t n, const CenterProducts& pr) {
    count = n;
    xs.resize(static_cast<size_t>(n * pr.dp));
    dots.resize(static_cast<size_t>(n * pr.stride));
    sqx.resize(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      sqx[t] = shift_row(x + ids[t] * d, d, pr.frame, &xs[t * pr.dp]);
    }
  }
  // the products with the centers of the panels [q0, q1)
  void multiply(const CenterProducts& pr, int64_t q0, int64_t q1) {
    dot_packed(xs.data(), count, pr.packed.data(), q0, q1, pr.dp, dots.data(), pr.stride);
  }
};

// rebuild() with fewer distances (m < k): float32 products rank the centers, and only those
// that the products' error bound cannot rule out get their distance.  The list, its
// distances and its bound are rebuild()'s: a = (|xs|^2 + |cs_j|^2 - 2 xs.cs_j) unit is within
// scale r^2 + floor of the distance (r = (|xs| + max |cs|) / factor; float_dots.h: the
// frame's unit, factor and floor bring everything to the data's units), and the values -a - price
// and -dist - price round within 2^-53 of |a| + price each, so every approximate value
// v'_j is within slack of the exact v_j.  Let T' be the (m + 1)-th best approximate value:
// the m + 1 centers at or above it have v >= T' - slack, so the (m + 1)-th best exact value
// is at least T' - slack, and a center with v'_j < T' - 2 slack (v_j < T' - slack) is
// outside the m + 1 best.  The others are ranked by their exact values, as rebuild() ranks
// all k; `better` is a strict total order, so the m + 1 best are the same.  With nearest,
// the smallest distance of all k centers is set likewise, from the centers whose a is
// within 2 slack of the smallest.  The list's order may differ from rebuild()'s; nothing
// reads it (scan() depends only on the values and ids).
template <typename T>
void rebuild_by_product(const T* xi, double sqx, const float* dots, const T* c, int64_t k,
                        int64_t d, const double* price, int64_t m, const CenterProducts& pr,
                        List& list, RebuildScratch<T>& s, double* nearest) {
  s.xd.resize(static_cast<size_t>(d));
  for (int64_t t = 0; t < d; ++t) s.xd[t] = static_cast<double>(xi[t]);
  double* a = s.dist.data();
  double* val = s.val.data();
  double p_max = 0.0;
  const double unit = pr.frame.unit;
  for (int64_t j = 0; j < k; ++j) {
    a[j] = (sqx + pr.sq[j] - 2.0 * static_cast<double>(dots[j])) * unit;
    val[j] = -a[j] - price[j];
    p_max = std::max(p_max, price[j]);
  }
  const double r = (std::sqrt(sqx) + pr.radius) / pr.frame.factor;
  const double slack =
      pr.scale * r * r + pr.frame.floor + std::ldexp(1.0, -50) * (r * r + p_max);
  int32_t* idx = s.idx.data();
  if (nearest) {
    const double a_min = *std::min_element(a, a + k);
    int64_t count = 0;
    for (int64_t j = 0; j < k; ++j) {
      if (a[j] <= a_min + 2.0 * slack) idx[count++] = static_cast<int32_t>(j);
    }
    std::vector<double>& e = s.sample;
    e.resize(static_cast<size_t>(count));
    gathered_distances(s.xd.data(), c, d, idx, count, s.block, e.data());
    *nearest = *std::min_element(e.begin(), e.end());
  }
  const int64_t keep = m + 1;
  select_best(val, k, keep, s);
  const int64_t count = at_least(val, k, s.buf[keep - 1].first - 2.0 * slack, idx);
  // the distances of the candidates: those in the list being replaced are known
  int32_t* where = s.where.data();
  for (size_t t = 0; t < list.id.size(); ++t) where[list.id[t]] = static_cast<int32_t>(t);
  int32_t* fresh = s.fresh.data();
  int64_t n_fresh = 0;
  for (int64_t q = 0; q < count; ++q) {
    if (where[idx[q]] < 0) fresh[n_fresh++] = idx[q];
  }
  std::vector<double>& e = s.sample;
  e.resize(static_cast<size_t>(n_fresh));
  gathered_distances(s.xd.data(), c, d, fresh, n_fresh, s.block, e.data());
  double* dist = s.dist.data();  // the exact distances, over the approximate ones
  auto& buf = s.buf;
  buf.clear();
  for (int64_t q = 0, f = 0; q < count; ++q) {
    const int64_t j = idx[q];
    dist[j] = where[j] >= 0 ? list.dist[where[j]] : e[f++];
    buf.emplace_back(-dist[j] - price[j], j);
  }
  for (const int64_t j : list.id) where[j] = -1;
  std::nth_element(buf.begin(), buf.begin() + (keep - 1), buf.end(), better);
  list.id.clear();
  list.dist.clear();
  list.bound = buf[keep - 1].first;
  for (int64_t t = 0; t + 1 < keep; ++t) {
    list.id.push_back(buf[t].second);
    list.dist.push_back(dist[buf[t].second]);
  }
}

// The bound of a carried list: the best value, at the current prices p >= the carried
// prices q, that a center outside the list can have after every center moved by at most
// `moved`.  Such a center j had -D_j - q_j <= bound, so D_j >= u - p_j with u = -bound; its
// distance now is at least max(0, sqrt(D_j) - moved), and its value at most
// -p_j - max(0, sqrt(u - p_j) - moved)^2, which is largest at the lowest price: the closest
// such center at p_min.  A relative 2^-36 of the magnitudes more covers the rounding of the
// distances, old and new (about d * 2^-53 of them), and of this formula.
inline double widened_bound(double bound, double moved, double p_min, double p_max) {
  if (bound == -kInf) return -kInf;  // the list held every center
  const double s = std::sqrt(std::max(0.0, -bound - p_min));
  const double near = std::max(0.0, s - moved);
  const double slack = std::ldexp(std::abs(bound) + p_max + (s + moved) * (s + moved), -36);
  return -p_min - near * near + slack;
}

// Best and second best value of point i within its list.
struct Pick {
  int64_t pos;
  double best, second;
};

inline Pick scan(const List& list, const double* price) {
  const int64_t m = static_cast<int64_t>(list.id.size());
  const int64_t* id = list.id.data();
  const double* dist = list.dist.data();
  Pick p{0, -kInf, -kInf};
  for (int64_t t = 0; t < m; ++t) {
    const double v = -dist[t] - price[id[t]];
    if (v > p.best || (v == p.best && id[t] < id[p.pos])) {
      p.second = p.best;
      p.best = v;
      p.pos = t;
    } else if (v > p.second) {
      p.second = v;
    }
  }
  return p;
}

// Min-heap of (bid, point) per center, stored in the center's segment of a flat array.
struct Holder {
  double bid;
  int64_t point;
};

inline bool lower(const Holder& a, const Holder& b) {
  return a.bid < b.bid || (a.bid == b.bid && a.point > b.point);
}

void sift_up(Holder* h, int64_t pos) {
  while (pos > 0) {
    const int64_t parent = (pos - 1) / 2;
    if (!lower(h[pos], h[parent])) break;
    std::swap(h[pos], h[parent]);
    pos = parent;
  }
}

void sift_down(Holder* h, int64_t size) {
  int64_t pos = 0;
  for (;;) {
    const int64_t l = 2 * pos + 1, r = l + 1;
    int64_t low = pos;
    if (l < size && lower(h[l], h[low])) low = l;
    if (r < size && lower(h[r], h[low])) low = r;
    if (low == pos) return;
    std::swap(h[pos], h[low]);
    pos = low;
  }
}

}  // namespace

template <typename T>
AuctionStats balanced_assign(const T* x, int64_t n, int64_t d, const T* c, int64_t k,
                             const int64_t* capacity, double* prices, int64_t* labels,
                             const AuctionOptions& opt) {
  AuctionStats st;
  if (n == 0) return st;
  if (k == 1) {
    std::fill(labels, labels + n, int64_t(0));
    return st;
  }
  const int threads = resolve_threads(opt.num_threads);
  std::vector<int64_t> offset(k + 1, 0);
  for (int64_t j = 0; j < k; ++j) offset[j + 1] = offset[j] + capacity[j];
  std::vector<double> price(prices, prices + k);
  for (double& p : price) p = std::max(p, 0.0);

  // centers transposed (d x k), in the input type: float32 centers take half the cache
  // of doubles, and every distance is still formed in double from the exact values
  std::vector<T> ct(static_cast<size_t>(k * d));
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t t = 0; t < d; ++t) ct[t * k + j] = c[j * d + t];
  }
  // Initial lists: the m nearest centers (values at the current prices), in parallel.
  // A point whose list runs out gets a list twice as long (up to kMaxList centers): points in
  // crowded regions, which must travel far, stop rescanning all centers after a few times.
  const int64_t m0 = std::max<int64_t>(2, std::min(opt.n_candidates, k));
  const int64_t kMaxList = std::max<int64_t>(m0, 256);
  // From kAuctionProductMinD dimensions and kAuctionProductMinK centers on (unless
  // DCPE_CPU_PRODUCTS=0), lists shorter than k are made by rebuild_by_product: the same lists
  // from fewer distances (with fewer centers, or fewer dimensions, the lists of up to 256
  // centers are too large a part of all of them, and the scan was as fast or faster).
  std::vector<List> lists(static_cast<size_t>(n));
  CenterProducts pr;
  const bool product_sizes = d >= kAuctionProductMinD && k >= kAuctionProductMinK;
  const bool products = product_sizes && switched_on("DCPE_CPU_PRODUCTS");
  if (products) {
    pr.dp = padded_dim(d);
    pr.stride = panel_count(k) * 8;
    std::vector<double> mean = row_mean(c, k, d);
    const double top = std::max(max_shifted_norm(c, k, d, mean.data(), threads),
                                max_shifted_norm(x, n, d, mean.data(), threads));
    pr.frame = product_frame(std::move(mean), top, d);
    shift_rows_packed(c, k, d, pr.frame, pr.packed, pr.sq, threads);
    pr.radius = std::sqrt(*std::max_element(pr.sq.begin(), pr.sq.end()));
    pr.scale = product_scale(d);
  }
  // point i's list of m centers; with products, g holds them for point i at position t
  auto make_list = [&](int64_t i, int64_t m, RebuildScratch<T>& scratch, const Group* g,
                       int64_t t, double* nearest) {
    if (g && m < k) {
      rebuild_by_product(x + i * d, g->sqx[t], &g->dots[t * pr.stride], c, k, d, price.data(),
                         m, pr, lists[i], scratch, nearest);
      return;
    }
    rebuild(x + i * d, ct.data(), k, d, price.data(), m, lists[i], scratch);
    if (nearest) *nearest = *std::min_element(scratch.dist.begin(), scratch.dist.end());
  };
  // squared distance to the nearest center (a lower bound of it for a carried list)
  std::vector<double> nearest(static_cast<size_t>(n));
  const int64_t block = 1024;
  std::vector<int64_t> fresh;  // the points whose lists are made anew, in order
  const CarriedLists* carry = opt.carry_in;
  if (carry && !(static_cast<int64_t>(carry->offsets.size()) == n + 1 &&
                 static_cast<int64_t>(carry->bound.size()) == n &&
                 static_cast<int64_t>(carry->nearest.size()) == n &&
                 static_cast<int64_t>(carry->prices.size()) == k &&
                 static_cast<int64_t>(carry->centers.size()) == k * d &&
                 static_cast<int64_t>(carry->ids.size()) == carry->offsets[n])) {
    carry = nullptr;
  }
  for (int64_t j = 0; carry && j < k; ++j) {
    if (!(price[j] >= carry->prices[j])) carry = nullptr;  // the bounds need prices >= theirs
  }
  // Where products make the lists (by size, so that DCPE_CPU_PRODUCTS=0 takes the same
  // path), fresh lists cost little, and carried ones, whose bounds are looser, ran out
  // during the auction three times as often: 2.9 s against 2.6 s a step at 65,536 x 256,
  // k = 2,048.  They are made anew there.
  if (product_sizes) carry = nullptr;
  if (carry) {
    // How far each center moved.  The k / 16 that moved farthest (those beyond the 15/16
    // quantile) get their distance to every point, and join a list when their value beats
    // its bound; the bound is widened by the farthest move of the others only.
    std::vector<double> move(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) {
      double s = 0.0;
      for (int64_t t = 0; t < d; ++t) {
        const double diff = static_cast<double>(c[j * d + t]) - carry->centers[j * d + t];
        s += diff * diff;
      }
      move[j] = std::sqrt(s) * (1.0 + std::ldexp(1.0, -36));
    }
    std::vector<double> sorted_moves(move);
    const int64_t at = k - 1 - k / 16;
    std::nth_element(sorted_moves.begin(), sorted_moves.begin() + at, sorted_moves.end());
    const double moved = sorted_moves[at];  // every center that is not a far mover
    std::vector<int32_t> far;  // the far movers
    for (int64_t j = 0; j < k; ++j) {
      if (move[j] > moved) far.push_back(static_cast<int32_t>(j));
    }
    const int64_t n_far = static_cast<int64_t>(far.size());
    const double p_min = *std::min_element(price.begin(), price.end());
    const double p_max = *std::max_element(price.begin(), price.end());
    std::vector<char> out_of_date(static_cast<size_t>(n), 0);
    for (int64_t b0 = 0; b0 < n; b0 += block) {
      if (opt.interrupted && opt.interrupted()) throw Interrupted();
      const int64_t b1 = std::min(n, b0 + block);
#pragma omp parallel num_threads(threads)
      {
        std::vector<T> rows;
        std::vector<double> xd(static_cast<size_t>(d));
        std::vector<char> listed(static_cast<size_t>(k), 0);
        std::vector<double> e(static_cast<size_t>(n_far));
#pragma omp for schedule(static)
        for (int64_t i = b0; i < b1; ++i) {
          const int64_t begin = carry->offsets[i], len = carry->offsets[i + 1] - begin;
          List& list = lists[i];
          if (len == 0) {
            out_of_date[i] = 1;
            continue;
          }
          list.id.assign(carry->ids.begin() + begin, carry->ids.begin() + begin + len);
          list.dist.resize(static_cast<size_t>(len));
          for (int64_t t = 0; t < d; ++t) xd[t] = static_cast<double>(x[i * d + t]);
          // lanes of blocks, as rebuild()'s distances (see gathered_distances)
          gathered_distances(xd.data(), c, d, list.id.data(), len, rows, list.dist.data());
          list.bound = widened_bound(carry->bound[i], moved, p_min, p_max);
          // the nearest center: a far mover, or another at least this far
          const double before = std::max(0.0, std::sqrt(carry->nearest[i]) - moved);
          double near_bound = before * before * (1.0 - std::ldexp(1.0, -36));
          if (n_far > 0) {
            gathered_distances(xd.data(), c, d, far.data(), n_far, rows, e.data());
            for (const int64_t j : list.id) listed[j] = 1;
            for (int64_t q = 0; q < n_far; ++q) {
              near_bound = std::min(near_bound, e[q]);
              if (!listed[far[q]] && -e[q] - price[far[q]] > list.bound) {
                list.id.push_back(far[q]);
                list.dist.push_back(e[q]);
              }
            }
            for (const int64_t j : list.id) listed[j] = 0;
          }
          if (scan(list, price.data()).best < list.bound) {
            out_of_date[i] = 1;  // run out: made anew below
            continue;
          }
          // ... and one outside the list is at least -bound - p_max away
          const double in_list = *std::min_element(list.dist.begin(), list.dist.end());
          nearest[i] = std::max(std::min(in_list, std::max(0.0, -list.bound - p_max)),
                                near_bound);
        }
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      if (out_of_date[i]) fresh.push_back(i);
    }
    st.carried = n - static_cast<int64_t>(fresh.size());
  } else {
    fresh.resize(static_cast<size_t>(n));
    std::iota(fresh.begin(), fresh.end(), int64_t(0));
  }
  const int64_t n_fresh = static_cast<int64_t>(fresh.size());
  constexpr int64_t kGroup = 12;  // points multiplied together (their products: kGroup x k)
  for (int64_t b0 = 0; b0 < n_fresh; b0 += block) {
    if (opt.interrupted && opt.interrupted()) throw Interrupted();
    const int64_t b1 = std::min(n_fresh, b0 + block);
#pragma omp parallel num_threads(threads)
    {
      RebuildScratch<T> scratch(k);
      Group g;
#pragma omp for schedule(static)
      for (int64_t g0 = b0; g0 < b1; g0 += kGroup) {
        const int64_t count = std::min(b1 - g0, kGroup);
        const int64_t* ids = fresh.data() + g0;
        const bool multiply = products && m0 < k;  // lists of all k centers: the scan
        if (multiply) {
          g.shift(x, d, ids, count, pr);
          g.multiply(pr, 0, panel_count(k));
        }
        for (int64_t t = 0; t < count; ++t) {
          make_list(ids[t], m0, scratch, multiply ? &g : nullptr, t, &nearest[ids[t]]);
        }
      }
    }
  }
  // eps: from a quarter of the largest listed cost down to rel_eps times the mean squared
  // distance to the nearest center, so that n * eps <= rel_eps * (unconstrained optimum)
  // <= rel_eps * optimum.
  double top = 0.0, mean_best = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<double>& dist = lists[i].dist;
    top = std::max(top, *std::max_element(dist.begin(), dist.end()));
    mean_best += nearest[i];
  }
  mean_best /= static_cast<double>(n);
  const double p_max = *std::max_element(price.begin(), price.end());
  // eps must stay far above the rounding of price + eps
  const double eps_floor = 64.0 * DBL_EPSILON * std::max(1e-300, top + p_max);
  double eps_final = opt.rel_eps * mean_best;
  if (!(eps_final > eps_floor)) eps_final = top > 0 ? eps_floor : 1.0;
  double eps = std::max(top / 4.0, eps_final);
  // Where point i stands with its current center j: `shortfall`, how far j's value falls
  // short of i's best value (an upper bound of it, through the list's bound; eps-CS holds
  // for i while it is <= eps), and `worth`, -dist_ij minus the best value of the other
  // centers (at most the list's bound outside it): the price at which i would be
  // indifferent between j and its second choice.  The distance is formed from the centers'
  // rows, contiguous, as lists form it.
  struct Standing {
    double shortfall, worth;
  };
  auto standing = [&](int64_t i) {
    const int64_t j = labels[i];
    double dist = 0.0;
    for (int64_t t = 0; t < d; ++t) {
      const double diff =
          static_cast<double>(x[i * d + t]) - static_cast<double>(c[j * d + t]);
      dist += diff * diff;
    }
    const List& list = lists[i];
    const Pick p = scan(list, price.data());
    const double other = std::max(list.id[p.pos] == j ? p.second : p.best, list.bound);
    return Standing{std::max(p.best, list.bound) + dist + price[j], -dist - other};
  };
  // A warm start's standings, computed for its first eps, serve its first phase too (the
  // same labels and prices): one pass over the points less, 18 ms of a 0.45 s step at
  // 65,536 x 256, k = 512.
  std::vector<Standing> started;
  if (opt.start_rel_eps > 0) {
    eps = std::max(eps_final, std::min(eps, opt.start_rel_eps * mean_best));
  } else if (opt.warm_labels) {
    // warm: start from the eps-CS violations of the given assignment (a start close to the
    // answer needs no coarse phases; one far from it keeps the coarse start): their mean
    // over all points, or if larger the geometric mean of those above eps_final (the
    // points that must move) up to 1/20 of the mean squared distance to the nearest
    // center.
    // - Where few points violate by much, the mean over all is far below the price changes
    //   that their moves need, and the phase's bids raise prices by eps at a time: one step
    //   of 262,144 x 8 tokens, k = 2,048, took 5.3 million bids from the mean's start
    //   (3.7e-5) and 3.3 million from the geometric mean's (3.2e-4).
    // - The geometric mean can be as large as the distances (two tokens a center: 5 times
    //   the mean nearest distance, with 2% of the points violating); a start that coarse
    //   made the lists run out 20 times as often as one at 1/100 of it (44,422 refreshes
    //   against 2,066, 0.82 s against 0.07 s, on 16,384 x 8 tokens, k = 8,192).  In seven
    //   steps of runs at 8 and 256 dimensions (k from 128 to 8,192), the fastest of the
    //   fixed starts tried (3e-4 to 0.1 of that distance) lay between 0.01 and 0.1 of it.
    double gap = 0.0, log_gap = 0.0;
    int64_t movers = 0;
    started.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      started[i] = standing(i);
      const double s = started[i].shortfall;
      gap += std::max(0.0, s);
      if (s > eps_final) {
        log_gap += std::log(s);
        ++movers;
      }
    }
    gap /= static_cast<double>(n);
    if (movers > 0) {
      const double typical = std::exp(log_gap / static_cast<double>(movers));
      gap = std::max(gap, std::min(typical, mean_best / 20.0));
    }
    eps = std::max(eps_final, std::min(eps, gap));
  }

  std::vector<Holder> heap(static_cast<size_t>(n));
  std::vector<int64_t> size(static_cast<size_t>(k));
  std::vector<int64_t> queue(static_cast<size_t>(n));  // circular: at most n waiting
  std::vector<RebuildScratch<T>> scratch(static_cast<size_t>(threads), RebuildScratch<T>(k));
  std::vector<int64_t> batch;
  Group refresh;  // the batch's products
  constexpr int64_t kLookahead = 64, kBatch = 16;
  std::vector<double> floor_price(price);
  for (;;) {
    floor_price = price;
    std::fill(size.begin(), size.end(), int64_t(0));
    int64_t head = 0, waiting = 0;
    if (st.phases++ == 0 && !opt.warm_labels) {
      std::fill(labels, labels + n, int64_t(-1));
      std::iota(queue.begin(), queue.end(), int64_t(0));
      waiting = n;
    } else {
      // A new phase (or a warm start) keeps the points whose center is still within the new
      // eps of their best value (eps-CS holds for them at the current prices) and lets the
      // others bid again.  A kept point holds its slot at the bid it would place now,
      // worth + eps (at least the price): when a bid evicts the lowest, the price rises to
      // the next holder's bid at once.  With every slot at the price instead, each holder
      // that prefers its center by more than eps was evicted in turn and bid again before
      // the price moved (a step of 262,144 x 8 tokens, k = 2,048: 2.0 million bids against
      // 3.3 million).  eps-CS holds for the holder at any price up to that bid.
      for (int64_t i = 0; i < n; ++i) {
        const int64_t j = labels[i];
        const Standing s = started.empty() ? standing(i) : started[i];
        if (s.shortfall <= eps) {
          heap[offset[j] + size[j]] = {std::max(price[j], s.worth + eps), i};
          sift_up(heap.data() + offset[j], size[j]);
          ++size[j];
        } else {
          labels[i] = -1;
          queue[waiting++] = i;
        }
      }
      std::vector<Standing>().swap(started);  // later phases: new prices
    }
    while (waiting > 0) {
      const int64_t i = queue[head];
      head = head + 1 == n ? 0 : head + 1;
      --waiting;
      if ((++st.bids & 0xffff) == 0 && opt.interrupted && opt.interrupted()) {
        throw Interrupted();
      }
      List& list = lists[i];
      Pick p = scan(list, price.data());
      if (p.best < list.bound) {
        // The list ran out. So may those of the points queued next: they are rebuilt too,
        // in parallel (a list stays valid under later prices, which only rise).
        batch.assign(1, i);
        for (int64_t t = 0, pos = head; t < std::min(waiting, kLookahead); ++t) {
          const int64_t q = queue[pos];
          pos = pos + 1 == n ? 0 : pos + 1;
          if (scan(lists[q], price.data()).best < lists[q].bound) {
            batch.push_back(q);
            if (static_cast<int64_t>(batch.size()) == kBatch) break;
          }
        }
        st.refreshes += static_cast<int64_t>(batch.size());
        const int64_t nb = static_cast<int64_t>(batch.size());
        if (products) {  // the batch's products, the centers split among the threads
          refresh.shift(x, d, batch.data(), nb, pr);
          constexpr int64_t kPart = 32;  // panels
          const int64_t panels = panel_count(k), parts = (panels + kPart - 1) / kPart;
#pragma omp parallel for num_threads(threads) schedule(static) if (nb * k * d >= (1 << 20))
          for (int64_t part = 0; part < parts; ++part) {
            refresh.multiply(pr, part * kPart, std::min(panels, (part + 1) * kPart));
          }
        }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (nb > 1)
        for (int64_t t = 0; t < nb; ++t) {
          const int64_t q = batch[t];
          const int64_t m =
              std::min<int64_t>(2 * static_cast<int64_t>(lists[q].id.size()), kMaxList);
          make_list(q, m, scratch[omp_get_thread_num()], products ? &refresh : nullptr, t,
                    nullptr);
        }
        p = scan(list, price.data());
      }
      // bound >= every value outside the list, so max(second, bound) is at least the
      // second best value over all centers: bidding against it keeps eps-CS
      const double second = std::max(p.second, list.bound);
      const int64_t j = list.id[p.pos];
      const double bid = -list.dist[p.pos] - second + eps;
      Holder* h = heap.data() + offset[j];
      const int64_t cap = offset[j + 1] - offset[j];
      if (size[j] < cap) {
        h[size[j]] = {bid, i};
        sift_up(h, size[j]);
        ++size[j];
      } else {
        const int64_t out = h[0].point;
        labels[out] = -1;
        int64_t tail = head + waiting;
        if (tail >= n) tail -= n;
        queue[tail] = out;
        ++waiting;
        h[0] = {bid, i};
        sift_down(h, cap);
      }
      labels[i] = j;
      if (size[j] == cap) price[j] = std::max(floor_price[j], h[0].bid);
    }
    if (eps <= eps_final) break;
    eps = std::max(eps / opt.eps_factor, eps_final);
  }
  std::copy(price.begin(), price.end(), prices);
  st.eps = eps_final;
  if (opt.carry_out) {  // this call's lists, for the next call
    // A list longer than m0 is cut to its m0 best at the final prices (a fresh list's
    // length: a point whose list must grow again does so as without a carry); the bound
    // becomes the best value cut, if that is higher.
#pragma omp parallel num_threads(threads)
    {
      std::vector<std::pair<double, int64_t>> buf;
#pragma omp for schedule(dynamic, 256)
      for (int64_t i = 0; i < n; ++i) {
        List& list = lists[i];
        const int64_t len = static_cast<int64_t>(list.id.size());
        if (len <= m0) continue;
        buf.clear();
        for (int64_t t = 0; t < len; ++t) {
          buf.emplace_back(-list.dist[t] - price[list.id[t]], t);
        }
        std::nth_element(buf.begin(), buf.begin() + m0, buf.end(),
                         [&](const auto& a, const auto& b) {
                           return better({a.first, list.id[a.second]},
                                         {b.first, list.id[b.second]});
                         });
        std::vector<int64_t> id(static_cast<size_t>(m0));
        std::vector<double> dist(static_cast<size_t>(m0));
        for (int64_t t = 0; t < m0; ++t) {
          id[t] = list.id[buf[t].second];
          dist[t] = list.dist[buf[t].second];
        }
        list.bound = std::max(list.bound, buf[m0].first);
        list.id = std::move(id);
        list.dist = std::move(dist);
      }
    }
    CarriedLists& out = *opt.carry_out;
    out.centers.assign(c, c + k * d);
    out.prices = price;
    out.offsets.assign(static_cast<size_t>(n + 1), 0);
    for (int64_t i = 0; i < n; ++i) {
      out.offsets[i + 1] = out.offsets[i] + static_cast<int64_t>(lists[i].id.size());
    }
    out.ids.resize(static_cast<size_t>(out.offsets[n]));
    out.bound.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      std::copy(lists[i].id.begin(), lists[i].id.end(), out.ids.begin() + out.offsets[i]);
      out.bound[i] = lists[i].bound;
    }
    out.nearest = std::move(nearest);
  }
  return st;
}

template AuctionStats balanced_assign<float>(const float*, int64_t, int64_t, const float*,
                                             int64_t, const int64_t*, double*, int64_t*,
                                             const AuctionOptions&);
template AuctionStats balanced_assign<double>(const double*, int64_t, int64_t, const double*,
                                              int64_t, const int64_t*, double*, int64_t*,
                                              const AuctionOptions&);

}  // namespace dcpe
