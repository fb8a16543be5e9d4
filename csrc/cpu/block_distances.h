// Squared distances from one point to a block of rows stored transposed, in double, and the
// dispatch that fixes the usual codebook dimensions at compile time.  Shared by the
// nearest-center scan, the k-means++ seeding (nearest_cpu.cpp) and the balanced
// assignment (balanced_assign_cpu.cpp); gathered_distances computes them for rows picked
// anywhere in a matrix (the refinements of nearest_scan_cpu.cpp and balanced_assign_cpu.cpp).
#pragma once

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace dcpe {
// Internal linkage: the sources that include this header are compiled with and without
// floating-point contraction (CMakeLists.txt), and each must keep its own copies; an inline
// function with external linkage is one copy for the whole module, taken from any of them.
namespace {

// acc[j] = |xd - c_(j0 + j)|^2 for j < len, where ct holds the rows transposed (d x k, the
// input type) and xd is the point in double: coordinate differences in double, summed over
// the coordinates in order.  D > 0 fixes the dimension at compile time (a row's sum stays
// in a register); D = 0 takes any d (the block's partial sums stay in acc, in L1).
template <int D, typename T>
inline void block_distances(const double* xd, const T* ct, int64_t k, int64_t d, int64_t j0,
                            int64_t len, double* acc) {
  if (D > 0) {
    // The point in registers, and one lane per row (each lane's sum stays in coordinate
    // order): acc may be any double array, so without both the compiler reloads xd at every
    // row and does not vectorise across rows.
    double xl[D > 0 ? D : 1];
    for (int t = 0; t < D; ++t) xl[t] = xd[t];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      double s = 0.0;
      for (int t = 0; t < D; ++t) {
        const double diff = xl[t] - static_cast<double>(ct[t * k + j0 + j]);
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

// block (d x len, len a multiple of 8) = the rows rp[0..len) transposed
template <typename T>
inline void transpose_rows(const T* const* rp, int64_t len, int64_t d, T* block) {
  int64_t t0 = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {  // 8 x 8 tiles in registers
    for (; t0 + 8 <= d; t0 += 8) {
      for (int64_t q = 0; q < len; q += 8) {
        __m256 r[8], u[8], v[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rp[q + i] + t0);
        for (int i = 0; i < 8; i += 2) {
          u[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
          u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int h = 0; h < 8; h += 4) {
          v[h] = _mm256_shuffle_ps(u[h], u[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
          v[h + 1] = _mm256_shuffle_ps(u[h], u[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
          v[h + 2] = _mm256_shuffle_ps(u[h + 1], u[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
          v[h + 3] = _mm256_shuffle_ps(u[h + 1], u[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        for (int i = 0; i < 4; ++i) {
          _mm256_storeu_ps(block + (t0 + i) * len + q,
                           _mm256_permute2f128_ps(v[i], v[i + 4], 0x20));
          _mm256_storeu_ps(block + (t0 + i + 4) * len + q,
                           _mm256_permute2f128_ps(v[i], v[i + 4], 0x31));
        }
      }
    }
  }
#endif
  for (int64_t q = 0; q < len; ++q) {
    for (int64_t t = t0; t < d; ++t) block[t * len + q] = rp[q][t];
  }
}

// out[q] = |xd - c_(ids[q])|^2 for q < count (c: the rows, row-major n x d): the rows are
// gathered in small blocks (in L1), transposed and passed to block_distances, so each
// distance has the same operations in the same order as a lane of a scan's block over all
// rows, and rounds alike (a block is padded to a multiple of 8 rows with copies of its
// first, whose lanes are dropped).  block: scratch.
template <typename T, typename I>
void gathered_distances(const double* xd, const T* c, int64_t d, const I* ids, int64_t count,
                        std::vector<T>& block, double* out) {
  const int64_t rows =
      std::clamp<int64_t>(16384 / (d * static_cast<int64_t>(sizeof(T))), 8, 64) / 8 * 8;
  block.resize(static_cast<size_t>(rows * d));
  const T* rp[64];
  double acc[64];
  for (int64_t q0 = 0; q0 < count; q0 += rows) {
    const int64_t len = std::min(rows, count - q0), padded = (len + 7) / 8 * 8;
    for (int64_t q = 0; q < padded; ++q) {
      rp[q] = c + static_cast<int64_t>(ids[q0 + (q < len ? q : 0)]) * d;
    }
    transpose_rows(rp, padded, d, block.data());
    with_dimension(d, [&](auto D) {
      block_distances<D.value>(xd, block.data(), padded, d, 0, padded, acc);
    });
    std::copy(acc, acc + len, out + q0);
  }
}

}  // namespace
}  // namespace dcpe
