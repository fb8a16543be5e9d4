// Dispatch of the per-step statistics of k-means (the distances to the assigned centers
// and the per-cluster sums of the center step): argument checks naming the argument, dtype
// dispatch and GIL release around csrc/cpu/center_stats_cpu.cpp.  Each call is one pass
// over the points, so none polls Ctrl-C.

#include "center_stats.h"

#include <functional>
#include <string>

#include "cpu/center_stats_cpu.h"
#include "macros.h"
#include "point_checks.h"
#include "released.h"

namespace py = pybind11;

namespace dcpe {
py::array_t<double> paired_sq_dist_cpu(const py::array& x, const py::array& centers,
                                       const py::array& labels, int num_threads) {
  const PointsAndCenters pc = check_points_and_centers(x, centers);
  DCPE_CHECK_ARG(pc.d >= 1, "x.shape[1]", pc.d, "expected d >= 1");
  DCPE_CHECK_ARG(num_threads >= 0, "num_threads", num_threads, "must be >= 0 (0 = default)");
  const auto lc = check_labels(labels, pc.n, pc.k);
  py::array xc = py::array::ensure(x, py::array::c_style | py::array::forcecast);
  py::array cc = py::array::ensure(centers, py::array::c_style | py::array::forcecast);
  py::array_t<double> out(static_cast<py::ssize_t>(pc.n));
  double* o = out.mutable_data();
  call_released([&](const std::function<bool()>&) {
    if (pc.is_f32) {
      paired_sq_distances<float>(static_cast<const float*>(xc.data()), pc.n, pc.d,
                                 static_cast<const float*>(cc.data()), lc.data(), o,
                                 num_threads);
    } else {
      paired_sq_distances<double>(static_cast<const double*>(xc.data()), pc.n, pc.d,
                                  static_cast<const double*>(cc.data()), lc.data(), o,
                                  num_threads);
    }
  });
  return out;
}

py::tuple segment_sums_cpu(const py::array& x, const py::array& labels, int64_t k,
                           int num_threads) {
  DCPE_CHECK_ARG(x.ndim() == 2, "x.ndim", x.ndim(), "expected a 2-D array (n, d)");
  const bool is_f32 = py::isinstance<py::array_t<float>>(x);
  DCPE_CHECK_ARG(is_f32 || py::isinstance<py::array_t<double>>(x), "x.dtype",
                 std::string(py::str(x.dtype())), "expected float32 or float64");
  DCPE_CHECK_ARG(k >= 1, "k", k, "expected k >= 1");
  DCPE_CHECK_ARG(num_threads >= 0, "num_threads", num_threads, "must be >= 0 (0 = default)");
  const int64_t n = x.shape(0), d = x.shape(1);
  const auto lc = check_labels(labels, n, k);
  py::array xc = py::array::ensure(x, py::array::c_style | py::array::forcecast);
  py::array_t<double> sums({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(d)});
  py::array_t<int64_t> counts(static_cast<py::ssize_t>(k));
  double* s = sums.mutable_data();
  int64_t* c = counts.mutable_data();
  call_released([&](const std::function<bool()>&) {
    if (is_f32) {
      segment_sums<float>(static_cast<const float*>(xc.data()), n, d, lc.data(), k, s, c,
                          num_threads);
    } else {
      segment_sums<double>(static_cast<const double*>(xc.data()), n, d, lc.data(), k, s, c,
                           num_threads);
    }
  });
  return py::make_tuple(sums, counts);
}

}  // namespace dcpe
