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
void merge_compact_nn(int dtype, std::uintptr_t src, std::int64_t ld_src, std::uintptr_t dst,
                      std::int64_t ld_dst, std::uintptr_t p, std::uintptr_t q,
                      std::uintptr_t wp, std::uintptr_t wq, std::int64_t n_new,
                      std::int64_t row0, std::int64_t nrows, int mode, std::uintptr_t nn,
                      std::uintptr_t nnd, std::uintptr_t stream);

// Number of visible CUDA devices (0 without a driver); never throws.
int device_count();

}  // namespace dcpe_cuda
