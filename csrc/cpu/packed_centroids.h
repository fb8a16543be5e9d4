// Active clusters as centroids and sizes, packed for vectorised nearest-neighbour passes.
// Shared by the centroid and Ward engines (centroid_linkage.cpp, ward_linkage.cpp), which
// store no distance matrix (memory O(N d)).
//
// Clusters are named by their slot, the smallest token index they contain. Coordinates are
// stored by dimension (c[k * n + p]) so that one pass over the clusters is a contiguous loop
// the compiler vectorises. Positions keep the slot order: a removed cluster leaves a hole
// (slot -1), and the holes are squeezed out, in order, once they are more than an eighth of
// the positions in use. So "the slots above t" are the positions above t's, and a rescan
// for the nearest slot above t (the centroid engine's cached minima) reads only those.
// Every tie between equal criteria is broken by slot, whatever the thread count.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace dcpe {

// What a pass from cluster t computes (criteria into val_) and where it looks for the
// nearest cluster: All: every cluster / every cluster; Above: the clusters of slots > t /
// the same; AllNearestAbove: every cluster / the slots > t.
enum class Scan { All, Above, AllNearestAbove };

struct Nearest {
  double v;     // criterion (squared distance, or Ward's squared height)
  int64_t j;    // slot; -1 if none
};

// (v, j) precedes best in the (criterion, slot) order.
inline bool closer(double v, int64_t j, const Nearest& best) {
  return best.j < 0 || v < best.v || (v == best.v && j < best.j);
}

class PackedCentroids {
 public:
  static constexpr int64_t kBlock = 256;  // positions per block of a pass

  PackedCentroids(int64_t n, int64_t d, int threads)
      : n_(n), d_(d), threads_(threads), m_(n), end_(n), c_(n * d), size_(n, 1.0), slot_(n),
        pos_(n), val_(n) {
    for (int64_t i = 0; i < n; ++i) slot_[i] = pos_[i] = i;
  }

  template <typename T>
  void load(const T* x) {
    for (int64_t i = 0; i < n_; ++i) {
      for (int64_t k = 0; k < d_; ++k) c_[k * n_ + i] = static_cast<double>(x[i * d_ + k]);
    }
  }

  int64_t active() const { return m_; }
  // Positions in use (active clusters and holes); slot_at(p) is -1 for a hole.
  int64_t positions() const { return end_; }
  int64_t slot_at(int64_t p) const { return slot_[p]; }
  int64_t size(int64_t s) const { return static_cast<int64_t>(size_[pos_[s]]); }
  int64_t first_active() const {
    int64_t p = 0;
    while (slot_[p] < 0) ++p;
    return slot_[p];
  }

  // One pass from active cluster t: the criterion -- |c_t - c_p|^2, times
  // 2 |t||p| / (|t| + |p|) for Ward -- into val_ (by position) for the clusters that R
  // names, and the nearest cluster of its search range by (criterion, slot).
  template <bool Ward, Scan R>
  Nearest pass(int64_t t) {
    const int64_t pt = pos_[t];
    const int64_t begin = R == Scan::Above ? pt + 1 : 0, count = end_ - begin;
    const int64_t from = R == Scan::All ? 0 : pt + 1;  // search range: positions >= from
    const double nt = size_[pt];
    Nearest best{std::numeric_limits<double>::infinity(), -1};
    if (count <= 0) return best;
    const int nthreads = count > 4096 ? threads_ : 1;
#pragma omp parallel num_threads(nthreads)
    {
      const int nth = omp_get_num_threads(), me = omp_get_thread_num();
      const int64_t lo = begin + count * me / nth, hi = begin + count * (me + 1) / nth;
      const int64_t* sl = slot_.data();
      const double* sz = size_.data();
      Nearest mine{std::numeric_limits<double>::infinity(), -1};
      // blocks of positions (block_sq)
      for (int64_t b0 = lo; b0 < hi; b0 += kBlock) {
        const int64_t len = std::min(kBlock, hi - b0);
        double acc[kBlock];
        block_sq(pt, b0, len, acc);
        if (Ward) {
          for (int64_t j = 0; j < len; ++j) acc[j] *= 2.0 * nt * sz[b0 + j] / (nt + sz[b0 + j]);
        }
        std::copy(acc, acc + len, val_.data() + b0);
        // smallest criterion among the active positions other than t; positions are in
        // slot order, so the first position holding it has the smallest slot
        double bv = mine.v;
        for (int64_t j = 0; j < len; ++j) {
          const double w = (sl[b0 + j] >= 0 && b0 + j != pt && b0 + j >= from) ? acc[j] : bv;
          bv = w < bv ? w : bv;
        }
        if (bv < mine.v) {
          for (int64_t j = 0; j < len; ++j) {
            if (acc[j] == bv && sl[b0 + j] >= 0 && b0 + j != pt && b0 + j >= from) {
              mine = {bv, sl[b0 + j]};
              break;
            }
          }
        }
      }
#pragma omp critical
      if (mine.j >= 0 && closer(mine.v, mine.j, best)) best = mine;
    }
    return best;
  }

  // Before any merge (position == slot): every slot's nearest slot above it by squared
  // distance, (criterion, slot) order; rows in parallel.
  void nearest_above(std::vector<double>& nnv, std::vector<int64_t>& nnj) const {
    const int64_t n = n_;
#pragma omp parallel for num_threads(threads_) schedule(dynamic, 16)
    for (int64_t i = 0; i < n - 1; ++i) {
      Nearest best{std::numeric_limits<double>::infinity(), -1};
      for (int64_t b0 = i + 1; b0 < n; b0 += kBlock) {
        const int64_t len = std::min(kBlock, n - b0);
        double acc[kBlock];
        block_sq(i, b0, len, acc);
        double bv = acc[0];
        for (int64_t j = 1; j < len; ++j) bv = acc[j] < bv ? acc[j] : bv;
        if (bv < best.v || best.j < 0) {  // the first position holding it: smallest slot
          int64_t j = 0;
          while (acc[j] != bv) ++j;
          best = {bv, b0 + j};
        }
      }
      nnv[i] = best.v;
      nnj[i] = best.j;
    }
  }

  // Criterion of the last pass to slot s (active).
  double last(int64_t s) const { return val_[pos_[s]]; }

  // a absorbs b: sizes add, centroids combine by size; b leaves the active set.
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

  void deactivate(int64_t s) {  // leave a hole; squeeze the holes out now and then
    slot_[pos_[s]] = -1;
    pos_[s] = -1;
    --m_;
    if (8 * (end_ - m_) > end_) compact();
  }

 private:
  // acc[j] = |c_p - c_(b0 + j)|^2 for j < len (positions), summed over the coordinates in
  // order: a block's partial sums stay in L1 across the d coordinates.
  void block_sq(int64_t p, int64_t b0, int64_t len, double* __restrict__ acc) const {
    const int64_t n = n_, d = d_;
    const double* c = c_.data();
    for (int64_t j = 0; j < len; ++j) acc[j] = 0.0;
    for (int64_t k = 0; k < d; ++k) {
      const double* col = c + k * n + b0;
      const double ck = c[k * n + p];
      for (int64_t j = 0; j < len; ++j) {
        const double diff = col[j] - ck;
        acc[j] += diff * diff;
      }
    }
  }

  int64_t n_, d_;
  int threads_;
  // Move the active clusters down to positions 0..m-1, in order (criteria too).
  void compact() {
    int64_t q = 0;
    for (int64_t p = 0; p < end_; ++p) {
      if (slot_[p] < 0) continue;
      if (q != p) {
        for (int64_t k = 0; k < d_; ++k) c_[k * n_ + q] = c_[k * n_ + p];
        size_[q] = size_[p];
        slot_[q] = slot_[p];
        val_[q] = val_[p];
        pos_[slot_[q]] = q;
      }
      ++q;
    }
    end_ = q;
  }

  int64_t m_;                  // active clusters
  int64_t end_;                // positions in use: active clusters and holes
  std::vector<double> c_;      // d x n, by position
  std::vector<double> size_;   // by position
  std::vector<int64_t> slot_;  // position -> slot
  std::vector<int64_t> pos_;   // slot -> position, -1 once inactive
  std::vector<double> val_;    // criteria of the last pass, by position
};

}  // namespace dcpe
