// Dispatch of the balanced assignment (the assignment step of balanced k-means): argument
// checks naming the argument, dtype dispatch, GIL release and Ctrl-C polling around the
// auction of csrc/cpu/balanced_assign_cpu.cpp.

#include "balanced_assign.h"

#include <functional>
#include <string>
#include <vector>

#include "cpu/balanced_assign_cpu.h"
#include "macros.h"
#include "point_checks.h"
#include "released.h"

namespace py = pybind11;

namespace dcpe {

py::tuple balanced_assign_cpu(const py::array& x, const py::array& centers,
                              const py::array& capacity, py::array& prices,
                              int64_t n_candidates, double rel_eps, int num_threads,
                              const py::object& warm_labels, double start_rel_eps) {
  const PointsAndCenters pc = check_points_and_centers(x, centers);
  const bool is_f32 = pc.is_f32;
  const int64_t n = pc.n, d = pc.d, k = pc.k;
  DCPE_CHECK_ARG(k <= n, "k", k, "expected 1 <= k <= N");
  DCPE_CHECK_ARG(k <= 0x7fffffffLL, "k", k, "expected at most 2**31 - 1 centers");
  DCPE_CHECK_ARG(py::isinstance<py::array_t<int64_t>>(capacity) && capacity.ndim() == 1 &&
                     capacity.shape(0) == k,
                 "capacity", std::string(py::str(capacity.attr("shape"))),
                 "expected an int64 array of shape (k,)");
  DCPE_CHECK_ARG(py::isinstance<py::array_t<double>>(prices) && prices.ndim() == 1 &&
                     prices.shape(0) == k && (prices.flags() & py::array::c_style) &&
                     prices.writeable(),
                 "prices", std::string(py::str(prices.attr("shape"))),
                 "expected a writable contiguous float64 array of shape (k,)");
  DCPE_CHECK_ARG(n_candidates >= 1, "n_candidates", n_candidates, "must be >= 1");
  DCPE_CHECK_ARG(rel_eps > 0 && rel_eps < 1, "rel_eps", rel_eps, "expected 0 < rel_eps < 1");
  DCPE_CHECK_ARG(num_threads >= 0, "num_threads", num_threads, "must be >= 0 (0 = default)");
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> cap(capacity);
  int64_t total = 0;
  for (int64_t j = 0; j < k; ++j) {
    DCPE_CHECK_ARG(cap.data()[j] >= 1, "capacity", cap.data()[j], "every entry must be >= 1");
    total += cap.data()[j];
  }
  DCPE_CHECK_ARG(total == n, "sum(capacity)", total, "must equal N");

  py::array xc = py::array::ensure(x, py::array::c_style | py::array::forcecast);
  py::array cc = py::array::ensure(centers, py::array::c_style | py::array::forcecast);
  DCPE_CHECK_ARG(start_rel_eps >= 0, "start_rel_eps", start_rel_eps,
                 "must be >= 0 (0 = the cold schedule)");
  py::array_t<int64_t> labels(static_cast<py::ssize_t>(n));
  const bool warm = !warm_labels.is_none();
  if (warm) {
    const auto wl = check_labels(py::array(warm_labels), n, k);
    std::vector<int64_t> count(static_cast<size_t>(k), 0);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = wl.data()[i];
      DCPE_CHECK_ARG(++count[j] <= cap.data()[j], "labels", j,
                     "a center is given more points than its capacity");
    }
    std::copy(wl.data(), wl.data() + n, labels.mutable_data());
  }
  AuctionOptions opt;
  opt.rel_eps = rel_eps;
  opt.n_candidates = n_candidates;
  opt.num_threads = num_threads;
  opt.warm_labels = warm;
  opt.start_rel_eps = start_rel_eps;
  double* pr = static_cast<double*>(prices.mutable_data());
  int64_t* lab = labels.mutable_data();
  AuctionStats st;
  call_released([&](const std::function<bool()>& interrupted) {
    opt.interrupted = interrupted;
    st = is_f32 ? balanced_assign<float>(static_cast<const float*>(xc.data()), n, d,
                                         static_cast<const float*>(cc.data()), k, cap.data(),
                                         pr, lab, opt)
                : balanced_assign<double>(static_cast<const double*>(xc.data()), n, d,
                                          static_cast<const double*>(cc.data()), k, cap.data(),
                                          pr, lab, opt);
  });
  py::dict stats;
  stats["bids"] = st.bids;
  stats["refreshes"] = st.refreshes;
  stats["phases"] = st.phases;
  stats["eps"] = st.eps;
  return py::make_tuple(labels, stats);
}

}  // namespace dcpe
