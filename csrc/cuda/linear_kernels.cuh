// Device code of the CUDA kernels of the matrix-free engine (reciprocal nearest neighbours,
// Murtagh 1983; Müllner 2011, arXiv:1109.2378, over clusters that are contiguous segments
// of a sorted token array): the kernels and their device helpers, without host code.
// What each kernel computes is described in linear_kernels.cu (PyTorch references:
// dcpe_kernels/centroid.py and dcpe_kernels/pair_average.py); the host code that checks the
// arguments and launches them is linear_dispatch.h.
//
// The includer provides what rnn_kernels.cuh needs (CUDA built-ins, the explicitly rounded
// operations, warp shuffles, cub block collectives) and, in addition, gridDim,
// __fsqrt_rn/__dsqrt_rn, __fdiv_rn/__ddiv_rn, atomicAdd on unsigned long long and
// __align__ (and, under nvcc only, float4 / double2): nvcc in linear_kernels.cu; the tests'
// CPU executor (tests/cuda_sim/).
#pragma once

#include <cstdint>
#include <cstring>

#include "rnn_kernels.cuh"

#if defined(__CUDACC__)
#define DCPE_UNROLL _Pragma("unroll")
#else
#define DCPE_UNROLL
#endif

namespace dcpe_cuda {
namespace kernels {

// IEEE (correctly rounded) square root and quotient, whatever the compiler's fast-math flags.
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

template <typename T>
__device__ __forceinline__ double max_finite();
template <>
__device__ __forceinline__ double max_finite<float>() {
  return 3.40282346638528859812e+38;
}
template <>
__device__ __forceinline__ double max_finite<double>() {
  return 1.79769313486231570815e+308;
}

// ------------------------------------------------------------------ centroid scans
//
// Both scans visit every ordered pair (a, b) of centroids once, in tiles: a block of
// kTileThreads threads owns kTileThreads / split rows (one per thread, `split` warps per
// group of 32 rows); the columns go through shared memory a tile at a time, and each warp of
// a group takes its own run of consecutive columns of the tile, so that all lanes of a
// warp read the same column (a broadcast).  Every thread sees its columns in increasing
// order.  dd(a, b) sums the rounded squares of the coordinate differences for k = 0, 1, ...
// in that order, never an fma; coordinates past dim are zero on both sides and add +0.
// What is done with dd(a, b) is the scan's Op: NearestOp or CandidateOp below.

constexpr int kTileThreads = 256;
constexpr int kTileWarps = kTileThreads / 32;
constexpr int kMaxSplit = 8;
constexpr int kSmallCols = 32;   // columns per warp and tile, dim <= 16 (centroid in registers)
constexpr int kChunkCols = 16;   // columns per warp and tile, dim > 16
constexpr int kChunkDims = 16;   // dimensions per shared-memory chunk, dim > 16

// Row minimum of value(a, b) over b != a and its smallest argmin, where value is
// sqrt(dd + (s2_a + s2_b)) (mode 0) or scale * (dd + (s2_a + s2_b)) (mode 1).  Both are
// non-decreasing functions f of v = dd + (s2_a + s2_b), so f is evaluated only for a v
// below the smallest v seen whose f(v) equals the current minimum (`raw`): a larger v
// cannot give a smaller value, and an equal value at a larger column never replaces it.
template <typename T>
struct NearestOp {
  static constexpr int kExtras = 1;  // per column: s2
  const T* s2;
  T* out;
  std::int64_t* nn;
  int mode;
  T scale;
  // out / nn already hold the minimum over earlier columns (the Gram scans' tiles of
  // columns, in increasing order): start from it, and take a strictly smaller value only
  bool merge = false;

  struct Row {
    T s2, raw, best;
    std::int64_t arg;
  };

  __device__ Row row(std::int64_t a, bool valid) const {
    Row r{valid ? s2[a] : T(0), dev_inf<T>(), dev_inf<T>(), kNoIndex};
    if (merge && valid) {
      r.raw = r.best = out[a];
      r.arg = nn[a];
    }
    return r;
  }
  __device__ T extra(int, std::int64_t b) const { return s2[b]; }
  __device__ T pad(int) const { return dev_inf<T>(); }  // v = +inf: never taken

  __device__ __forceinline__ void pair(Row& r, std::int64_t a, std::int64_t b, T dd,
                                       const T* cx, int) const {
    const T v = add_rn(dd, add_rn(r.s2, cx[0]));
    if (v < r.raw && b != a) {
      const T val = mode == 0 ? sqrt_rn(v) : mul_rn(scale, v);
      if (val < r.best) {  // columns increase per thread: strict < keeps the smallest
        r.best = val;
        r.arg = b;
      }
      if (val <= r.best) r.raw = v;
    }
  }

  // From a Gram matrix (gram_scan_kernel): the upper bound takes dd's upper end.
  __device__ __forceinline__ void gram_pair(Row& r, std::int64_t a, std::int64_t b, T, T hi,
                                            const T* cx, int stride) const {
    pair(r, a, b, hi, cx, stride);
  }

  // The `split` warps of a row group hold disjoint column sets: (value, column) minimum.
  __device__ void finish(const Row& r, std::int64_t a, std::int64_t n, int warp, int lane,
                         int split) const {
    __shared__ T sv[kTileWarps][32];
    __shared__ std::int64_t si[kTileWarps][32];
    sv[warp][lane] = r.best;
    si[warp][lane] = r.arg;
    __syncthreads();
    if (warp % split == 0 && a < n) {
      T bv = r.best;
      std::int64_t bi = r.arg;
      for (int w = 1; w < split; ++w) better(bv, bi, sv[warp + w][lane], si[warp + w][lane]);
      if (bi == kNoIndex) bi = 0;  // no finite value (a single cluster): slot 0
      out[a] = bv;
      nn[a] = bi;
    }
  }
};

// A bound on dd above which cand(a, b) is false whatever lb is, from
// thr = (tau_a + absm) * (1 + rel) and absm, with M = |thr| + |absm|: dd > h (h >= M^2 (1 +
// 2^-8) up to the final rounding, and dd > fl(h) implies dd > h) gives D = fl(sqrt(dd)) >
// M (1 + 2^-10), hence D - absm > |thr| + 2^-10 M, which still exceeds thr after rounding;
// lb >= D and rounded subtraction is monotone, so fl(lb - absm) > thr.  M = 0 needs no
// margin (D > 0 = thr); M outside [1e-150, 1e150] (or NaN) gets no bound.
template <typename T>
__device__ T skip_bound(T thr, T absm) {
  const double t = static_cast<double>(thr), m0 = static_cast<double>(absm);
  const double m = (t < 0 ? -t : t) + (m0 < 0 ? -m0 : m0);
  if (m == 0) return T(0);
  if (!(m >= 1e-150 && m <= 1e150)) return dev_inf<T>();
  const double u = __dmul_rn(m, 1.0 + 0x1p-10);
  const double h = __dmul_rn(__dmul_rn(u, u), 1.0 + 0x1p-8);
  return h > max_finite<T>() ? dev_inf<T>() : static_cast<T>(h);
}

// Emits (a, b), for a scanned row a, iff cand(a, b) and (a < b or not cand(b, a) or b is
// not scanned this round), where
// cand(a, b) = lb - absm <= (tau_a + absm) * (1 + rel), lb = D if D + r == 0 else
// max(D, (dd + t) / (D + r)), D = sqrt(dd), t = s2_a + s2_b, r = rad_a + rad_b.  Every
// quantity is symmetric in (a, b) bit for bit, so each unordered pair is emitted once.
// Candidates are rare: most pairs stop at dd > skip (skip_bound).
template <typename T>
struct CandidateOp {
  static constexpr int kExtras = 3;  // per column: s2, rad, tau
  const T* s2;
  const T* rad;
  const T* tau;
  T one_rel;
  T absm;
  std::int32_t* pa;
  std::int32_t* pb;
  unsigned long long* count;
  std::int64_t capacity;
  std::int64_t n;
  const std::int8_t* needy;  // 1: the cluster scans this round (emits its own pairs)

  struct Row {
    T s2, rad, thr, skip;
  };

  __device__ Row row(std::int64_t a, bool valid) const {
    Row r{T(0), T(0), T(0), T(-1)};  // a row that is not scanned skips every pair (dd >= 0)
    if (valid) {
      r.s2 = s2[a];
      r.rad = rad[a];
      r.thr = mul_rn(add_rn(tau[a], absm), one_rel);
      r.skip = skip_bound(r.thr, absm);
    }
    return r;
  }
  __device__ T extra(int e, std::int64_t b) const {
    return e == 0 ? s2[b] : (e == 1 ? rad[b] : tau[b]);
  }
  __device__ T pad(int) const { return T(0); }  // padded columns fail b < n

  // fl(lb - absm), lb = d if den == 0 else max(d, (num + t) / den), den = root + r: num = dd
  // and d = root = sqrt(dd) in the scans from differences, (lo, sqrt(lo), sqrt(hi)) in
  // those from a Gram matrix
  __device__ __forceinline__ T low_bound(const Row& r, T num, T d, T root, const T* cx,
                                         int stride) const {
    const T t = add_rn(r.s2, cx[0]);
    const T den = add_rn(root, add_rn(r.rad, cx[stride]));
    T lb = d;
    if (den != T(0)) {
      const T q = div_rn(add_rn(num, t), den);
      if (q > d) lb = q;
    }
    return add_rn(lb, -absm);
  }
  // cand(b, a): the column's threshold (tau_b + absm) * (1 + rel)
  __device__ __forceinline__ bool cand_ba(T low, const T* cx, int stride) const {
    return low <= mul_rn(add_rn(cx[2 * stride], absm), one_rel);
  }
  __device__ __forceinline__ void append(std::int64_t a, std::int64_t b) const {
    const unsigned long long k = atomicAdd(count, 1ull);
    if (k < static_cast<unsigned long long>(capacity)) {
      pa[k] = static_cast<std::int32_t>(a);
      pb[k] = static_cast<std::int32_t>(b);
    }
  }

  __device__ __forceinline__ void pair(Row& r, std::int64_t a, std::int64_t b, T dd,
                                       const T* cx, int stride) const {
    if (dd > r.skip || b >= n || b == a) return;
    const T d = sqrt_rn(dd);
    const T low = low_bound(r, dd, d, d, cx, stride);
    if (!(low <= r.thr)) return;
    // b emits it (only a scanned b does)
    if (a > b && needy[b] != 0 && cand_ba(low, cx, stride)) return;
    append(a, b);
  }

  // From a Gram matrix (gram_scan_kernel; dcpe_kernels/gram.py): lo <= dd <= hi, lb =
  // sqrt(lo) if sqrt(hi) + r == 0 else max(sqrt(lo), (lo + t) / (sqrt(hi) + r)).  The two
  // rows of a pair may see dd in different bits, so a pair of two scanned clusters is
  // decided by the smaller one alone, for both thresholds: row a emits (a, b) iff cand(a, b)
  // when b is not scanned, and iff a < b and (cand(a, b) or cand(b, a)) when it is.
  __device__ __forceinline__ void gram_pair(Row& r, std::int64_t a, std::int64_t b, T lo,
                                            T hi, const T* cx, int stride) const {
    if (b >= n || b == a) return;
    const bool other = needy[b] != 0;
    if (other && b < a) return;
    if (!other && lo > r.skip) return;  // (skip_bound holds for lb >= sqrt(lo) too)
    const T low = low_bound(r, lo, sqrt_rn(lo), sqrt_rn(hi), cx, stride);
    if (low <= r.thr || (other && cand_ba(low, cx, stride))) append(a, b);
  }

  __device__ void finish(const Row&, std::int64_t, std::int64_t, int, int, int) const {}
};

// The row a thread of a scan scans: rows[r] for its place r among the block's row groups
// (`split` warps per group of 32 rows); n, and valid = false, past nrows.
__device__ __forceinline__ std::int64_t scan_row(const std::int32_t* __restrict__ rows,
                                                 std::int64_t nrows, std::int64_t n,
                                                 int split, int warp, int lane, bool& valid) {
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * (kTileThreads / split) +
                         (warp / split) * 32 + lane;
  valid = r < nrows;
  return valid ? static_cast<std::int64_t>(rows[r]) : n;
}

// The Op's per-column values of the tile's columns c0 .. c0 + tile - 1 into cx (padding
// past n), a column's e-th value at cx[e * stride + j].
template <typename T, typename Op>
__device__ __forceinline__ void load_extras(const Op& op, T* cx, int stride, std::int64_t c0,
                                            int tile, std::int64_t n) {
  for (int j = threadIdx.x; j < tile; j += kTileThreads) {
    const std::int64_t b = c0 + j;
    for (int e = 0; e < Op::kExtras; ++e) cx[e * stride + j] = b < n ? op.extra(e, b) : op.pad(e);
  }
}

// dim <= KMAX (4, 8 or 16): each thread keeps its centroid in registers; tiles of
// kSmallCols * split columns, all their coordinates at once.
template <typename T, int KMAX, typename Op>
__global__ void __launch_bounds__(kTileThreads)
    centroid_scan_kernel(const T* __restrict__ mu_t, std::int64_t n, std::int64_t dim,
                         const std::int32_t* __restrict__ rows, std::int64_t nrows, int split,
                         Op op) {
  constexpr int kTile = kSmallCols * kMaxSplit;
  __shared__ __align__(16) T cmu[kTile * KMAX];  // column-major: a column's coordinates
  __shared__ T cx[Op::kExtras * kTile];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tile = kSmallCols * split;
  const int first = (warp % split) * kSmallCols;
  bool valid;
  const std::int64_t a = scan_row(rows, nrows, n, split, warp, lane, valid);
  T xr[KMAX];
  DCPE_UNROLL
  for (int k = 0; k < KMAX; ++k) xr[k] = (valid && k < dim) ? mu_t[k * n + a] : T(0);
  typename Op::Row row = op.row(a, valid);
  for (std::int64_t c0 = 0; c0 < n; c0 += tile) {
    __syncthreads();  // everyone is done with the previous tile
    for (int e = threadIdx.x; e < tile * KMAX; e += kTileThreads) {
      const int k = e % KMAX;
      const std::int64_t b = c0 + e / KMAX;
      cmu[e] = (k < dim && b < n) ? mu_t[k * n + b] : T(0);
    }
    load_extras<T>(op, cx, kTile, c0, tile, n);
    __syncthreads();
    for (int jj = 0; jj < kSmallCols; ++jj) {
      const int j = first + jj;
      const T* cm = cmu + j * KMAX;
      T dd = T(0);
      DCPE_UNROLL
      for (int k = 0; k < KMAX; ++k) {
        const T diff = xr[k] - cm[k];
        dd = add_rn(dd, mul_rn(diff, diff));
      }
      op.pair(row, a, c0 + j, dd, cx + j, kTile);
    }
  }
  op.finish(row, a, n, warp, lane, split);
}

// dim > 16: tiles of kChunkCols * split columns, their coordinates kChunkDims at a time;
// each thread accumulates dd of its kChunkCols columns across the chunks, in dimension order.
template <typename T, typename Op>
__global__ void __launch_bounds__(kTileThreads)
    centroid_scan_chunked_kernel(const T* __restrict__ mu_t, std::int64_t n, std::int64_t dim,
                                 const std::int32_t* __restrict__ rows, std::int64_t nrows,
                                 int split, Op op) {
  constexpr int kTile = kChunkCols * kMaxSplit;
  __shared__ __align__(16) T cmu[kTile * kChunkDims];
  __shared__ T cx[Op::kExtras * kTile];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tile = kChunkCols * split;
  const int first = (warp % split) * kChunkCols;
  bool valid;
  const std::int64_t a = scan_row(rows, nrows, n, split, warp, lane, valid);
  typename Op::Row row = op.row(a, valid);
  for (std::int64_t c0 = 0; c0 < n; c0 += tile) {
    T acc[kChunkCols];
    DCPE_UNROLL
    for (int jj = 0; jj < kChunkCols; ++jj) acc[jj] = T(0);
    for (std::int64_t k0 = 0; k0 < dim; k0 += kChunkDims) {
      __syncthreads();  // everyone is done with the previous chunk
      for (int e = threadIdx.x; e < tile * kChunkDims; e += kTileThreads) {
        const std::int64_t k = k0 + e % kChunkDims;
        const std::int64_t b = c0 + e / kChunkDims;
        cmu[e] = (k < dim && b < n) ? mu_t[k * n + b] : T(0);
      }
      if (k0 == 0) load_extras<T>(op, cx, kTile, c0, tile, n);
      __syncthreads();
      T xr[kChunkDims];
      DCPE_UNROLL
      for (int kk = 0; kk < kChunkDims; ++kk) {
        xr[kk] = (valid && k0 + kk < dim) ? mu_t[(k0 + kk) * n + a] : T(0);
      }
      DCPE_UNROLL
      for (int jj = 0; jj < kChunkCols; ++jj) {
        const T* cm = cmu + (first + jj) * kChunkDims;
        DCPE_UNROLL
        for (int kk = 0; kk < kChunkDims; ++kk) {
          const T diff = xr[kk] - cm[kk];
          acc[jj] = add_rn(acc[jj], mul_rn(diff, diff));
        }
      }
    }
    for (int jj = 0; jj < kChunkCols; ++jj) {
      const int j = first + jj;
      op.pair(row, a, c0 + j, acc[jj], cx + j, kTile);
    }
  }
  op.finish(row, a, n, warp, lane, split);
}

// ------------------------------------------------------------------ scans from a Gram matrix
//
// Past dcpe_kernels.linear.GRAM_MIN_DIM dimensions the engine forms, per tile of rows,
// G[i, b] = mu_a . mu_b (a = rows[i]; float64 centroids less a common centre, a matrix
// product on the device's matrix units) and these scans read dd from it
// (dcpe_kernels/gram.py): s = nrm_a + nrm_b, e = gerr * s, lo = max(0, (s - 2 G) - e),
// hi = (s - 2 G) + e, rounded to T; the same bits as the Triton kernels and the reference.
// The Op's gram_pair takes (lo, hi).  A tile holds every row that scans and the columns
// c0 .. c1 - 1; a thread is a row, as in the scans above, and reads the tile at
// g[i * g_rs + (b - c0) * g_cs], coalesced across a warp's rows when g_rs == 1.

template <typename T>
__device__ __forceinline__ void gram_dd(double g, double na, double nb, double gerr, T& lo,
                                        T& hi) {
  const double s = add_rn(na, nb);
  const double dd = add_rn(s, -mul_rn(2.0, g));
  const double e = mul_rn(gerr, s);
  const double l = add_rn(dd, -e);
  lo = static_cast<T>(l > 0.0 ? l : 0.0);
  hi = static_cast<T>(add_rn(dd, e));
}

template <typename T, typename Op>
__global__ void __launch_bounds__(kTileThreads)
    gram_scan_kernel(const double* __restrict__ g, std::int64_t g_rs, std::int64_t g_cs,
                     const double* __restrict__ nrm, double gerr, std::int64_t n,
                     std::int64_t c0, std::int64_t c1, const std::int32_t* __restrict__ rows,
                     std::int64_t nrows, int split, Op op) {
  constexpr int kTile = kChunkCols * kMaxSplit;
  __shared__ T cx[Op::kExtras * kTile];
  __shared__ double cn[kTile];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tile = kChunkCols * split;
  const int first = (warp % split) * kChunkCols;
  bool valid;
  const std::int64_t a = scan_row(rows, nrows, n, split, warp, lane, valid);
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * (kTileThreads / split) +
                         (warp / split) * 32 + lane;  // the thread's row of the tile
  const double na = valid ? nrm[a] : 0.0;
  const double* gi = g + (valid ? i : 0) * g_rs;
  typename Op::Row row = op.row(a, valid);
  for (std::int64_t t0 = c0; t0 < c1; t0 += tile) {
    __syncthreads();  // everyone is done with the previous tile
    load_extras<T>(op, cx, kTile, t0, tile, c1);
    for (int j = threadIdx.x; j < tile; j += kTileThreads) cn[j] = t0 + j < c1 ? nrm[t0 + j] : 0.0;
    __syncthreads();
    if (!valid) continue;
    for (int jj = 0; jj < kChunkCols; ++jj) {
      const int j = first + jj;
      const std::int64_t b = t0 + j;
      if (b >= c1) break;
      T lo, hi;
      gram_dd<T>(gi[(b - c0) * g_cs], na, cn[j], gerr, lo, hi);
      op.gram_pair(row, a, b, lo, hi, cx + j, kTile);
    }
  }
  op.finish(row, a, n, warp, lane, split);
}

// ------------------------------------------------------------------ cluster averages
//
// avg(A, B) = sum_{i in lo, j in hi} |x_i - x_j| / (|lo| |hi|) with lo the cluster of the
// smaller slot; each token distance rounds as in pairwise_rownn_kernel (metric 0), the sum
// is accumulated in float64 in an order that depends only on the two sizes (no atomics),
// the quotient is an IEEE float64 division rounded once to T.

constexpr int kPairThreads = 256;
constexpr int kPairWarps = kPairThreads / 32;
constexpr std::int64_t kWarpPairMax = 2048;  // token pairs up to which a warp sums a pair
constexpr std::int64_t kQuadPairMax = 5;     // ... 4 lanes, below this many
constexpr std::int64_t kOctPairMax = 17;     // ... 8 lanes, below this many

// Tokens are read through two strides (elements): ts between tokens, cs between the
// coordinates of one token.  Rows (ntok, dim) row-major: ts = dim, cs = 1.  Columns, a
// (dim, ld) row-major buffer: ts = 1, cs = ld; then the lanes of a warp, which take
// consecutive tokens of a cluster, read consecutive addresses for every coordinate (the
// layout the matrix-free engine uses past 16 dimensions).
//
// Rows (cs = 1) whose two tokens start on 16-byte boundaries, with dim a multiple of the
// 16-byte vector's lanes, are read 16 bytes at a time (float4 / double2): one load
// instruction per 4 (2) coordinates, each lane's row streamed through whole cache lines.
// The squares are still added one coordinate at a time in dimension order: the same bits.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kLanes = static_cast<int>(16 / sizeof(T));
  T v[kLanes];
};

template <typename T>
__device__ __forceinline__ Vec16<T> load16(const T* __restrict__ p) {
  Vec16<T> r;
#if defined(__CUDACC__)
  if constexpr (sizeof(T) == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    r.v[0] = q.x;
    r.v[1] = q.y;
    r.v[2] = q.z;
    r.v[3] = q.w;
  } else {
    const double2 q = *reinterpret_cast<const double2*>(p);
    r.v[0] = q.x;
    r.v[1] = q.y;
  }
#else
  std::memcpy(&r, p, sizeof r);  // the CPU executor: a plain copy, no aliasing question
#endif
  return r;
}

template <typename T>
__device__ __forceinline__ bool vector_rows(const T* xi, const T* xj, std::int64_t dim,
                                            std::int64_t cs) {
  const auto ai = reinterpret_cast<std::uintptr_t>(xi);
  const auto aj = reinterpret_cast<std::uintptr_t>(xj);
  return cs == 1 && dim % Vec16<T>::kLanes == 0 && ((ai | aj) & 15u) == 0;
}

template <typename T>
__device__ __forceinline__ double token_distance(const T* __restrict__ xi,
                                                 const T* __restrict__ xj, std::int64_t dim,
                                                 std::int64_t cs) {
  T acc = T(0);
  if (vector_rows(xi, xj, dim, cs)) {
    constexpr int kV = Vec16<T>::kLanes;
    for (std::int64_t k = 0; k < dim; k += kV) {
      const Vec16<T> u = load16(xi + k), w = load16(xj + k);
      DCPE_UNROLL
      for (int e = 0; e < kV; ++e) {
        const T diff = u.v[e] - w.v[e];
        acc = add_rn(acc, mul_rn(diff, diff));
      }
    }
    return static_cast<double>(sqrt_rn(acc));
  }
  for (std::int64_t k = 0; k < dim; ++k) {
    const T diff = xi[k * cs] - xj[k * cs];
    acc = add_rn(acc, mul_rn(diff, diff));
  }
  return static_cast<double>(sqrt_rn(acc));
}

// Sum over the token pairs e = first, first + step, ... < nl * nh (lo token e / nh, hi
// token e % nh), stepping (i, j) without a division per pair.
template <typename T>
__device__ double strided_pair_sum(const T* __restrict__ x, std::int64_t dim, std::int64_t ts,
                                   std::int64_t cs, std::int64_t o_lo, std::int64_t nl,
                                   std::int64_t o_hi, std::int64_t nh, int first, int step) {
  double s = 0.0;
  if (nl <= 0 || nh <= 0) return s;
  std::int64_t i = first / nh, j = first % nh;
  const std::int64_t qs = step / nh, rs = step % nh;
  while (i < nl) {
    s = add_rn(s, token_distance(x + (o_lo + i) * ts, x + (o_hi + j) * ts, dim, cs));
    i += qs;
    j += rs;
    if (j >= nh) {
      j -= nh;
      ++i;
    }
  }
  return s;
}

// Fixed-shape tree over groups of kLanes lanes of a warp (kLanes a power of two up to 32);
// the group's total is valid in its first lane.  Every lane of the warp takes part.
template <int kLanes>
__device__ __forceinline__ double group_sum(double s) {
  for (int off = kLanes / 2; off > 0; off >>= 1) {
    s = add_rn(s, __shfl_down_sync(0xffffffffu, s, off));
  }
  return s;
}

__device__ __forceinline__ double warp_sum(double s) { return group_sum<32>(s); }

struct PairSpan {
  std::int64_t o_lo, nl, o_hi, nh;
};

__device__ __forceinline__ PairSpan pair_span(const std::int64_t* __restrict__ offsets,
                                              const std::int64_t* __restrict__ sizes,
                                              std::int64_t a, std::int64_t b) {
  const std::int64_t lo = a < b ? a : b, hi = a < b ? b : a;
  return PairSpan{offsets[lo], sizes[lo], offsets[hi], sizes[hi]};
}

template <typename T>
__device__ __forceinline__ T pair_mean(double s, const PairSpan& p) {
  return static_cast<T>(
      __ddiv_rn(s, __dmul_rn(static_cast<double>(p.nl), static_cast<double>(p.nh))));
}

// The pairs k < cnt of [work_lo, work_hi) token pairs, a group of kLanes lanes each, the
// lanes striding over the pair's token pairs (grid-stride over the groups; the loop runs
// alike in all threads of a block, so the shuffles stay convergent).
template <int kLanes, typename T, typename V>
__device__ void pair_groups(const T* __restrict__ x, std::int64_t dim, std::int64_t ts,
                            std::int64_t cs, const std::int64_t* __restrict__ offsets,
                            const std::int64_t* __restrict__ sizes,
                            const std::int32_t* __restrict__ pa,
                            const std::int32_t* __restrict__ pb, std::int64_t cnt,
                            V* __restrict__ val, std::int64_t work_lo, std::int64_t work_hi) {
  constexpr int kGroups = kPairThreads / kLanes;
  const int lane = static_cast<int>(threadIdx.x) % kLanes;
  const int group = static_cast<int>(threadIdx.x) / kLanes;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kGroups;
  for (std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * kGroups; base < cnt;
       base += stride) {
    const std::int64_t k = base + group;
    bool mine = false;
    PairSpan p{0, 0, 0, 0};
    double s = 0.0;
    if (k < cnt) {
      p = pair_span(offsets, sizes, pa[k], pb[k]);
      const std::int64_t work = p.nl * p.nh;
      mine = work >= work_lo && work < work_hi;
      if (mine) s = strided_pair_sum(x, dim, ts, cs, p.o_lo, p.nl, p.o_hi, p.nh, lane, kLanes);
    }
    s = group_sum<kLanes>(s);
    if (mine && lane == 0) val[k] = pair_mean<V>(s, p);
  }
}

// Pairs k < min(count, capacity), by their token pairs: 4 lanes each below kQuadPairMax,
// 8 below kOctPairMax (the many small pairs of high-dimensional rounds, which would leave
// most of a warp idle), a warp each up to kWarpPairMax, then a block each for the larger
// ones.  Which path sums a pair, and so the order of its float64 sum, depends on its
// sizes alone.  The averages are written in V: T, or double (parts of a large pair,
// summed by the caller).
template <typename T, typename V>
__global__ void __launch_bounds__(kPairThreads)
    pair_average_kernel(const T* __restrict__ x, std::int64_t dim, std::int64_t ts,
                        std::int64_t cs, const std::int64_t* __restrict__ offsets,
                        const std::int64_t* __restrict__ sizes,
                        const std::int32_t* __restrict__ pa, const std::int32_t* __restrict__ pb,
                        const std::int64_t* __restrict__ count, std::int64_t capacity,
                        V* __restrict__ val) {
  __shared__ double ws[kPairWarps];
  const std::int64_t c = count[0];
  const std::int64_t cnt = c < capacity ? c : capacity;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  pair_groups<4>(x, dim, ts, cs, offsets, sizes, pa, pb, cnt, val, 0, kQuadPairMax);
  pair_groups<8>(x, dim, ts, cs, offsets, sizes, pa, pb, cnt, val, kQuadPairMax, kOctPairMax);
  pair_groups<32>(x, dim, ts, cs, offsets, sizes, pa, pb, cnt, val, kOctPairMax,
                  kWarpPairMax + 1);
  for (std::int64_t k = blockIdx.x; k < cnt; k += gridDim.x) {
    const PairSpan p = pair_span(offsets, sizes, pa[k], pb[k]);
    if (p.nl * p.nh <= kWarpPairMax) continue;  // the same in every thread
    double s = strided_pair_sum(x, dim, ts, cs, p.o_lo, p.nl, p.o_hi, p.nh,
                                static_cast<int>(threadIdx.x), kPairThreads);
    s = warp_sum(s);
    if (lane == 0) ws[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      double t = ws[0];
      for (int w = 1; w < kPairWarps; ++w) t = add_rn(t, ws[w]);
      val[k] = pair_mean<V>(t, p);
    }
    __syncthreads();  // ws is reused by the next pair
  }
}

// Entries (a, b) and (b, a) for b > a of the dense matrix, +inf at (a, a); one block per
// row a, one thread per column, each summing its pair sequentially (a's tokens outside).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    cluster_matrix_kernel(const T* __restrict__ x, std::int64_t dim, std::int64_t ts,
                          std::int64_t cs, const std::int64_t* __restrict__ offsets,
                          const std::int64_t* __restrict__ sizes, std::int64_t n,
                          T* __restrict__ out, std::int64_t ld) {
  const std::int64_t a = blockIdx.x;
  const std::int64_t oa = offsets[a], na = sizes[a];
  if (threadIdx.x == 0) out[a * ld + a] = dev_inf<T>();
  for (std::int64_t b = a + 1 + threadIdx.x; b < n; b += kThreads) {
    const PairSpan p{oa, na, offsets[b], sizes[b]};
    double s = 0.0;
    for (std::int64_t i = 0; i < p.nl; ++i) {
      const T* xi = x + (p.o_lo + i) * ts;
      for (std::int64_t j = 0; j < p.nh; ++j) {
        s = add_rn(s, token_distance(xi, x + (p.o_hi + j) * ts, dim, cs));
      }
    }
    const T v = pair_mean<T>(s, p);
    out[a * ld + b] = v;
    out[b * ld + a] = v;
  }
}

// Row argmin / min of a finished matrix (ties to the smallest column).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_argmin_kernel(const T* __restrict__ D, std::int64_t n, std::int64_t ld,
                      std::int64_t* __restrict__ nn, T* __restrict__ nnd) {
  const std::int64_t i = blockIdx.x;
  const T* row = D + i * ld;
  T bv = dev_inf<T>();
  std::int64_t bi = kNoIndex;
  for (std::int64_t j = threadIdx.x; j < n; j += kThreads) {
    const T v = row[j];
    if (v < bv) {  // j increases per thread: strict < keeps the smallest column
      bv = v;
      bi = j;
    }
  }
  block_argmin_store(bv, bi, nn, nnd, i);
}

}  // namespace kernels
}  // namespace dcpe_cuda
