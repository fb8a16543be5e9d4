// For every point, the sum of its Euclidean distances to the members of its cluster: the
// statistic behind dcpe.report.coherence and dcpe.sweep (expected distance to a random
// member of one's cluster).
#pragma once

#include <cstdint>
#include <functional>

namespace dcpe {

// x: (n, d) float64, row-major, with each cluster's members contiguous; offsets: (k + 1),
// offsets[0] = 0 <= ... <= offsets[k] = n, cluster c = rows [offsets[c], offsets[c + 1]).
// out[i] = sum over the members j of i's cluster (i itself included, at distance 0) of
// |x_i - x_j|, each distance from coordinate differences in double.  The result does not
// depend on the thread count.  Memory: a copy of a task's members (128 KiB) per thread, and
// column sums of at most max(8 MiB, min(4 * threads * largest cluster * 8 bytes, 256 MiB))
// beside n doubles.
void member_distance_sums(const double* x, int64_t n, int64_t d, const int64_t* offsets,
                          int64_t k, double* out, int num_threads,
                          const std::function<bool()>& interrupted);

}  // namespace dcpe
