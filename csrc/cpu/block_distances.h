// Squared distances from one point to a block of rows stored transposed, in double, and the
// dispatch that fixes the usual codebook dimensions at compile time.  Shared by the
// nearest-center scan, the k-means++ seeding (nearest_cpu.cpp) and the balanced
// assignment (balanced_assign_cpu.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace dcpe {

// acc[j] = |xd - c_(j0 + j)|^2 for j < len, where ct holds the rows transposed (d x k, the
// input type) and xd is the point in double: coordinate differences in double, summed over
// the coordinates in order.  D > 0 fixes the dimension at compile time (a row's sum stays
// in a register); D = 0 takes any d (the block's partial sums stay in acc, in L1).
template <int D, typename T>
inline void block_distances(const double* xd, const T* ct, int64_t k, int64_t d, int64_t j0,
                            int64_t len, double* acc) {
  if (D > 0) {
    for (int64_t j = 0; j < len; ++j) {
      double s = 0.0;
      for (int t = 0; t < D; ++t) {
        const double diff = xd[t] - static_cast<double>(ct[t * k + j0 + j]);
        s += diff * diff;
      }
      acc[j] = s;
    }
    return;
  }
  std::fill(acc, acc + len, 0.0);
  for (int64_t t = 0; t < d; ++t) {
    const T* row = ct + t * k + j0;
    for (int64_t j = 0; j < len; ++j) {
      const double diff = xd[t] - static_cast<double>(row[j]);
      acc[j] += diff * diff;
    }
  }
}

// f(std::integral_constant<int, D>{}) with D = d for the dimensions 4, 8 and 16, else D = 0.
template <typename F>
inline void with_dimension(int64_t d, F&& f) {
  switch (d) {
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

}  // namespace dcpe
