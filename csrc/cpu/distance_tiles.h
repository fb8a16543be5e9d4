// Register-tiled token distances: a few tokens (the rows of a tile) against a run of
// tokens (its columns), every coordinate difference computed directly (no Gram-matrix
// form, so no cancellation when tokens are close).
//
// The value of a pair (x, y) in dimension d is fixed by this order of operations, each one
// rounded to T on its own:
//   s = (y_0 - x_0)^2;  s += (y_k - x_k)^2 for k = 1, ..., d - 1 in order;
//   then sqrt(s) (euclidean), s * 0.5 (cosine, on unit rows) or s (sqeuclidean).
// No fused multiply-add, no reassociation. The value therefore does not depend on the
// pair's place in a tile (vector lane or tail), on which of the two tokens is the row
// ((a - b)^2 == (b - a)^2 exactly) or on the instruction set, and it equals the one of a
// plain loop over the coordinates, which the GPU kernels also follow.
//
// The kernel is the inner block of a matrix product [Goto and van de Geijn, "Anatomy of
// high-performance matrix multiplication", ACM TOMS 34(3), 2008] with the multiply-add
// replaced by the difference, square and add above: an R x C tile of sums (R rows, C = two
// SIMD vectors of columns) stays in registers for the whole loop over the coordinates,
// which reads per step one coordinate of the C column tokens (two vector loads) and of the
// R row tokens (R broadcasts). Streaming one row over the coordinates instead re-reads and
// re-writes its output row once per coordinate. Tiles are 8 x 32 (float) and 8 x 16
// (double) with AVX-512, 4 x 16 and 4 x 8 with AVX2, 4 x 8 in portable C++.
//
// A compiler allowed to contract would fuse a square with the following add into an FMA:
// the SIMD paths keep them apart with an empty asm statement; a source that includes this
// header is compiled with -ffp-contract=off for the portable path (see CMakeLists.txt).
//
// Layout: the column tokens are stored in panels of W = kDistancePanel<T> tokens (one tile
// wide), each panel d rows of W values, so that a tile reads one contiguous block front to
// back. (With plain transposed coordinates, d x n, the d values a tile reads per column
// would lie n elements apart: at large n all in the same cache set, each on its own page.)
// The row tokens are read transposed, coordinate k of row r at a[k * lda + r].
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/linkage_cpu.h"

namespace dcpe {
namespace tiles {

// One instruction set's vectors of T: loads, arithmetic, stores (full and masked).
template <typename T>
struct Simd;

#if defined(__AVX512F__)
template <>
struct Simd<float> {
  using V = __m512;
  using M = __mmask16;
  static constexpr int kLanes = 16, kRows = 8;
  static M mask(int64_t count) {
    return count >= kLanes ? M(0xFFFF) : count <= 0 ? M(0) : M((1u << count) - 1u);
  }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, V v, M m) { _mm512_mask_storeu_ps(p, m, v); }
  static V set1(float v) { return _mm512_set1_ps(v); }
  static V zero() { return _mm512_setzero_ps(); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  // (the zero-masked form: the plain one makes GCC 12 warn about its undefined source)
  static V sqrt(V a) { return _mm512_maskz_sqrt_ps(M(0xFFFF), a); }
};
template <>
struct Simd<double> {
  using V = __m512d;
  using M = __mmask8;
  static constexpr int kLanes = 8, kRows = 8;
  static M mask(int64_t count) {
    return count >= kLanes ? M(0xFF) : count <= 0 ? M(0) : M((1u << count) - 1u);
  }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static void store(double* p, V v, M m) { _mm512_mask_storeu_pd(p, m, v); }
  static V set1(double v) { return _mm512_set1_pd(v); }
  static V zero() { return _mm512_setzero_pd(); }
  static V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V sqrt(V a) { return _mm512_maskz_sqrt_pd(M(0xFF), a); }
};
#define DCPE_DISTANCE_TILES_SIMD 512
#elif defined(__AVX2__)
template <>
struct Simd<float> {
  using V = __m256;
  using M = __m256i;
  static constexpr int kLanes = 8, kRows = 4;
  static M mask(int64_t count) {
    const int c = static_cast<int>(std::clamp<int64_t>(count, 0, kLanes));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store(float* p, V v, M m) { _mm256_maskstore_ps(p, m, v); }
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V zero() { return _mm256_setzero_ps(); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sqrt(V a) { return _mm256_sqrt_ps(a); }
};
template <>
struct Simd<double> {
  using V = __m256d;
  using M = __m256i;
  static constexpr int kLanes = 4, kRows = 4;
  static M mask(int64_t count) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(std::clamp<int64_t>(count, 0, kLanes)),
                              _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static void store(double* p, V v, M m) { _mm256_maskstore_pd(p, m, v); }
  static V set1(double v) { return _mm256_set1_pd(v); }
  static V zero() { return _mm256_setzero_pd(); }
  static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V sqrt(V a) { return _mm256_sqrt_pd(a); }
};
#define DCPE_DISTANCE_TILES_SIMD 256
#endif

#if defined(DCPE_DISTANCE_TILES_SIMD)
// The square stays a separately rounded value: the compiler cannot see through the asm,
// so it cannot fuse the multiply into the following add.
template <typename V>
inline V keep_rounded(V v) {
  asm("" : "+v"(v));
  return v;
}

template <typename T>
constexpr int kTileRows = Simd<T>::kRows;
template <typename T>
constexpr int kPanel = 2 * Simd<T>::kLanes;

// One R x kPanel tile: the columns of one panel (p: its d x kPanel values), written to
// out[r * ldo + c] for c < cols (all of them when kTail is false).
template <typename T, int R, bool kTail>
inline void panel_tile(const T* __restrict a, int64_t lda, const T* __restrict p, int64_t d,
                       Metric metric, T* __restrict out, int64_t ldo, int64_t cols) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int L = S::kLanes;
  V acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) {
    acc0[r] = S::zero();  // 0 + s == s exactly for s >= 0: the first step is s = (.)^2
    acc1[r] = S::zero();
  }
  for (int64_t k = 0; k < d; ++k) {
    const V y0 = S::load(p + k * 2 * L);
    const V y1 = S::load(p + k * 2 * L + L);
    const T* ak = a + k * lda;
    for (int r = 0; r < R; ++r) {
      const V xr = S::set1(ak[r]);
      const V t0 = S::sub(y0, xr);
      const V t1 = S::sub(y1, xr);
      acc0[r] = S::add(acc0[r], keep_rounded(S::mul(t0, t0)));
      acc1[r] = S::add(acc1[r], keep_rounded(S::mul(t1, t1)));
    }
  }
  const V half = S::set1(T(0.5));
  const typename S::M m0 = S::mask(cols), m1 = S::mask(cols - L);
  for (int r = 0; r < R; ++r) {
    V v0 = acc0[r], v1 = acc1[r];
    if (metric == Metric::Euclidean) {
      v0 = S::sqrt(v0);
      v1 = S::sqrt(v1);
    } else if (metric == Metric::Cosine) {
      v0 = S::mul(v0, half);
      v1 = S::mul(v1, half);
    }
    T* o = out + r * ldo;
    if (kTail) {
      S::store(o, v0, m0);
      S::store(o + L, v1, m1);
    } else {
      S::store(o, v0);
      S::store(o + L, v1);
    }
  }
}
#else
template <typename T>
constexpr int kTileRows = 4;
template <typename T>
constexpr int kPanel = 8;

// Portable tile: R x kPanel sums in a local array that the compiler keeps in registers.
template <typename T, int R, bool kTail>
inline void panel_tile(const T* __restrict a, int64_t lda, const T* __restrict p, int64_t d,
                       Metric metric, T* __restrict out, int64_t ldo, int64_t cols) {
  constexpr int C = kPanel<T>;
  T acc[R][C] = {};
  for (int64_t k = 0; k < d; ++k) {
    const T* yk = p + k * C;
    for (int r = 0; r < R; ++r) {
      const T xr = a[k * lda + r];
      for (int c = 0; c < C; ++c) {
        const T t = yk[c] - xr;
        acc[r][c] += t * t;
      }
    }
  }
  const int n_cols = kTail ? static_cast<int>(cols) : C;
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < n_cols; ++c) {
      const T s = acc[r][c];
      out[r * ldo + c] = metric == Metric::Euclidean ? std::sqrt(s)
                         : metric == Metric::Cosine  ? s * T(0.5)
                                                     : s;
    }
  }
}
#endif

template <typename T, int R>
inline void tile_rows(const T* a, int64_t lda, const T* panels, int64_t d, int64_t len,
                      Metric metric, T* out, int64_t ldo) {
  constexpr int C = kPanel<T>;
  int64_t j = 0;
  for (; j + C <= len; j += C) {
    panel_tile<T, R, false>(a, lda, panels + j * d, d, metric, out + j, ldo, C);
  }
  if (j < len) panel_tile<T, R, true>(a, lda, panels + j * d, d, metric, out + j, ldo, len - j);
}

}  // namespace tiles

// Tokens in column panels: panel q holds tokens [q * W, q * W + W), W = kDistancePanel<T>,
// as d rows of W values, so coordinate k of token j is at panel_offset<T>(j, k, d) and a
// tile reads each panel front to back. The last panel is padded to W tokens (the padding
// is read, its results are never stored).
template <typename T>
constexpr int kDistancePanel = tiles::kPanel<T>;

// At most this many row tokens per distance_rows() call.
template <typename T>
constexpr int kDistanceTileRows = tiles::kTileRows<T>;

template <typename T>
inline std::size_t panel_elems(int64_t n, int64_t d) {
  constexpr int64_t W = kDistancePanel<T>;
  return static_cast<std::size_t>((n + W - 1) / W * W) * static_cast<std::size_t>(d);
}

template <typename T>
inline std::size_t panel_offset(int64_t j, int64_t k, int64_t d) {
  constexpr int64_t W = kDistancePanel<T>;
  return static_cast<std::size_t>((j / W) * W * d + k * W + j % W);
}

// The coordinates of tokens first .. first + rows - 1 of `panels`, transposed into
// buf[k * rows + r] (the row layout distance_rows() reads with lda = rows).
template <typename T>
inline void pack_rows(const T* panels, int64_t d, int64_t first, int rows, T* buf) {
  for (int r = 0; r < rows; ++r) {
    const T* src = panels + panel_offset<T>(first + r, 0, d);
    for (int64_t k = 0; k < d; ++k) buf[k * rows + r] = src[k * kDistancePanel<T>];
  }
}

// out[r * ldo + j] = dissimilarity of row token r and token j of `panels`, for r < rows
// (1 <= rows <= kDistanceTileRows<T>) and j < len. Coordinate k of row token r is at
// a[k * lda + r]: pack_rows() output, or, for rows that share a panel, a pointer into it
// (a = panels + panel_offset<T>(first, 0, d), lda = kDistancePanel<T>). out holds rows x len
// values with stride ldo >= len; nothing past column len - 1 is written.
template <typename T>
inline void distance_rows(const T* a, int64_t lda, int rows, const T* panels, int64_t d,
                          int64_t len, Metric metric, T* out, int64_t ldo) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "float or double");
  if (len <= 0) return;
  switch (rows) {
#define DCPE_TILE_CASE(R)                                                   \
  case R:                                                                   \
    if constexpr (R <= kDistanceTileRows<T>) {                              \
      tiles::tile_rows<T, R>(a, lda, panels, d, len, metric, out, ldo);     \
    }                                                                       \
    break;
    DCPE_TILE_CASE(1)
    DCPE_TILE_CASE(2)
    DCPE_TILE_CASE(3)
    DCPE_TILE_CASE(4)
    DCPE_TILE_CASE(5)
    DCPE_TILE_CASE(6)
    DCPE_TILE_CASE(7)
    DCPE_TILE_CASE(8)
#undef DCPE_TILE_CASE
    default:
      break;
  }
}

}  // namespace dcpe
