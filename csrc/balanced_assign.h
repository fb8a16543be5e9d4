#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

namespace dcpe {

// Balanced assignment of the rows of x (n, d) to the rows of centers (k, d), with
// capacity (k,) summing to n; prices (k,) float64 are read (a start) and updated.
// Returns (labels (n,) int64, stats dict).  lists: None, or a dict that carries the
// candidate lists from one call to the next (read when filled, then filled).
pybind11::tuple balanced_assign_cpu(const pybind11::array& x, const pybind11::array& centers,
                                    const pybind11::array& capacity, pybind11::array& prices,
                                    int64_t n_candidates, double rel_eps, int num_threads,
                                    const pybind11::object& warm_labels,
                                    double start_rel_eps, const pybind11::object& lists);

}  // namespace dcpe
