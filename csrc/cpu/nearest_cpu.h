// Nearest center of every point (the assignment step of Lloyd's k-means), exactly: squared
// distances from coordinate differences in double precision (no |x|^2 + |c|^2 - 2 x.c
// cancellation), ties to the smallest center index; and greedy k-means++ seeding.
#pragma once

#include <cstdint>
#include <functional>

namespace dcpe {

// x: (n, d) row-major, c: (k, d) row-major; mask: (k,) or nullptr (centers with mask 0 are
// skipped; at least one must be usable); out: (n,) center indices.
template <typename T>
void nearest_center(const T* x, int64_t n, int64_t d, const T* c, int64_t k,
                    const uint8_t* mask, int64_t* out, int num_threads,
                    const std::function<bool()>& interrupted);

// Greedy k-means++ seeding [Arthur & Vassilvitskii 2007; the greedy variant of
// scikit-learn]: idx[0] = first; then for c = 1..k-1, `trials` candidates are drawn with
// probability proportional to D^2 (the squared distance to the nearest chosen row), by
// inverting the cumulative sum at u[(c - 1) * trials + t] * total, and the candidate that
// lowers the potential sum_i min(D_i^2, |x_i - x_cand|^2) most is kept (ties: first).
// Distances from differences in double; sums over fixed chunks of points added in order,
// so the result does not depend on the thread count.  u: (k - 1) * trials uniforms in
// [0, 1).  idx: (k,) out.
template <typename T>
void kmeanspp_seeds(const T* x, int64_t n, int64_t d, int64_t k, int64_t first,
                    const double* u, int64_t trials, int64_t* idx, int num_threads,
                    const std::function<bool()>& interrupted);

}  // namespace dcpe
