// Device code of the CUDA reciprocal-nearest-neighbour (RNN) engine (Murtagh 1983; Müllner
// 2011, arXiv:1109.2378): the kernels and their device helpers, without host code.  The
// algorithm, and what each kernel computes, are described in rnn_kernels.cu; the host code
// that checks the arguments and launches the kernels is rnn_dispatch.h.
//
// The includer provides the CUDA built-ins and intrinsics used here (threadIdx, blockIdx,
// __syncthreads, __shfl_down_sync, __fmul_rn and the other explicitly rounded
// operations, __int_as_float, __longlong_as_double, sqrt/fmin/fmax) and
// cub::BlockScan / cub::BlockReduce: nvcc with <cub/...> in rnn_kernels.cu; the tests'
// CPU executor (tests/cuda_sim/) to run this same source on the host.
#pragma once

#include <cstdint>

namespace dcpe_cuda {
namespace kernels {

constexpr int kThreads = 256;

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
                               int mode, std::int64_t* __restrict__ nn, T* __restrict__ nnd,
                               const std::int64_t* __restrict__ count) {
  const std::int64_t lr = blockIdx.x;
  if (count != nullptr) {  // the round's record, read on the device (row0 is 0)
    const std::int64_t c = count[1];
    if (lr >= c) return;  // the whole block: the grid covers an upper bound
    n_new = c;
    ld_dst = c;
    ld_src = count[5];  // the old order: the old matrix's row stride
  }
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

// Round bookkeeping (dcpe_kernels/round.py has the PyTorch reference and the semantics):
// one block; clusters are taken kScanThreads at a time, and a block-wide exclusive scan
// of (is_a, keep), packed as is_a * 2^32 + keep, gives each cluster its merge record
// and its next slot, offset by the running totals of the blocks before.  The round's
// record is counts[0..5] = pairs, slots kept, merges below, merges recorded after it,
// status, n.  With prev (the record of the round before) n, m and check come from the
// device, and a round after one whose status is not 0 does nothing but pass it on.
// Status: 0 go on, 1 finished (fewer than two slots), 2 early stop (below >= need with
// check), 3 no reciprocal pair.
constexpr int kScanThreads = 512;  // 64 registers per thread, no spills (sm_90)

struct MinOp {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const {
    return b < a ? b : a;
  }
};

template <typename T>
__global__ void __launch_bounds__(kScanThreads)
    round_scan_kernel(std::int64_t n, const std::int64_t* __restrict__ nn,
                      const T* __restrict__ nnd, const std::int64_t* __restrict__ size,
                      const std::int64_t* __restrict__ rep, const T* __restrict__ hfix,
                      std::int64_t* __restrict__ m_a, std::int64_t* __restrict__ m_b,
                      T* __restrict__ m_h, T* __restrict__ m_hf, std::int64_t* __restrict__ m_s,
                      std::int64_t m, int check, std::int64_t cap, int average,
                      std::int32_t* __restrict__ P, std::int32_t* __restrict__ Q,
                      T* __restrict__ WP, T* __restrict__ WQ,
                      std::int64_t* __restrict__ size_out, std::int64_t* __restrict__ rep_out,
                      T* __restrict__ hfix_out, std::int64_t* __restrict__ counts,
                      const std::int64_t* __restrict__ prev, std::int64_t need) {
  using Scan = cub::BlockScan<long long, kScanThreads>;
  using ReduceT = cub::BlockReduce<T, kScanThreads>;
  using ReduceI = cub::BlockReduce<long long, kScanThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename ReduceT::TempStorage reduce_t;
    typename ReduceI::TempStorage reduce_i;
  } tmp;
  __shared__ T floor_shared;
  const int tid = threadIdx.x;
  std::int64_t before = 0;
  if (prev != nullptr) {  // a chained round: its order, merges and test from the device
    before = prev[4];
    n = before == 0 ? prev[1] : 0;
    m = prev[3];
    check = before == 0 && need >= 0 && m >= need ? 1 : 0;
  }
  long long below = 0;
  if (check) {
    // recorded merges below the smallest entry of the current matrix
    T lo = dev_inf<T>();
    for (std::int64_t i = tid; i < n; i += kScanThreads) lo = MinOp()(lo, nnd[i]);
    const T floor_value = ReduceT(tmp.reduce_t).Reduce(lo, MinOp());  // valid in thread 0
    if (tid == 0) floor_shared = floor_value;
    __syncthreads();
    const T t = floor_shared;
    long long c = 0;
    for (std::int64_t i = tid; i < m; i += kScanThreads) c += m_hf[i] < t ? 1 : 0;
    below = ReduceI(tmp.reduce_i).Sum(c);  // valid in thread 0
    __syncthreads();
  }
  long long pairs = 0, kept = 0;  // the same in every thread
  // each block's nearest neighbours are loaded one block ahead: a block then waits for one
  // level of loads (those at its partners), not two
  std::int64_t ahead = tid < n ? nn[tid] : 0;
  for (std::int64_t base = 0; base < n; base += kScanThreads) {
    const std::int64_t i = base + tid;
    const bool valid = i < n;
    std::int64_t partner = 0, sz = 0, szp = 0, size_new = 0;
    bool is_a = false, keep = false;
    const std::int64_t mine = ahead;
    ahead = i + kScanThreads < n ? nn[i + kScanThreads] : 0;
    if (valid) {
      partner = mine;
      const bool recip = nn[partner] == i;
      is_a = recip && i < partner;
      const bool is_b = recip && i > partner;
      sz = size[i];
      szp = size[partner];
      size_new = is_a ? sz + szp : sz;
      keep = !is_b && size_new <= cap;
    }
    const long long packed = (static_cast<long long>(is_a) << 32) | static_cast<long long>(keep);
    long long prefix = 0, total = 0;
    Scan(tmp.scan).ExclusiveSum(packed, prefix, total);
    __syncthreads();  // tmp is reused by the next block's scan
    if (valid) {
      const T hraw = nnd[i];
      const T hf_own = hfix[i];
      const T hf_p = hfix[partner];
      const T hf0 = hraw < hf_own ? hf_own : hraw;  // torch.maximum of finite values
      const T hf = hf0 < hf_p ? hf_p : hf0;
      const std::int64_t rep_own = rep[i];
      if (is_a) {
        const std::int64_t r = m + pairs + (prefix >> 32);
        m_a[r] = rep_own;
        m_b[r] = rep[partner];
        m_h[r] = hraw;
        m_hf[r] = hf;
        m_s[r] = size_new;
      }
      if (keep) {
        const std::int64_t k = kept + (prefix & 0xffffffffLL);
        P[k] = static_cast<std::int32_t>(i);
        Q[k] = is_a ? static_cast<std::int32_t>(partner) : -1;
        T wp, wq;
        if (average) {  // float64 quotients rounded once, as the cpu engine's weights
          const double nsf = static_cast<double>(size_new);
          wp = static_cast<T>(__ddiv_rn(static_cast<double>(sz), nsf));
          wq = is_a ? static_cast<T>(__ddiv_rn(static_cast<double>(szp), nsf)) : T(0);
        } else {
          wp = is_a ? T(0.5) : T(1);
          wq = is_a ? T(0.5) : T(0);
        }
        WP[k] = wp;
        WQ[k] = wq;
        size_out[k] = size_new;
        rep_out[k] = rep_own;
        hfix_out[k] = is_a ? hf : hf_own;
      }
    }
    pairs += total >> 32;
    kept += total & 0xffffffffLL;
  }
  if (tid == 0) {
    const bool early = check && need >= 0 && below >= need;
    std::int64_t status = early ? 2 : pairs == 0 ? 3 : kept < 2 ? 1 : 0;
    if (before != 0) status = before;
    counts[0] = pairs;
    counts[1] = kept;
    counts[2] = below;
    counts[3] = early ? m : m + pairs;
    counts[4] = status;
    counts[5] = n;
  }
}

}  // namespace kernels
}  // namespace dcpe_cuda
