#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace dcpe {

// Nearest row of centers (k, d) for every row of x (n, d), float32/float64 of one dtype;
// mask: None or a bool array (k,) of the usable centers.  Returns int64 (n,).
pybind11::array_t<int64_t> nearest_cpu(const pybind11::array& x, const pybind11::array& centers,
                                       const pybind11::object& mask, int num_threads);

// The nearest usable row of centers for every row of x (m, d), as nearest_cpu answers,
// from approx (m, k) float64: |c_j|^2 - 2 x_i.c_j (+inf for a center to skip), within
// slack[i] (m,) float64 of the exact |x_i - c_j|^2 - |x_i|^2; only the centers within
// 2 slack[i] of the row's smallest approx get their distances computed.  first: the
// answer for a row with none (every center skipped).  Returns int64 (m,).
pybind11::array_t<int64_t> nearest_refine_cpu(const pybind11::array& x,
                                              const pybind11::array& centers,
                                              const pybind11::array& approx,
                                              const pybind11::array& slack, int64_t first,
                                              int num_threads);

// For every row i of x (m, d): of the centers cand[i] (int64 (m, r), r >= 1, indices into
// centers (k, d)), the nearest by nearest_cpu's distances above 12 dimensions (the scan's),
// ties to the smaller index.  Returns (int64 (m,), its squared distance float64 (m,)).
pybind11::tuple nearest_among_cpu(const pybind11::array& x, const pybind11::array& centers,
                                  const pybind11::array& cand, int num_threads);

// Greedy k-means++ seeds of the rows of x (n, d): first index, then (k - 1) * trials
// uniforms u (float64, C order) drive the D^2 draws.  Returns int64 (k,).
pybind11::array_t<int64_t> kmeanspp_cpu(const pybind11::array& x, int64_t k, int64_t first,
                                        const pybind11::array& u, int num_threads);

}  // namespace dcpe
