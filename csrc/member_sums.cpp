// Dispatch of the member distance sums (the coherence statistics of dcpe.report and
// dcpe.sweep): argument checks naming the argument, GIL release and Ctrl-C polling
// around csrc/cpu/member_sums_cpu.cpp.

#include "member_sums.h"

#include <functional>
#include <string>

#include "cpu/member_sums_cpu.h"
#include "macros.h"
#include "released.h"

namespace py = pybind11;

namespace dcpe {

py::array_t<double> member_sums_cpu(const py::array& x, const py::array& offsets,
                                    int num_threads) {
  DCPE_CHECK_ARG(py::isinstance<py::array_t<double>>(x), "x.dtype",
                 std::string(py::str(x.attr("dtype"))), "expected float64");
  DCPE_CHECK_ARG(x.ndim() == 2 && x.shape(1) >= 1, "x.shape",
                 std::string(py::str(x.attr("shape"))), "expected (n, d) with d >= 1");
  DCPE_CHECK_ARG(py::isinstance<py::array_t<int64_t>>(offsets) && offsets.ndim() == 1 &&
                     offsets.shape(0) >= 1,
                 "offsets", std::string(py::str(offsets.attr("shape"))),
                 "expected a 1-D int64 array of k + 1 >= 1 values");
  DCPE_CHECK_ARG(num_threads >= 0, "num_threads", num_threads, "must be >= 0 (0 = default)");
  const int64_t n = x.shape(0), d = x.shape(1), k = offsets.shape(0) - 1;
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> off(offsets);
  const int64_t* o = off.data();
  DCPE_CHECK_ARG(o[0] == 0 && o[k] == n, "offsets", str_cat("[", o[0], ", ..., ", o[k], "]"),
                 str_cat("expected to run from 0 to n = ", n));
  for (int64_t c = 0; c < k; ++c) {
    DCPE_CHECK_ARG(o[c] <= o[c + 1], "offsets", str_cat("[", c, "] > [", c + 1, "]"),
                   "expected nondecreasing values");
  }
  py::array xc = py::array::ensure(x, py::array::c_style);
  py::array_t<double> out(static_cast<py::ssize_t>(n));
  double* dst = out.mutable_data();
  call_released([&](const std::function<bool()>& interrupted) {
    member_distance_sums(static_cast<const double*>(xc.data()), n, d, o, k, dst, num_threads,
                         interrupted);
  });
  return out;
}

}  // namespace dcpe
