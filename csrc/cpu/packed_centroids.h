// Active clusters as centroids and sizes, packed for vectorised nearest-neighbour passes.
// Shared by the centroid and Ward engines (centroid_linkage.cpp, ward_linkage.cpp), which
// store no distance matrix (memory O(N d)).
//
// The active clusters occupy positions 0..m-1; coordinates are stored by dimension
// (c[k * n + p]) so that one pass over all active clusters is a contiguous loop the compiler
// vectorises. Removing a cluster moves the last one into its position. Clusters are named by
// their slot, the smallest token index they contain; positions carry no order, so every
// tie between equal criteria is broken by slot, whatever the thread count.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace dcpe {

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
  PackedCentroids(int64_t n, int64_t d, int threads)
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
  int64_t slot_at(int64_t p) const { return slot_[p]; }
  int64_t size(int64_t s) const { return static_cast<int64_t>(size_[pos_[s]]); }
  int64_t first_active() const { return *std::min_element(slot_.begin(), slot_.begin() + m_); }

  // One pass from cluster t: the criterion to every active cluster into val_ (by
  // position) -- |c_t - c_p|^2, times 2 |t||p| / (|t| + |p|) for Ward -- and the nearest
  // cluster among the slots > above (any slot but t when above < 0), by (criterion, slot).
  template <bool Ward>
  Nearest pass(int64_t t, int64_t above) {
    const int64_t pt = pos_[t], m = m_, n = n_, d = d_;
    const double nt = size_[pt];
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
        const double ck = col[pt];
        for (int64_t p = lo; p < hi; ++p) {
          const double diff = col[p] - ck;
          v[p] += diff * diff;
        }
      }
      if (Ward) {
        const double* sz = size_.data();
        for (int64_t p = lo; p < hi; ++p) v[p] *= 2.0 * nt * sz[p] / (nt + sz[p]);
      }
      // smallest criterion among the eligible positions, then the smallest slot holding it
      const int64_t floor = above < 0 ? -1 : above;
      const int64_t* sl = slot_.data();
      double bv = std::numeric_limits<double>::infinity();
      for (int64_t p = lo; p < hi; ++p) {
        const double w = (sl[p] > floor && p != pt) ? v[p] : bv;
        bv = w < bv ? w : bv;
      }
      Nearest mine{bv, -1};
      for (int64_t p = lo; p < hi; ++p) {
        if (v[p] == bv && sl[p] > floor && p != pt && (mine.j < 0 || sl[p] < mine.j)) {
          mine.j = sl[p];
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
    const int64_t n = n_, d = d_;
#pragma omp parallel num_threads(threads_)
    {
      std::vector<double> v(n);
#pragma omp for schedule(dynamic, 16)
      for (int64_t i = 0; i < n - 1; ++i) {
        for (int64_t p = i + 1; p < n; ++p) v[p] = 0.0;
        for (int64_t k = 0; k < d; ++k) {
          const double* col = c_.data() + k * n;
          const double ck = col[i];
          for (int64_t p = i + 1; p < n; ++p) {
            const double diff = col[p] - ck;
            v[p] += diff * diff;
          }
        }
        Nearest best{std::numeric_limits<double>::infinity(), -1};
        for (int64_t p = i + 1; p < n; ++p) {
          if (v[p] < best.v || best.j < 0) best = {v[p], p};  // p ascending: ties to smallest
        }
        nnv[i] = best.v;
        nnj[i] = best.j;
      }
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

  void deactivate(int64_t s) {  // move the last active cluster into s's position
    const int64_t p = pos_[s], last = m_ - 1;
    if (p != last) {
      for (int64_t k = 0; k < d_; ++k) c_[k * n_ + p] = c_[k * n_ + last];
      size_[p] = size_[last];
      slot_[p] = slot_[last];
      val_[p] = val_[last];
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
  std::vector<int64_t> slot_;  // position -> slot
  std::vector<int64_t> pos_;   // slot -> position, -1 once inactive
  std::vector<double> val_;    // criteria of the last pass, by position
};

}  // namespace dcpe
