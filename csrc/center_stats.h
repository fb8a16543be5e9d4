#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace dcpe {

// |x_i - centers[labels[i]]|^2 (float64, (n,)) for x (n, d) and centers (k, d) of one
// dtype, float32/float64; labels: int64 (n,) in [0, k).
pybind11::array_t<double> paired_sq_dist_cpu(const pybind11::array& x,
                                             const pybind11::array& centers,
                                             const pybind11::array& labels, int num_threads);

// (sums (k, d) float64, counts (k,) int64) of the rows of x (n, d) per label (int64 (n,)
// in [0, k)).
pybind11::tuple segment_sums_cpu(const pybind11::array& x, const pybind11::array& labels,
                                 int64_t k, int num_threads);

}  // namespace dcpe
