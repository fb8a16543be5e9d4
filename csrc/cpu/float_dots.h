// Float32 dot products of rows shifted by a mean, as approximate squared distances with a
// proven error bound.  Shared by the k-means++ seeding (nearest_scan_cpu.cpp) and the
// balanced assignment's candidate lists (balanced_assign_cpu.cpp): both use them only to
// rule pairs out, and compute the pairs that are left by block_distances in double.
//
// The frame.  Rows are shifted by a mean in double, scaled by a power of two f that brings
// the largest shifted row to a norm in [1, 2), and rounded to float32 (unit roundoff
// u = 2^-24): xs = fl((x - mean) f), padded with zeros to a multiple of 8, with |xs|^2 summed
// in double.  The scaling is exact; it keeps the products of any data (float64 codebooks of
// norm 1e-100 or 1e100 included) inside float32's normal range, where the relative bound
// below holds.  Results are brought back to the data's units by the exact factor 1 / f^2
// (ProductFrame::unit).
//
// The bound (in the frame's units).  a = |xs|^2 + |cs|^2 - 2 fl(xs.cs) is within
// (d + 2) u (|xs| + |cs|)^2 of |xs - cs|^2 (the float32 sum, in at most d terms, and its
// use); the shift's rounding moves the squared distance by at most 2 u (|xs| + |cs|)^2; and
// block_distances' double distance is within (d + 2) 2^-53 of the exact one.  The slack
// product_scale(d) (|xs| + |cs|)^2 = 4 (d + 4) u (|xs| + |cs|)^2 is more than twice their
// sum, which covers the roundings of the bound itself.  Coordinates or products that fall
// below float32's normal range (a row far smaller than the largest) add at most 2^-149 each
// instead: ProductFrame::floor, (16 dp + 64) 2^-149 in the frame's units (with |xs| <= 2, the
// shift's share is at most 8 sqrt(d) 2^-149, the products' dp 2^-149), adds them.
//
// Half-precision panels (where the compiler targets F16C).  Rows that are read far more
// often than they are written (the points of the k-means++ seeding, read once a draw) may be
// stored in IEEE half precision, which halves the memory a pass reads: xh = half(xs), with
// the coordinates below 2^-14 stored as 0 (so that no half is subnormal), and widened to
// float32 exactly by the products.  The rows' own error e = |xh - xs| is measured when they
// are packed (store_row: in double, from the stored halves), not assumed, so that no
// rounding or flushing mode can break the bound: xh.cs is within e |cs| of xs.cs, and the
// pair's slack becomes product_scale(d) (|xs| + e + |cs|)^2 + 2 e |cs| (1 + 2^-20).
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define DCPE_HALF_PANELS 1
#endif

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace dcpe {

constexpr int kDotLanes = 8;  // float32 lanes of a vector: rows are padded to a multiple

// d padded to a multiple of kDotLanes
inline int64_t padded_dim(int64_t d) { return (d + kDotLanes - 1) / kDotLanes * kDotLanes; }

// the slack of a pair, per (|xs| + |cs|)^2 (see the header comment)
inline double product_scale(int64_t d) {
  return 4.0 * static_cast<double>(d + 4) * std::ldexp(1.0, -24);
}

// The frame of a set of rows (see the header comment): the mean they are shifted by, the
// power of two f they are scaled by, the factor 1 / f^2 back to the data's units, and the
// absolute part of a pair's slack in the data's units.
struct ProductFrame {
  std::vector<double> mean;
  double factor = 1.0;
  double unit = 1.0;
  double floor = 0.0;
};

// the mean of the n rows of x, in double
template <typename T>
std::vector<double> row_mean(const T* x, int64_t n, int64_t d) {
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < d; ++t) mean[t] += static_cast<double>(x[i * d + t]);
  }
  for (int64_t t = 0; t < d; ++t) mean[t] /= static_cast<double>(n);
  return mean;
}

// max_i |x_i - mean| over the n rows of x, in double
template <typename T>
double max_shifted_norm(const T* x, int64_t n, int64_t d, const double* mean, int threads) {
  double top = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : top)
  for (int64_t i = 0; i < n; ++i) {
    double s = 0.0;
    for (int64_t t = 0; t < d; ++t) {
      const double v = static_cast<double>(x[i * d + t]) - mean[t];
      s += v * v;
    }
    top = std::max(top, s);
  }
  return std::sqrt(top);
}

// The frame of rows shifted by mean whose largest shifted norm is top (finite).
inline ProductFrame product_frame(std::vector<double> mean, double top, int64_t d) {
  ProductFrame f;
  f.mean = std::move(mean);
  const int e = top > 0.0 && std::isfinite(top) ? std::ilogb(top) : 0;
  f.factor = std::ldexp(1.0, -e);
  f.unit = std::ldexp(1.0, 2 * e);
  f.floor = std::ldexp(static_cast<double>(16 * padded_dim(d) + 64), 2 * e - 149);
  return f;
}

// xs = fl((x - mean) factor) for one row, padded with zeros to padded_dim(d); returns |xs|^2
// in double (the frame's units)
template <typename T>
inline double shift_row(const T* x, int64_t d, const ProductFrame& f, float* xs) {
  const double* mean = f.mean.data();
  double s = 0.0;
  for (int64_t t = 0; t < d; ++t) {
    const float v = static_cast<float>((static_cast<double>(x[t]) - mean[t]) * f.factor);
    xs[t] = v;
    s += static_cast<double>(v) * static_cast<double>(v);
  }
  for (int64_t t = d; t < padded_dim(d); ++t) xs[t] = 0.0f;
  return s;
}

// Rows packed for dot_packed: panels of 8 rows (the last one padded with zero rows), each
// panel coordinate-major (dp x 8), so that a panel is one contiguous run.
inline int64_t panel_count(int64_t n) { return (n + 7) / 8; }

// xs (dp floats, from shift_row) as stored in packed panels: in float32 as it is (error 0)
inline double store_row(const float* xs, int64_t dp, float* out) {
  std::copy(xs, xs + dp, out);
  return 0.0;
}

#if defined(DCPE_HALF_PANELS)
// ... or in half precision: a coordinate below 2^-14 in magnitude (a subnormal half) is
// stored as 0; returns |half(xs) - xs|, the row's error, measured from the stored halves in
// double and rounded up (see the header)
inline double store_row(const float* xs, int64_t dp, uint16_t* out) {
  const float tiny = std::ldexp(1.0f, -14);
  double e2 = 0.0;
  for (int64_t t = 0; t < dp; ++t) {
    const float v = std::fabs(xs[t]) < tiny ? 0.0f : xs[t];
    const uint16_t h = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    out[t] = h;
    const double diff = static_cast<double>(_cvtsh_ss(h)) - static_cast<double>(xs[t]);
    e2 += diff * diff;  // exact differences (two floats within a factor of two, or one 0)
  }
  return std::sqrt(e2) * (1.0 + std::ldexp(1.0, -30));
}
#endif

// shift_row for the n rows of x, stored (store_row: float32, or half precision where
// compiled) straight into packed panels (the last one padded with zero rows); packed, sq
// (n: |xs|^2 of the float32 rows) and, if given, err (n: each row's stored error) are resized
// and filled
template <typename T, typename S>
void shift_rows_packed(const T* x, int64_t n, int64_t d, const ProductFrame& f,
                       std::vector<S>& packed, std::vector<double>& sq, int threads,
                       std::vector<double>* err = nullptr) {
  const int64_t dp = padded_dim(d), panels = panel_count(n);
  packed.assign(static_cast<size_t>(panels * dp * 8), S{});
  sq.resize(static_cast<size_t>(n));
  if (err != nullptr) err->resize(static_cast<size_t>(n));
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> row(static_cast<size_t>(dp));
    std::vector<S> stored(static_cast<size_t>(dp));
#pragma omp for schedule(static)
    for (int64_t w = 0; w < panels; ++w) {
      S* panel = &packed[static_cast<size_t>(w * dp * 8)];
      for (int64_t l = 0; l < 8 && w * 8 + l < n; ++l) {
        sq[w * 8 + l] = shift_row(x + (w * 8 + l) * d, d, f, row.data());
        const double e = store_row(row.data(), dp, stored.data());
        if (err != nullptr) (*err)[w * 8 + l] = e;
        for (int64_t t = 0; t < dp; ++t) panel[t * 8 + l] = stored[t];
      }
    }
  }
}

// out[p * ldo + 8 w + l] = x_p . (row l of panel w) for P rows x_p (stride dp) and the W
// panels at pan: each coordinate of x_p is broadcast against a panel's 8 rows, so the
// P x W accumulators are the products themselves (no horizontal sums)
#if defined(__AVX2__) && defined(__FMA__)
// 8 consecutive panel entries as float32: loaded, or widened from half precision (exact)
inline __m256 load_lanes(const float* p) { return _mm256_loadu_ps(p); }
#if defined(DCPE_HALF_PANELS)
inline __m256 load_lanes(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#endif
#endif

template <int P, int W, typename S>
inline void dot_panel(const float* x, int64_t dp, const S* pan, float* out, int64_t ldo) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[P][W];
  for (int p = 0; p < P; ++p) {
    for (int w = 0; w < W; ++w) acc[p][w] = _mm256_setzero_ps();
  }
  for (int64_t t = 0; t < dp; ++t) {
    __m256 cv[W];
    for (int w = 0; w < W; ++w) cv[w] = load_lanes(pan + w * dp * 8 + t * 8);
    for (int p = 0; p < P; ++p) {
      const __m256 xv = _mm256_broadcast_ss(x + p * dp + t);
      for (int w = 0; w < W; ++w) acc[p][w] = _mm256_fmadd_ps(xv, cv[w], acc[p][w]);
    }
  }
  for (int p = 0; p < P; ++p) {
    for (int w = 0; w < W; ++w) _mm256_storeu_ps(out + p * ldo + w * 8, acc[p][w]);
  }
#else
  float acc[P][W][8] = {};
  for (int64_t t = 0; t < dp; ++t) {
    for (int p = 0; p < P; ++p) {
      const float xv = x[p * dp + t];
      for (int w = 0; w < W; ++w) {
        for (int l = 0; l < 8; ++l) acc[p][w][l] += xv * pan[w * dp * 8 + t * 8 + l];
      }
    }
  }
  for (int p = 0; p < P; ++p) {
    for (int w = 0; w < W; ++w) {
      for (int l = 0; l < 8; ++l) out[p * ldo + w * 8 + l] = acc[p][w][l];
    }
  }
#endif
}

// out[i * ldo + j] = x_i . c_j for the p rows of x (p x dp) and the rows c_j of the panels
// [q0, q1) of packed (j from 8 q0 to 8 q1): four panels (in L1) at a time against groups of
// six rows of x (12 accumulators), then of three
template <typename S>
inline void dot_packed(const float* x, int64_t p, const S* packed, int64_t q0, int64_t q1,
                       int64_t dp, float* out, int64_t ldo) {
  int64_t q = q0;
  for (; q + 4 <= q1; q += 4) {
    const S* pan = packed + q * dp * 8;
    float* o = out + q * 8;
    int64_t i = 0;
    for (; i + 6 <= p; i += 6) {
      dot_panel<6, 2>(x + i * dp, dp, pan, o + i * ldo, ldo);
      dot_panel<6, 2>(x + i * dp, dp, pan + 2 * dp * 8, o + i * ldo + 16, ldo);
    }
    for (; i + 3 <= p; i += 3) dot_panel<3, 4>(x + i * dp, dp, pan, o + i * ldo, ldo);
    if (p - i == 2) dot_panel<2, 4>(x + i * dp, dp, pan, o + i * ldo, ldo);
    if (p - i == 1) dot_panel<1, 4>(x + i * dp, dp, pan, o + i * ldo, ldo);
  }
  for (; q < q1; ++q) {
    for (int64_t i = 0; i < p; ++i) {
      dot_panel<1, 1>(x + i * dp, dp, packed + q * dp * 8, out + i * ldo + q * 8, ldo);
    }
  }
}

}  // namespace dcpe
