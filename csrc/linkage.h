#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace dcpe {

// x: (N, d) float32/float64 -> Z (m, 4) float64 in SciPy format, greedy order.
pybind11::array_t<double> linkage_cpu(const pybind11::array& x, const std::string& method,
                                      const std::string& metric, int64_t max_cluster_size,
                                      int num_threads, int64_t max_merges,
                                      const std::string& engine, std::size_t cache_bytes,
                                      const pybind11::object& progress);

// First min(m, n - k) merges of Z -> canonical labels.
pybind11::array_t<int64_t> cut_cpu(
    const pybind11::array_t<double, pybind11::array::c_style | pybind11::array::forcecast>& z,
    int64_t n, int64_t k);

std::size_t workspace_bytes_cpu(int64_t n, int64_t d, const std::string& method, int elem_size,
                                int num_threads, const std::string& engine,
                                const std::string& metric, std::size_t cache_bytes);

}  // namespace dcpe
