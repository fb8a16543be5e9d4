#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace dcpe {

// Nearest row of centers (k, d) for every row of x (n, d), float32/float64 of one dtype;
// mask: None or a bool array (k,) of the usable centers.  Returns int64 (n,).
pybind11::array_t<int64_t> nearest_cpu(const pybind11::array& x, const pybind11::array& centers,
                                       const pybind11::object& mask, int num_threads);

}  // namespace dcpe
