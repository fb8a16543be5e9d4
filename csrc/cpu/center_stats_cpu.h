// The two per-step statistics of k-means around the nearest-center search: each point's
// squared distance to its own center, and the per-cluster sums of the points (the center
// step).  Each gives, bit for bit, what dcpe.baselines computes with PyTorch on other
// devices, so that a step's decisions do not depend on which of the two ran.
#pragma once

#include <cstdint>

namespace dcpe {

// out[i] = |x_i - c_{labels[i]}|^2 in double: the coordinate differences of the values
// converted to double, each squared and rounded, added in coordinate order from the first
// square (no fused multiply-add), as baselines._sequential_sq_dist.  labels: in [0, k).
// Points run in parallel; the result does not depend on the thread count.
template <typename T>
void paired_sq_distances(const T* x, int64_t n, int64_t d, const T* c,
                         const int64_t* labels, double* out, int num_threads);

// The per-cluster sums of baselines._segment_sums: the rows in the order of a stable sort
// by label, their running sum P (double, P_0 = +0, each coordinate added in that order as
// torch.cumsum adds on the host, from +0.0), and sums[j] = P[end_j] - P[start_j], where cluster j
// holds sorted rows [start_j, end_j); counts[j] = end_j - start_j.  labels: in [0, k).
// sums: (k, d) double, counts: (k) int64.  Columns run in parallel; the result does not
// depend on the thread count.
template <typename T>
void segment_sums(const T* x, int64_t n, int64_t d, const int64_t* labels, int64_t k,
                  double* sums, int64_t* counts, int num_threads);

}  // namespace dcpe
