// Dispatch of the balanced assignment (the assignment step of balanced k-means): argument
// checks naming the argument, dtype dispatch, GIL release and Ctrl-C polling around the
// auction of csrc/cpu/balanced_assign_cpu.cpp.

#include "balanced_assign.h"

#include <functional>
#include <string>
#include <type_traits>
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
                              const py::object& warm_labels, double start_rel_eps,
                              const py::object& lists) {
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
  // lists: a dict carried from call to call (balanced k-means' steps): read when it holds a
  // previous call's lists for the same points and centers' shape, and then filled with
  // this call's.
  const bool keep_lists = !lists.is_none();
  DCPE_CHECK_ARG(!keep_lists || py::isinstance<py::dict>(lists), "lists",
                 std::string(py::str(py::type::of(lists).attr("__name__"))),
                 "expected None or a dict (from a previous call, or empty)");
  CarriedLists carry_in, carry_out;
  const bool carried = keep_lists && py::dict(lists).contains("ids");
  if (carried) {
    const py::dict held(lists);
    auto take = [&](const char* key, auto& vec, int64_t size) {
      using V = typename std::decay_t<decltype(vec)>::value_type;
      DCPE_CHECK_ARG(held.contains(key), "lists", key, "a kept list's entry is missing");
      const auto a = py::array_t<V, py::array::c_style | py::array::forcecast>(held[key]);
      DCPE_CHECK_ARG(a.ndim() == 1 && (size < 0 || a.shape(0) == size), "lists", key,
                     "a kept list's entry does not fit these points and centers");
      vec.assign(a.data(), a.data() + a.shape(0));
    };
    take("centers", carry_in.centers, k * d);
    take("prices", carry_in.prices, k);
    take("offsets", carry_in.offsets, n + 1);
    take("ids", carry_in.ids, -1);
    take("bound", carry_in.bound, n);
    take("nearest", carry_in.nearest, n);
    const auto& off = carry_in.offsets;
    bool ok = off[0] == 0 && off[n] == static_cast<int64_t>(carry_in.ids.size());
    for (int64_t i = 0; ok && i < n; ++i) ok = off[i] <= off[i + 1];
    for (const int32_t j : carry_in.ids) ok = ok && j >= 0 && j < k;
    DCPE_CHECK_ARG(ok, "lists", "offsets/ids", "the kept lists are not a previous call's");
  }
  AuctionOptions opt;
  if (carried) opt.carry_in = &carry_in;
  if (keep_lists) opt.carry_out = &carry_out;
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
  if (keep_lists) {
    py::dict held(lists);
    held.clear();
    if (!carry_out.offsets.empty()) {
      const auto as_array = [](const auto& vec) {
        using V = typename std::decay_t<decltype(vec)>::value_type;
        py::array_t<V> a(static_cast<py::ssize_t>(vec.size()));
        std::copy(vec.begin(), vec.end(), a.mutable_data());
        return a;
      };
      held["centers"] = as_array(carry_out.centers);
      held["prices"] = as_array(carry_out.prices);
      held["offsets"] = as_array(carry_out.offsets);
      held["ids"] = as_array(carry_out.ids);
      held["bound"] = as_array(carry_out.bound);
      held["nearest"] = as_array(carry_out.nearest);
    }
  }
  py::dict stats;
  stats["bids"] = st.bids;
  stats["refreshes"] = st.refreshes;
  stats["phases"] = st.phases;
  stats["carried"] = st.carried;
  stats["eps"] = st.eps;
  return py::make_tuple(labels, stats);
}

}  // namespace dcpe
