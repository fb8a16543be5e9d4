// Dispatch of the nearest-center search (the assignment step of k-means) and of the greedy
// k-means++ seeding: argument checks naming the argument, dtype dispatch, GIL release and
// Ctrl-C polling around csrc/cpu/nearest_cpu.cpp.

#include "nearest.h"

#include <functional>
#include <string>
#include <vector>

#include "cpu/nearest_cpu.h"
#include "cpu/linkage_cpu.h"
#include "cpu/nearest_scan_cpu.h"
#include "macros.h"
#include "point_checks.h"
#include "released.h"

namespace py = pybind11;

namespace dcpe {

py::array_t<int64_t> nearest_cpu(const py::array& x, const py::array& centers,
                                 const py::object& mask, int num_threads) {
  const PointsAndCenters pc = check_points_and_centers(x, centers);
  const bool is_f32 = pc.is_f32;
  const int64_t n = pc.n, d = pc.d, k = pc.k;
  DCPE_CHECK_ARG(num_threads >= 0, "num_threads", num_threads, "must be >= 0 (0 = default)");
  std::vector<uint8_t> usable;
  if (!mask.is_none()) {
    DCPE_CHECK_ARG(py::isinstance<py::array_t<bool>>(mask), "mask.dtype",
                   std::string(py::str(mask.attr("dtype"))), "expected bool");
    py::array_t<bool, py::array::c_style | py::array::forcecast> m(mask);
    DCPE_CHECK_ARG(m.ndim() == 1 && m.shape(0) == k, "mask",
                   std::string(py::str(m.attr("shape"))), "expected shape (k,)");
    usable.assign(m.data(), m.data() + k);
    int64_t count = 0;
    for (uint8_t u : usable) count += u ? 1 : 0;
    DCPE_CHECK_ARG(count >= 1, "mask", count, "no usable center");
  }
  py::array xc = py::array::ensure(x, py::array::c_style | py::array::forcecast);
  py::array cc = py::array::ensure(centers, py::array::c_style | py::array::forcecast);
  py::array_t<int64_t> out(static_cast<py::ssize_t>(n));
  int64_t* o = out.mutable_data();
  const uint8_t* mk = usable.empty() ? nullptr : usable.data();
  call_released([&](const std::function<bool()>& interrupted) {
    if (is_f32) {
      nearest_center<float>(static_cast<const float*>(xc.data()), n, d,
                            static_cast<const float*>(cc.data()), k, mk, o, num_threads,
                            interrupted);
    } else {
      nearest_center<double>(static_cast<const double*>(xc.data()), n, d,
                             static_cast<const double*>(cc.data()), k, mk, o, num_threads,
                             interrupted);
    }
  });
  return out;
}

py::array_t<int64_t> nearest_refine_cpu(const py::array& x, const py::array& centers,
                                        const py::array& approx, const py::array& slack,
                                        int64_t first, int num_threads) {
  const PointsAndCenters pc = check_points_and_centers(x, centers);
  const int64_t m = pc.n, d = pc.d, k = pc.k;
  const bool a_f32 = py::isinstance<py::array_t<float>>(approx);
  DCPE_CHECK_ARG((a_f32 || py::isinstance<py::array_t<double>>(approx)) &&
                     approx.ndim() == 2 && approx.shape(0) == m && approx.shape(1) == k,
                 "approx", std::string(py::str(approx.attr("shape"))) + " " +
                     std::string(py::str(approx.dtype())),
                 "expected a float32 or float64 array of shape (m, k)");
  DCPE_CHECK_ARG(!a_f32 || pc.is_f32, "approx.dtype", "float32",
                 "expected float64 for float64 points");
  DCPE_CHECK_ARG(py::isinstance<py::array_t<double>>(slack) && slack.ndim() == 1 &&
                     slack.shape(0) == m,
                 "slack", std::string(py::str(slack.attr("shape"))),
                 "expected a float64 array of shape (m,)");
  DCPE_CHECK_ARG(first >= 0 && first < k, "first", first, "expected 0 <= first < k");
  DCPE_CHECK_ARG(num_threads >= 0, "num_threads", num_threads, "must be >= 0 (0 = default)");
  py::array xc = py::array::ensure(x, py::array::c_style | py::array::forcecast);
  py::array cc = py::array::ensure(centers, py::array::c_style | py::array::forcecast);
  py::array ac = py::array::ensure(approx, py::array::c_style | py::array::forcecast);
  py::array_t<double, py::array::c_style | py::array::forcecast> sc(slack);
  py::array_t<int64_t> out(static_cast<py::ssize_t>(m));
  int64_t* o = out.mutable_data();
  const int threads = resolve_threads(num_threads);
  call_released([&](const std::function<bool()>& interrupted) {
    if (pc.is_f32 && a_f32) {
      nearest_center_refine<float, float>(static_cast<const float*>(xc.data()), m, d,
                                          static_cast<const float*>(cc.data()), k,
                                          static_cast<const float*>(ac.data()), sc.data(),
                                          first, o, threads, interrupted);
    } else if (pc.is_f32) {
      nearest_center_refine<float, double>(static_cast<const float*>(xc.data()), m, d,
                                           static_cast<const float*>(cc.data()), k,
                                           static_cast<const double*>(ac.data()), sc.data(),
                                           first, o, threads, interrupted);
    } else {
      nearest_center_refine<double, double>(static_cast<const double*>(xc.data()), m, d,
                                            static_cast<const double*>(cc.data()), k,
                                            static_cast<const double*>(ac.data()),
                                            sc.data(), first, o, threads, interrupted);
    }
  });
  return out;
}

py::tuple nearest_among_cpu(const py::array& x, const py::array& centers,
                            const py::array& cand, int num_threads) {
  const PointsAndCenters pc = check_points_and_centers(x, centers);
  const int64_t m = pc.n, d = pc.d, k = pc.k;
  DCPE_CHECK_ARG(py::isinstance<py::array_t<int64_t>>(cand) && cand.ndim() == 2 &&
                     cand.shape(0) == m && cand.shape(1) >= 1,
                 "cand", std::string(py::str(cand.attr("shape"))) + " " +
                     std::string(py::str(cand.dtype())),
                 str_cat("expected an int64 array of shape (", m, ", r) with r >= 1"));
  DCPE_CHECK_ARG(d >= 1, "x.shape[1]", d, "expected d >= 1");
  DCPE_CHECK_ARG(num_threads >= 0, "num_threads", num_threads, "must be >= 0 (0 = default)");
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> cc_ids(cand);
  const int64_t r = cand.shape(1);
  const int64_t* ids = cc_ids.data();
  for (int64_t q = 0; q < m * r; ++q) {
    DCPE_CHECK_ARG(ids[q] >= 0 && ids[q] < k, str_cat("cand[", q / r, ", ", q % r, "]"), ids[q],
                   str_cat("expected 0 <= index < k = ", k));
  }
  py::array xc = py::array::ensure(x, py::array::c_style | py::array::forcecast);
  py::array cc = py::array::ensure(centers, py::array::c_style | py::array::forcecast);
  py::array_t<int64_t> out(static_cast<py::ssize_t>(m));
  py::array_t<double> dist(static_cast<py::ssize_t>(m));
  int64_t* o = out.mutable_data();
  double* od = dist.mutable_data();
  const int threads = resolve_threads(num_threads);
  call_released([&](const std::function<bool()>& interrupted) {
    if (pc.is_f32) {
      nearest_center_among<float>(static_cast<const float*>(xc.data()), m, d,
                                  static_cast<const float*>(cc.data()), ids, r, o, od,
                                  threads, interrupted);
    } else {
      nearest_center_among<double>(static_cast<const double*>(xc.data()), m, d,
                                   static_cast<const double*>(cc.data()), ids, r, o, od,
                                   threads, interrupted);
    }
  });
  return py::make_tuple(out, dist);
}

py::array_t<int64_t> kmeanspp_cpu(const py::array& x, int64_t k, int64_t first,
                                  const py::array& u, int num_threads) {
  const PointsAndCenters pc = check_points_and_centers(x, x);
  const int64_t n = pc.n, d = pc.d;
  DCPE_CHECK_ARG(k >= 1 && k <= n, "k", k, "expected 1 <= k <= N");
  DCPE_CHECK_ARG(first >= 0 && first < n, "first", first, "expected 0 <= first < N");
  DCPE_CHECK_ARG(py::isinstance<py::array_t<double>>(u) && u.ndim() == 2 && u.shape(0) == k - 1,
                 "u", std::string(py::str(u.attr("shape"))),
                 "expected a float64 array of shape (k - 1, trials)");
  const int64_t trials = u.shape(1);
  DCPE_CHECK_ARG(trials >= 1 || k == 1, "u.shape[1]", trials, "expected at least one trial");
  DCPE_CHECK_ARG(num_threads >= 0, "num_threads", num_threads, "must be >= 0 (0 = default)");
  py::array xc = py::array::ensure(x, py::array::c_style | py::array::forcecast);
  py::array_t<double, py::array::c_style | py::array::forcecast> uc(u);
  py::array_t<int64_t> out(static_cast<py::ssize_t>(k));
  int64_t* o = out.mutable_data();
  call_released([&](const std::function<bool()>& interrupted) {
    if (pc.is_f32) {
      kmeanspp_seeds<float>(static_cast<const float*>(xc.data()), n, d, k, first, uc.data(),
                            trials, o, num_threads, interrupted);
    } else {
      kmeanspp_seeds<double>(static_cast<const double*>(xc.data()), n, d, k, first,
                             uc.data(), trials, o, num_threads, interrupted);
    }
  });
  return out;
}

}  // namespace dcpe
