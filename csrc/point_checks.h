// Checks shared by the bindings that take points x (N, d), centers (k, d) and labels.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "macros.h"

namespace dcpe {

struct PointsAndCenters {
  bool is_f32;  // else float64
  int64_t n, d, k;
};

// x: 2-D float32/float64; centers: 2-D, same dtype and d, at least one row.
inline PointsAndCenters check_points_and_centers(const pybind11::array& x,
                                                 const pybind11::array& centers) {
  namespace py = pybind11;
  DCPE_CHECK_ARG(x.ndim() == 2, "x.ndim", x.ndim(), "expected a 2-D array (N, d)");
  DCPE_CHECK_ARG(centers.ndim() == 2, "centers.ndim", centers.ndim(),
                 "expected a 2-D array (k, d)");
  const bool is_f32 = py::isinstance<py::array_t<float>>(x);
  const bool is_f64 = py::isinstance<py::array_t<double>>(x);
  DCPE_CHECK_ARG(is_f32 || is_f64, "x.dtype", std::string(py::str(x.dtype())),
                 "expected float32 or float64");
  DCPE_CHECK_ARG(centers.dtype().is(x.dtype()), "centers.dtype",
                 std::string(py::str(centers.dtype())), "expected the dtype of x");
  const PointsAndCenters pc{is_f32, x.shape(0), x.shape(1), centers.shape(0)};
  DCPE_CHECK_ARG(pc.k >= 1, "k", pc.k, "expected at least one center");
  DCPE_CHECK_ARG(centers.shape(1) == pc.d, "centers.shape[1]", centers.shape(1),
                 "expected the d of x");
  return pc;
}

// labels: an int64 array of shape (n,) with every entry in [0, k); returns it C-contiguous.
inline pybind11::array_t<int64_t, pybind11::array::c_style> check_labels(
    const pybind11::array& labels, int64_t n, int64_t k) {
  namespace py = pybind11;
  DCPE_CHECK_ARG(py::isinstance<py::array_t<int64_t>>(labels) && labels.ndim() == 1 &&
                     labels.shape(0) == n,
                 "labels", std::string(py::str(labels.attr("shape"))) + " " +
                     std::string(py::str(labels.dtype())),
                 str_cat("expected an int64 array of shape (", n, ",)"));
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> lc(labels);
  const int64_t* l = lc.data();
  for (int64_t i = 0; i < n; ++i) {
    DCPE_CHECK_ARG(l[i] >= 0 && l[i] < k, str_cat("labels[", i, "]"), l[i],
                   str_cat("expected 0 <= label < k = ", k));
  }
  return lc;
}

}  // namespace dcpe
