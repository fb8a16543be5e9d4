// CUDA kernels of the reciprocal-nearest-neighbour (RNN) engine for exact agglomerative
// clustering (reducible linkages: average, weighted, single, complete).
//
// Algorithm: reciprocal nearest neighbours (Murtagh 1983, "A survey of recent advances in
// hierarchical clustering algorithms"; Müllner 2011, "Modern hierarchical, agglomerative
// clustering algorithms", arXiv:1109.2378).  Every pair of active clusters that are each
// other's nearest neighbour is a merge of the greedy dendrogram; all such disjoint pairs
// of a round are merged at once with Lance–Williams applied to two merged clusters on both
// sides.  The round driver (O(n) bookkeeping) is dcpe_kernels/rnn.py; these kernels are
// the O(n^2) passes:
//   pairwise_rownn_kernel       dense dissimilarities from direct differences (no
//                               |a|^2+|b|^2-2ab cancellation) + row argmin;
//   merge_compact_rownn_kernel  merge + compaction of the matrix + row argmin, one pass.
// One thread block per matrix row; row argmin ties go to the smallest column.  Each entry
// is computed in both of its rows, so the weighted merge uses an order of operations that
// is symmetric in (row, column) and no fma: the matrix stays exactly symmetric (see
// dcpe_kernels/merge.py).  Token distances round every square and sum in the cpu engine's
// order (no fma either), so both engines start from the same matrix.

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_ops.h"

namespace dcpe_cuda {
namespace {

constexpr int kThreads = 256;

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("dcpe CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

template <typename T>
__device__ __forceinline__ T dev_inf();
template <>
__device__ __forceinline__ float dev_inf<float>() {
  return __int_as_float(0x7f800000);
}
template <>
__device__ __forceinline__ double dev_inf<double>() {
  return __longlong_as_double(0x7ff0000000000000LL);
}

constexpr std::int64_t kNoIndex = 0x7fffffffffffffffLL;

// Round-to-nearest product and sum that the compiler never fuses into an fma.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

template <typename T>
__device__ __forceinline__ void better(T& bv, std::int64_t& bi, T v, std::int64_t i) {
  if (v < bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

// Block-wide lexicographic (value, index) minimum; the result is written by thread 0.
template <typename T>
__device__ void block_argmin_store(T bv, std::int64_t bi, std::int64_t* nn, T* nnd,
                                   std::int64_t row) {
  __shared__ T sv[kThreads / 32];
  __shared__ std::int64_t si[kThreads / 32];
  const unsigned full = 0xffffffffu;
  for (int off = 16; off > 0; off >>= 1) {
    T ov = __shfl_down_sync(full, bv, off);
    std::int64_t oi = __shfl_down_sync(full, bi, off);
    better(bv, bi, ov, oi);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) better(bv, bi, sv[w], si[w]);
    // a row without a finite entry (single active cluster) points to slot 0
    if (!(bv < dev_inf<T>())) bi = 0;
    nn[row] = bi;
    nnd[row] = bv;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pairwise_rownn_kernel(const T* __restrict__ x, T* __restrict__ D,
                          std::int64_t* __restrict__ nn, T* __restrict__ nnd, std::int64_t n,
                          std::int64_t dim, std::int64_t ld, int metric) {
  const std::int64_t i = blockIdx.x;
  const T* xi = x + i * dim;
  T* row = D + i * ld;
  T bv = dev_inf<T>();
  std::int64_t bi = kNoIndex;
  for (std::int64_t j = threadIdx.x; j < n; j += kThreads) {
    const T* xj = x + j * dim;
    T acc = T(0);
    for (std::int64_t k = 0; k < dim; ++k) {
      const T diff = xi[k] - xj[k];
      acc = add_rn(acc, mul_rn(diff, diff));  // no fma: the cpu engine's rounding
    }
    if (metric == 0) {
      acc = sqrt(acc);  // IEEE-rounded (no fast math)
    } else if (metric == 2) {
      acc *= T(0.5);
    }
    if (j == i) acc = dev_inf<T>();
    row[j] = acc;
    if (acc < bv) {  // j increases per thread: strict < keeps the smallest column
      bv = acc;
      bi = j;
    }
  }
  block_argmin_store(bv, bi, nn, nnd, i);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    merge_compact_rownn_kernel(const T* __restrict__ src, std::int64_t ld_src,
                               T* __restrict__ dst, std::int64_t ld_dst,
                               const std::int32_t* __restrict__ P,
                               const std::int32_t* __restrict__ Q, const T* __restrict__ WP,
                               const T* __restrict__ WQ, std::int64_t n_new, std::int64_t row0,
                               int mode, std::int64_t* __restrict__ nn, T* __restrict__ nnd) {
  const std::int64_t lr = blockIdx.x;
  const std::int64_t i = row0 + lr;
  const std::int64_t pr = P[i];
  const std::int64_t qr = Q[i];
  const bool hq_r = qr >= 0;
  const T wpr = WP[i];
  const T wqr = hq_r ? WQ[i] : T(0);
  const T* sp = src + pr * ld_src;
  const T* sq = src + (hq_r ? qr : 0) * ld_src;
  T* out = dst + lr * ld_dst;
  T bv = dev_inf<T>();
  std::int64_t bi = kNoIndex;
  const T inf = dev_inf<T>();
  for (std::int64_t j = threadIdx.x; j < n_new; j += kThreads) {
    const std::int64_t pc = P[j];
    const std::int64_t qc = Q[j];
    const bool hq_c = qc >= 0;
    T val;
    if (mode == 0) {
      const T wpc = WP[j];
      const T wqc = hq_c ? WQ[j] : T(0);
      const T v_pp = sp[pc];
      const T v_pq = hq_c ? sp[qc] : T(0);
      const T v_qp = hq_r ? sq[pc] : T(0);
      const T v_qq = (hq_r && hq_c) ? sq[qc] : T(0);
      // symmetric order, never contracted into fma: entry (j, i) rounds like (i, j)
      const T t_pp = mul_rn(mul_rn(wpr, wpc), v_pp);
      const T t_pq = mul_rn(mul_rn(wpr, wqc), v_pq);
      const T t_qp = mul_rn(mul_rn(wqr, wpc), v_qp);
      const T t_qq = mul_rn(mul_rn(wqr, wqc), v_qq);
      val = add_rn(add_rn(t_pp, add_rn(t_pq, t_qp)), t_qq);
    } else if (mode == 1) {
      val = sp[pc];
      if (hq_c) val = fmin(val, sp[qc]);
      if (hq_r) {
        val = fmin(val, sq[pc]);
        if (hq_c) val = fmin(val, sq[qc]);
      }
    } else {
      val = sp[pc];
      if (hq_c) val = fmax(val, sp[qc]);
      if (hq_r) {
        val = fmax(val, sq[pc]);
        if (hq_c) val = fmax(val, sq[qc]);
      }
    }
    if (j == i) val = inf;
    out[j] = val;
    if (val < bv) {
      bv = val;
      bi = j;
    }
  }
  block_argmin_store(bv, bi, nn, nnd, i);
}

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

template <typename T>
void launch_pairwise(std::uintptr_t x, std::uintptr_t D, std::uintptr_t nn, std::uintptr_t nnd,
                     std::int64_t n, std::int64_t dim, std::int64_t ld, int metric,
                     std::uintptr_t stream) {
  pairwise_rownn_kernel<T><<<static_cast<unsigned>(n), kThreads, 0, as_stream(stream)>>>(
      reinterpret_cast<const T*>(x), reinterpret_cast<T*>(D),
      reinterpret_cast<std::int64_t*>(nn), reinterpret_cast<T*>(nnd), n, dim, ld, metric);
  check(cudaGetLastError(), "pairwise_rownn_kernel launch");
}

template <typename T>
void launch_merge(std::uintptr_t src, std::int64_t ld_src, std::uintptr_t dst,
                  std::int64_t ld_dst, std::uintptr_t p, std::uintptr_t q, std::uintptr_t wp,
                  std::uintptr_t wq, std::int64_t n_new, std::int64_t row0, std::int64_t nrows,
                  int mode, std::uintptr_t nn, std::uintptr_t nnd, std::uintptr_t stream) {
  merge_compact_rownn_kernel<T><<<static_cast<unsigned>(nrows), kThreads, 0,
                                  as_stream(stream)>>>(
      reinterpret_cast<const T*>(src), ld_src, reinterpret_cast<T*>(dst), ld_dst,
      reinterpret_cast<const std::int32_t*>(p), reinterpret_cast<const std::int32_t*>(q),
      reinterpret_cast<const T*>(wp), reinterpret_cast<const T*>(wq), n_new, row0, mode,
      reinterpret_cast<std::int64_t*>(nn), reinterpret_cast<T*>(nnd));
  check(cudaGetLastError(), "merge_compact_rownn_kernel launch");
}

void check_args(int dtype, std::int64_t rows, const char* what) {
  if (dtype != kFloat32 && dtype != kFloat64) {
    throw std::invalid_argument(std::string(what) + ": dtype code must be 0 (float32) or "
                                "1 (float64), got " + std::to_string(dtype));
  }
  if (rows < 0 || rows > 0x7fffffffLL) {
    throw std::invalid_argument(std::string(what) + ": row count out of range: " +
                                std::to_string(rows));
  }
}

}  // namespace

void pairwise_nn(int dtype, std::uintptr_t x, std::uintptr_t D, std::uintptr_t nn,
                 std::uintptr_t nnd, std::int64_t n, std::int64_t dim, std::int64_t ld,
                 int metric, std::uintptr_t stream) {
  check_args(dtype, n, "pairwise_nn");
  if (metric < 0 || metric > 2) throw std::invalid_argument("pairwise_nn: metric code 0..2");
  if (n == 0) return;
  if (dtype == kFloat32) {
    launch_pairwise<float>(x, D, nn, nnd, n, dim, ld, metric, stream);
  } else {
    launch_pairwise<double>(x, D, nn, nnd, n, dim, ld, metric, stream);
  }
}

void merge_compact_nn(int dtype, std::uintptr_t src, std::int64_t ld_src, std::uintptr_t dst,
                      std::int64_t ld_dst, std::uintptr_t p, std::uintptr_t q,
                      std::uintptr_t wp, std::uintptr_t wq, std::int64_t n_new,
                      std::int64_t row0, std::int64_t nrows, int mode, std::uintptr_t nn,
                      std::uintptr_t nnd, std::uintptr_t stream) {
  check_args(dtype, nrows, "merge_compact_nn");
  if (mode < 0 || mode > 2) throw std::invalid_argument("merge_compact_nn: mode code 0..2");
  if (nrows == 0) return;
  if (dtype == kFloat32) {
    launch_merge<float>(src, ld_src, dst, ld_dst, p, q, wp, wq, n_new, row0, nrows, mode, nn,
                        nnd, stream);
  } else {
    launch_merge<double>(src, ld_src, dst, ld_dst, p, q, wp, wq, n_new, row0, nrows, mode, nn,
                         nnd, stream);
  }
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a missing driver
    return 0;
  }
  return count;
}

}  // namespace dcpe_cuda
