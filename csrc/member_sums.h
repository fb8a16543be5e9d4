#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace dcpe {

// For every row of x (n, d) float64, whose clusters are the runs of rows between
// consecutive offsets (int64, k + 1, from 0 to n), the sum of its Euclidean distances to
// its cluster's members.  Returns float64 (n,).
pybind11::array_t<double> member_sums_cpu(const pybind11::array& x,
                                          const pybind11::array& offsets, int num_threads);

}  // namespace dcpe
