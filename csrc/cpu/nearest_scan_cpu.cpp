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
// nearest_center_refine: the scan's answer from approximate distances (a matrix product's
// |c|^2 - 2 x.c, within a known error): only the centers whose approximation is within twice
// the error of the row's smallest can be the scan's answer, and only their distances are
// computed, by the same block_distances as the scan (so the same roundings), the first
// smallest kept.
//
// nearest_center_among: the first nearest of a few candidates per point, and its distance,
// by the same distances (gathered_distances), ties to the smaller center index: the scan's
// answer when the candidates include it (k-means' step after few centers moved,
// baselines.py).
//
// kmeanspp_seeds_scan: the same blocked distances, from each candidate to all points
// (transposed), one partial potential per block of points, summed in order (the result
// does not depend on the thread count), and the potential, as summed, picks the
// candidate.  Above 16 dimensions (unless DCPE_CPU_PRODUCTS=0) kmeanspp_product gives the
// same seeds: it computes a candidate's distance only to the points that float32 dot
// products, within their error bound, do not rule out (those it may bring closer), and
// the others keep their D^2 in the potential, as the scan's minimum keeps it.  The points
// it reads at every draw are stored in half precision where the compiler targets F16C
// (float_dots.h; DCPE_CPU_HALF=0 keeps them in float32), with each row's error in the bound.
//
// The refined distances are block_distances too (gathered_distances: lanes of blocks of 8
// rows or more), the same operations in the same order as the scan's lanes, compiled with
// the same contraction here, so they round alike: the tests compare the two ways on many
// inputs, bit for bit.  A row on its own (a block of one) does not: the compiler contracts
// its sum otherwise (measured: about 30% of random pairs differ in the last bit), so no
// distance here is computed that way.

#include "nearest_scan_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../macros.h"
#include "block_distances.h"
#include "float_dots.h"
#include "linkage_cpu.h"

namespace dcpe {
namespace {

constexpr int64_t kBlock = 256;  // centers (points) per block
constexpr int64_t kAhead = 8;     // panels between those multiplied and those prefetched

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

constexpr int64_t kRun = 64;  // approximations tested at once by refine

// min(a[j0:j1]) with independent lanes, so that the compiler vectorises it
template <typename A>
inline A run_min(const A* a, int64_t j0, int64_t j1) {
  constexpr int kLanes = 16;
  A lane[kLanes];
  for (int q = 0; q < kLanes; ++q) lane[q] = std::numeric_limits<A>::infinity();
  int64_t j = j0;
  for (; j + kLanes <= j1; j += kLanes) {
    for (int q = 0; q < kLanes; ++q) lane[q] = a[j + q] < lane[q] ? a[j + q] : lane[q];
  }
  for (; j < j1; ++j) lane[0] = a[j] < lane[0] ? a[j] : lane[0];
  A lo = lane[0];
  for (int q = 1; q < kLanes; ++q) lo = lane[q] < lo ? lane[q] : lo;
  return lo;
}

template <typename T, typename A>
void refine(const T* x, int64_t m, int64_t d, const T* c, int64_t k, const A* approx,
            const double* slack, int64_t first, int64_t* out, int threads,
            const std::function<bool()>& interrupted) {
  const int64_t rows = 256;  // points between two polls of Ctrl-C
  for (int64_t r0 = 0; r0 < m; r0 += rows) {
    if (interrupted && interrupted()) throw Interrupted();
    const int64_t r1 = std::min(m, r0 + rows);
#pragma omp parallel num_threads(threads)
    {
      std::vector<double> xd(static_cast<size_t>(d)), dist;
      std::vector<T> block;  // scratch of gathered_distances
      std::vector<int64_t> cand;
#pragma omp for schedule(static)
      for (int64_t i = r0; i < r1; ++i) {
        const A* a = approx + i * k;
        const double thr = static_cast<double>(run_min(a, 0, k)) + 2.0 * slack[i];
        if (!(thr < std::numeric_limits<double>::infinity())) {  // every center skipped
          out[i] = first;
          continue;
        }
        cand.clear();  // ascending, so that a tie keeps the smaller index
        for (int64_t j0 = 0; j0 < k; j0 += kRun) {
          const int64_t j1 = std::min(k, j0 + kRun);
          if (static_cast<double>(run_min(a, j0, j1)) > thr) continue;
          for (int64_t j = j0; j < j1; ++j) {
            if (static_cast<double>(a[j]) <= thr) cand.push_back(j);
          }
        }
        for (int64_t t = 0; t < d; ++t) xd[t] = static_cast<double>(x[i * d + t]);
        const int64_t nc = static_cast<int64_t>(cand.size());
        dist.resize(static_cast<size_t>(nc));
        gathered_distances(xd.data(), c, d, cand.data(), nc, block, dist.data());
        double best = std::numeric_limits<double>::infinity();
        int64_t arg = -1;
        for (int64_t q = 0; q < nc; ++q) {
          if (dist[q] < best) {
            best = dist[q];
            arg = cand[q];
          }
        }
        out[i] = arg >= 0 ? arg : first;
      }
    }
  }
}

// The draw of a seeding step: cand[t] = searchsorted(cum, u[t] * total, right=True) over
// the cumulative sum of D^2 (cum: scratch of n), clamped to the last point.
inline void draw(const std::vector<double>& closest, const double* u, std::vector<double>& cum,
                 std::vector<int64_t>& cand) {
  const int64_t n = static_cast<int64_t>(closest.size());
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) cum[i] = (total += closest[i]);
  for (size_t t = 0; t < cand.size(); ++t) {
    const double target = u[t] * total;
    const int64_t at = std::upper_bound(cum.begin(), cum.end(), target) - cum.begin();
    cand[t] = std::min(at, n - 1);
  }
}

// The candidate of the smallest potential, its blocks' partial sums (part[b * trials + t])
// added in block order; ties to the first.
inline int64_t smallest_potential(const std::vector<double>& part, int64_t chunks,
                                  int64_t trials) {
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
  return best;
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
    draw(closest, &u[(c - 1) * trials], cum, cand);
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
    const int64_t best = smallest_potential(part, chunks, trials);
    idx[c] = cand[best];
    update(cand[best], false);
  }
}

// The seeding of kmeanspp_scan, with each candidate's distances to the points first
// approximated from float32 dot products of the rows shifted by their mean (float_dots.h:
// a = |xs_i|^2 + |cs|^2 - 2 xs_i.cs, within product_scale(d) (|xs_i| + |cs|)^2 of the scan's
// distance, in the frame's units, plus the frame's floor).  A point whose a exceeds its D^2
// by more than that slack keeps D^2 in the candidate's potential, as the scan's
// min(D^2, distance) would; the others get the scan's distance (gathered_distances), and the
// potentials are summed as the scan sums them: the same seeds.  The points are packed in
// panels of 8 (coordinate-major), so that a block's products with all the draw's candidates
// come from dot_packed (each coordinate of a candidate broadcast against the panels, no
// horizontal sums), and a block's points are read once per draw: in half precision where
// the compiler targets F16C (S = uint16_t, float_dots.h; DCPE_CPU_HALF=0 keeps float32),
// which halves the memory a draw reads, the pass's bound, at the price of a slack of
// 2 e_i |cs| more per pair (e_i: the row's measured error).
template <typename S, typename T>
void kmeanspp_product(const T* x, int64_t n, int64_t d, int64_t k, int64_t first,
                      const double* u, int64_t trials, int64_t* idx, int threads,
                      const std::function<bool()>& interrupted) {
  const int64_t dp = padded_dim(d);
  std::vector<double> mean = row_mean(x, n, d);
  const double top = max_shifted_norm(x, n, d, mean.data(), threads);
  const ProductFrame frame = product_frame(std::move(mean), top, d);
  std::vector<S> packed;  // the points, panels of 8
  std::vector<double> sq, err, norm(static_cast<size_t>(n));  // err: 0 in float32
  shift_rows_packed(x, n, d, frame, packed, sq, threads, &err);
  for (int64_t i = 0; i < n; ++i) norm[i] = std::sqrt(sq[i]);
  // a pair's slack beyond scale (|xs| + e + |cs|)^2: 2 e |cs|, rounded up
  const double twice = 2.0 * (1.0 + std::ldexp(1.0, -20));
  const double scale = product_scale(d), unit = frame.unit, floor = frame.floor;
  const int64_t chunks = (n + kBlock - 1) / kBlock;
  std::vector<double> closest(static_cast<size_t>(n)), cum(static_cast<size_t>(n));
  std::vector<double> part(static_cast<size_t>(chunks * trials));
  std::vector<int64_t> cand(static_cast<size_t>(trials));
  std::vector<float> cs(static_cast<size_t>(trials * dp));
  std::vector<double> cd(static_cast<size_t>(trials * d)), csq(static_cast<size_t>(trials)),
      cnorm(static_cast<size_t>(trials));
  // the points each candidate brings closer, with their distances, per thread
  std::vector<std::vector<std::vector<std::pair<int64_t, double>>>> closer(
      static_cast<size_t>(threads));
  {  // the first center's distances as lanes of blocks, as the scan's: a row on its own (a
     // block of one) may round otherwise in this file, which contracts multiply-adds
    std::vector<double> xf(static_cast<size_t>(d));
    for (int64_t t = 0; t < d; ++t) xf[t] = static_cast<double>(x[first * d + t]);
#pragma omp parallel num_threads(threads)
    {
      std::vector<T> block;  // scratch of gathered_distances
      std::vector<int64_t> ids(static_cast<size_t>(kBlock));
#pragma omp for schedule(static)
      for (int64_t b = 0; b < chunks; ++b) {
        const int64_t lo = b * kBlock, len = std::min(kBlock, n - lo);
        for (int64_t q = 0; q < len; ++q) ids[q] = lo + q;
        gathered_distances(xf.data(), x, d, ids.data(), len, block, &closest[lo]);
      }
    }
  }
  idx[0] = first;
  for (int64_t c = 1; c < k; ++c) {
    if ((c & 63) == 0 && interrupted && interrupted()) throw Interrupted();
    draw(closest, &u[(c - 1) * trials], cum, cand);
    for (int64_t t = 0; t < trials; ++t) {
      shift_row(x + cand[t] * d, d, frame, &cs[t * dp]);  // the float32 row, as packed
      for (int64_t q = 0; q < d; ++q) cd[t * d + q] = static_cast<double>(x[cand[t] * d + q]);
      csq[t] = sq[cand[t]];
      cnorm[t] = norm[cand[t]];
    }
    for (auto& mine : closer) {  // every thread's, whether or not it joins this step
      mine.resize(static_cast<size_t>(trials));
      for (auto& list : mine) list.clear();
    }
#pragma omp parallel num_threads(threads)
    {
      auto& mine = closer[static_cast<size_t>(omp_get_thread_num())];
      std::vector<float> dots(static_cast<size_t>(trials * kBlock));  // [t][point in block]
      std::vector<std::vector<int64_t>> hits(static_cast<size_t>(trials));
      std::vector<std::vector<double>> hit_dist(static_cast<size_t>(trials));
      std::vector<T> block;  // scratch of gathered_distances
#pragma omp for schedule(static)
      for (int64_t b = 0; b < chunks; ++b) {
        const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
        // the block's products with the draw's candidates, four panels at a time, each group
        // asking for the panels kAhead further on (the points are read from memory once a draw,
        // and the products outpace the hardware's prefetching)
        const int64_t first_panel = lo / 8, panels = panel_count(hi - lo);
        for (int64_t q = 0; q < panels; q += 4) {
          const size_t ahead = static_cast<size_t>((first_panel + q + kAhead) * dp * 8);
          const size_t stop = std::min(packed.size(), ahead + static_cast<size_t>(4 * dp * 8));
          for (size_t o = ahead; o < stop; o += 16) __builtin_prefetch(&packed[o]);
          dot_packed(cs.data(), trials, &packed[static_cast<size_t>(first_panel * dp * 8)], q,
                     std::min(panels, q + 4), dp, dots.data(), kBlock);
        }
        // the points that the products cannot rule out, per candidate (eight tested at once),
        // and the scan's distances of those pairs: gathered_distances, each a lane of a
        // block of the scan, with its roundings; only the points a candidate brings closer
        // are kept
        for (int64_t t = 0; t < trials; ++t) {
          const float* dt = &dots[static_cast<size_t>(t * kBlock)];
          const double ct_sq = csq[t], ct_norm = cnorm[t];
          auto maybe_closer = [&](int64_t i) {  // the pair's approximation within its slack
            const double r = norm[i] + err[i] + ct_norm;
            const double a = sq[i] + ct_sq - 2.0 * static_cast<double>(dt[i - lo]);
            const double slack = scale * r * r + twice * err[i] * ct_norm;
            return (a - slack) * unit - floor <= closest[i];  // the data's units
          };
          auto& hit = hits[static_cast<size_t>(t)];
          auto& dist = hit_dist[static_cast<size_t>(t)];
          hit.clear();
          for (int64_t i0 = lo; i0 < hi; i0 += 8) {
            const int64_t i1 = std::min(hi, i0 + 8);
            bool any = false;
            if (i1 - i0 == 8) {  // a fixed count, so that the tests are vectorised
              for (int64_t i = i0; i < i0 + 8; ++i) any |= maybe_closer(i);
            } else {
              for (int64_t i = i0; i < i1; ++i) any |= maybe_closer(i);
            }
            if (!any) continue;
            for (int64_t i = i0; i < i1; ++i) {
              if (maybe_closer(i)) hit.push_back(i);
            }
          }
          const int64_t found = static_cast<int64_t>(hit.size());
          dist.resize(static_cast<size_t>(found));
          if (found > 0) gathered_distances(&cd[t * d], x, d, hit.data(), found, block, dist.data());
          int64_t kept = 0;
          for (int64_t q = 0; q < found; ++q) {
            if (dist[q] < closest[hit[q]]) {
              hit[kept] = hit[q];
              dist[kept] = dist[q];
              mine[static_cast<size_t>(t)].emplace_back(hit[q], dist[q]);
              ++kept;
            }
          }
          hit.resize(static_cast<size_t>(kept));
        }
        // each candidate's potential over the block: min(D^2, distance) summed over the
        // points in order, as the scan sums it; a candidate that brings no point closer
        // has the sum of D^2, computed once
        double base = 0.0;
        bool base_done = false;
        for (int64_t t = 0; t < trials; ++t) {
          const auto& hit = hits[static_cast<size_t>(t)];
          const auto& dist = hit_dist[static_cast<size_t>(t)];
          if (hit.empty()) {
            if (!base_done) {
              for (int64_t i = lo; i < hi; ++i) base += closest[i];
              base_done = true;
            }
            part[b * trials + t] = base;
            continue;
          }
          double pot = 0.0;
          size_t q = 0;
          for (int64_t i = lo; i < hi; ++i) {
            if (q < hit.size() && hit[q] == i) {
              pot += dist[q++];
            } else {
              pot += closest[i];
            }
          }
          part[b * trials + t] = pot;
        }
      }
    }
    const int64_t best = smallest_potential(part, chunks, trials);
    idx[c] = cand[best];
    for (const auto& mine : closer) {
      for (const auto& [i, e] : mine[static_cast<size_t>(best)]) closest[i] = e;
    }
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

template <typename T, typename A>
void nearest_center_refine(const T* x, int64_t m, int64_t d, const T* c, int64_t k,
                           const A* approx, const double* slack, int64_t first,
                           int64_t* out, int threads, const std::function<bool()>& interrupted) {
  refine(x, m, d, c, k, approx, slack, first, out, threads, interrupted);
}

template <typename T>
void nearest_center_among(const T* x, int64_t m, int64_t d, const T* c, const int64_t* cand,
                          int64_t r, int64_t* out, double* out_dist, int threads,
                          const std::function<bool()>& interrupted) {
  const int64_t rows = 1024;  // points between two polls of Ctrl-C
  for (int64_t r0 = 0; r0 < m; r0 += rows) {
    if (interrupted && interrupted()) throw Interrupted();
    const int64_t r1 = std::min(m, r0 + rows);
#pragma omp parallel num_threads(threads)
    {
      std::vector<double> xd(static_cast<size_t>(d)), dist(static_cast<size_t>(r));
      std::vector<T> block;  // scratch of gathered_distances
#pragma omp for schedule(static)
      for (int64_t i = r0; i < r1; ++i) {
        for (int64_t t = 0; t < d; ++t) xd[t] = static_cast<double>(x[i * d + t]);
        const int64_t* ci = cand + i * r;
        gathered_distances(xd.data(), c, d, ci, r, block, dist.data());
        double best = dist[0];
        int64_t arg = ci[0];
        for (int64_t q = 1; q < r; ++q) {
          if (dist[q] < best || (dist[q] == best && ci[q] < arg)) {
            best = dist[q];
            arg = ci[q];
          }
        }
        out[i] = arg;
        out_dist[i] = best;
      }
    }
  }
}

template <typename T>
void kmeanspp_seeds_scan(const T* x, int64_t n, int64_t d, int64_t k, int64_t first,
                         const double* u, int64_t trials, int64_t* idx, int threads,
                         const std::function<bool()>& interrupted) {
  if (d > 16 && switched_on("DCPE_CPU_PRODUCTS")) {
#if defined(DCPE_HALF_PANELS)
    if (switched_on("DCPE_CPU_HALF")) {
      kmeanspp_product<uint16_t>(x, n, d, k, first, u, trials, idx, threads, interrupted);
      return;
    }
#endif
    kmeanspp_product<float>(x, n, d, k, first, u, trials, idx, threads, interrupted);
    return;
  }
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
#define DCPE_REFINE(T, A)                                                                 \
  template void nearest_center_refine<T, A>(const T*, int64_t, int64_t, const T*, int64_t, \
                                            const A*, const double*, int64_t, int64_t*, int, \
                                            const std::function<bool()>&);
DCPE_REFINE(float, float)
DCPE_REFINE(float, double)
DCPE_REFINE(double, double)
#undef DCPE_REFINE
template void nearest_center_among<float>(const float*, int64_t, int64_t, const float*,
                                          const int64_t*, int64_t, int64_t*, double*, int,
                                          const std::function<bool()>&);
template void nearest_center_among<double>(const double*, int64_t, int64_t, const double*,
                                           const int64_t*, int64_t, int64_t*, double*, int,
                                           const std::function<bool()>&);
template void kmeanspp_seeds_scan<float>(const float*, int64_t, int64_t, int64_t, int64_t,
                                         const double*, int64_t, int64_t*, int,
                                         const std::function<bool()>&);
template void kmeanspp_seeds_scan<double>(const double*, int64_t, int64_t, int64_t, int64_t,
                                          const double*, int64_t, int64_t*, int,
                                          const std::function<bool()>&);

}  // namespace dcpe
