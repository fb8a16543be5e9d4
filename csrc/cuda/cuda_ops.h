// CUDA kernels of dcpe: reciprocal-nearest-neighbour (RNN) rounds for exact agglomerative
// clustering (Murtagh 1983; Müllner 2011, "Modern hierarchical, agglomerative clustering
// algorithms").  Plain C++ launchers (no pybind11, no torch): device pointers and the
// stream are passed as integers; errors are thrown as std::runtime_error.
#pragma once

#include <cstdint>

namespace pybind11 {
class module_;
}

// Registers the submodule ``dcpe._C.cuda`` (defined in bindings_cuda.cpp).
void dcpe_register_cuda(pybind11::module_& m);

namespace dcpe_cuda {

// dtype codes
constexpr int kFloat32 = 0;
constexpr int kFloat64 = 1;

// D[i*ld + j] = metric(x_i, x_j) for i, j < n (+inf on the diagonal), from direct
// differences; nn[i] / nnd[i] = argmin / min of row i (ties to the smallest column).
// metric: 0 euclidean, 1 squared euclidean, 2 half squared euclidean.
// x: (n, dim) row-major, dtype; D: dtype; nn: int64; nnd: dtype.
void pairwise_nn(int dtype, std::uintptr_t x, std::uintptr_t D, std::uintptr_t nn,
                 std::uintptr_t nnd, std::int64_t n, std::int64_t dim, std::int64_t ld,
                 int metric, std::uintptr_t stream);

// Rows row0 .. row0+nrows-1 of the merged and compacted matrix of the next round:
// new slot i is old slot p[i] (+ old slot q[i] if q[i] >= 0); mode 0 weighted sum with
// weights wp/wq, 1 min, 2 max; +inf diagonal.  Local row r is written at dst[r*ld_dst].
// nn/nnd receive the row argmin/min at the global row index.
// p, q: int32; wp, wq, src, dst, nnd: dtype; nn: int64.
// count (int64, or 0 for none): round_scan's record on the device; with it, n_new and ld_dst
// are count[1] and ld_src is count[5] (the old order), read by the kernel, n_new and nrows
// given here are an upper bound of count[1] (the grid), and row0 must be 0, so that the
// merge can be launched before the host reads the record.
void merge_compact_nn(int dtype, std::uintptr_t src, std::int64_t ld_src, std::uintptr_t dst,
                      std::int64_t ld_dst, std::uintptr_t p, std::uintptr_t q,
                      std::uintptr_t wp, std::uintptr_t wq, std::int64_t n_new,
                      std::int64_t row0, std::int64_t nrows, int mode, std::uintptr_t nn,
                      std::uintptr_t nnd, std::uintptr_t count, std::uintptr_t stream);

// One round's O(n) bookkeeping in one single-block launch (semantics and PyTorch reference:
// dcpe_kernels/round.py): reciprocal pairs of nn[0..n), their merge records at m.. of
// m_a/m_b/m_h/m_hf/m_s, the next round's slots p/q (int32) and weights wp/wq, and the new
// size/rep/hfix; counts (int64, 6), the round's record = pairs, slots kept, recorded
// merges below min(nnd) (0 unless check), merges recorded after the round, status (0 go
// on, 1 finished, 2 early stop: below >= need >= 0, 3 no pair), n.  prev (int64, or 0):
// the record of the round before, from which a chained round takes n, m and check (m >=
// need), doing nothing after a round whose status is not 0.  cap <= 0: no size cap.
// nn, size, rep, m_a, m_b, m_s: int64; the others dtype.
void round_scan(int dtype, std::int64_t n, std::uintptr_t nn, std::uintptr_t nnd,
                std::uintptr_t size, std::uintptr_t rep, std::uintptr_t hfix,
                std::uintptr_t m_a, std::uintptr_t m_b, std::uintptr_t m_h, std::uintptr_t m_hf,
                std::uintptr_t m_s, std::int64_t m, bool check, std::int64_t cap, bool average,
                std::uintptr_t p, std::uintptr_t q, std::uintptr_t wp, std::uintptr_t wq,
                std::uintptr_t size_out, std::uintptr_t rep_out, std::uintptr_t hfix_out,
                std::uintptr_t counts, std::uintptr_t prev, std::int64_t need,
                std::uintptr_t stream);

// Matrix-free engine (linear_kernels.cu; PyTorch references in dcpe_kernels/centroid.py and
// dcpe_kernels/pair_average.py).  mu_t: (dim, n) contiguous dtype, column c the centroid of
// cluster c; s2, rad, tau: (n,) dtype.  dd(a, b): rounded squares of the differences summed
// for k = 0 .. dim-1 in that order (no fma).

// out[a] / nn[a] = min / smallest argmin over b != a of sqrt(dd + (s2[a] + s2[b])) (mode 0)
// or scale * (dd + (s2[a] + s2[b])) (mode 1, scale 0.5 or 1.0); +inf / 0 when n == 1;
// for the rows a = rows[0 .. nrows) only (int32, distinct, < n; the others untouched).
// out: dtype; nn: int64.
void centroid_nn(int dtype, std::uintptr_t mu_t, std::uintptr_t s2, std::int64_t n,
                 std::int64_t dim, int mode, double scale, std::uintptr_t out,
                 std::uintptr_t nn, std::uintptr_t rows, std::int64_t nrows,
                 std::uintptr_t stream);

// Emits (a, b), for a in rows[0 .. nrows), iff cand(a, b) and (a < b or not cand(b, a) or
// needy[b] == 0; needy: int8 (n,), 1 exactly for the rows scanned), with D = sqrt(dd),
// lb = D if D + (rad[a] + rad[b]) == 0 else max(D, (dd + (s2[a] + s2[b])) / that sum) and
// cand(a, b) = lb - absm <= (tau[a] + absm) * (1 + rel), all in dtype: k = count[0]++
// (atomic), and pa[k] = a, pb[k] = b if k < capacity.  Order unspecified; count keeps
// counting past capacity.  pa, pb: int32; count: int64 (1,), zeroed by the caller.
void candidate_pairs(int dtype, std::uintptr_t mu_t, std::uintptr_t s2, std::uintptr_t rad,
                     std::uintptr_t tau, std::int64_t n, std::int64_t dim, double rel,
                     double absm, std::uintptr_t pa, std::uintptr_t pb, std::uintptr_t count,
                     std::int64_t capacity, std::uintptr_t rows, std::int64_t nrows,
                     std::uintptr_t needy, std::uintptr_t stream);

// The two scans above with dd from a tile of the Gram matrix of the centred float64
// centroids (dcpe_kernels/gram.py): g float64, row i (cluster rows[i], i < nrows) and
// column b (c0 <= b < c1 <= n) at g[i * g_rs + (b - c0) * g_cs]; nrm float64 (n,) the
// squared norms; lo = max(0, s - 2g - gerr s), hi = s - 2g + gerr s with s = nrm[a] +
// nrm[b].  centroid_nn_gram: out[a] / nn[a] = the smallest hi + (s2[a] + s2[b]) over the
// tile's b != a and its smallest argmin, where c0 > 0 merged with out / nn (a strictly
// smaller value only; the caller takes the root after the last tile).
// candidate_pairs_gram: lb = max(sqrt(lo), (lo + t) / (sqrt(hi) + r)), and (a, b) emitted
// iff cand(a, b) where needy[b] == 0, iff a < b and (cand(a, b) or cand(b, a)) where
// needy[b] != 0.
void centroid_nn_gram(int dtype, std::uintptr_t g, std::int64_t g_rs, std::int64_t g_cs,
                      std::uintptr_t nrm, double gerr, std::uintptr_t s2, std::int64_t n,
                      std::int64_t c0, std::int64_t c1, std::uintptr_t out, std::uintptr_t nn,
                      std::uintptr_t rows, std::int64_t nrows, std::uintptr_t stream);

void candidate_pairs_gram(int dtype, std::uintptr_t g, std::int64_t g_rs, std::int64_t g_cs,
                          std::uintptr_t nrm, double gerr, std::uintptr_t s2,
                          std::uintptr_t rad, std::uintptr_t tau, std::int64_t n,
                          std::int64_t c0, std::int64_t c1, double rel, double absm,
                          std::uintptr_t pa, std::uintptr_t pb, std::uintptr_t count,
                          std::int64_t capacity, std::uintptr_t rows, std::int64_t nrows,
                          std::uintptr_t needy, std::uintptr_t stream);

// val[k] for k < min(count[0], capacity) (count read on the device): the average over the
// tokens i of lo = min(pa[k], pb[k]) and j of hi = max(...) of |x_i - x_j| (rounded as
// pairwise_nn's metric 0), summed in float64 in a fixed order, divided in float64 by
// size_lo * size_hi, rounded once to dtype.  x: ntok tokens of dim coordinates in dtype,
// token t's coordinate k at x[t * ts + k * cs] (rows of a row-major (ntok, dim) array:
// ts = dim, cs = 1; columns of a row-major (dim, ld) array: ts = 1, cs = ld), cluster c
// the tokens offsets[c] .. offsets[c] + sizes[c] - 1 (int64); pa, pb: int32; val: dtype.
// val_f64: val is float64 whatever dtype is (the parts of a large pair, which the caller
// sums in float64).
void pair_average(int dtype, std::uintptr_t x, std::int64_t dim, std::int64_t ts,
                  std::int64_t cs, std::uintptr_t offsets,
                  std::uintptr_t sizes, std::uintptr_t pa, std::uintptr_t pb,
                  std::uintptr_t count, std::int64_t capacity, std::uintptr_t val,
                  bool val_f64, std::uintptr_t stream);

// out[a*ld + b] = the average of pair_average for every a != b < n (exactly symmetric),
// +inf on the diagonal; nn / nnd = row argmin (ties to the smallest column) / minimum.
// x, ts, cs, offsets, sizes as in pair_average; out, nnd: dtype; nn: int64.
void cluster_matrix(int dtype, std::uintptr_t x, std::int64_t dim, std::int64_t ts,
                    std::int64_t cs, std::uintptr_t offsets,
                    std::uintptr_t sizes, std::int64_t n, std::uintptr_t out, std::int64_t ld,
                    std::uintptr_t nn, std::uintptr_t nnd, std::uintptr_t stream);

// Number of visible CUDA devices (0 without a driver); never throws.
int device_count();

}  // namespace dcpe_cuda
