// Dispatch of the nearest-center search (the assignment step of k-means): argument checks
// naming the argument, dtype dispatch, GIL release and Ctrl-C polling around
// csrc/cpu/nearest_cpu.cpp.

#include "nearest.h"

#include <Python.h>

#include <string>
#include <vector>

#include "cpu/nearest_cpu.h"
#include "macros.h"
#include "point_checks.h"

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
  auto interrupted = []() {
    py::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;
  };
  bool stopped = false;
  {
    py::gil_scoped_release release;
    try {
      if (is_f32) {
        nearest_center<float>(static_cast<const float*>(xc.data()), n, d,
                              static_cast<const float*>(cc.data()), k, mk, o, num_threads,
                              interrupted);
      } else {
        nearest_center<double>(static_cast<const double*>(xc.data()), n, d,
                               static_cast<const double*>(cc.data()), k, mk, o, num_threads,
                               interrupted);
      }
    } catch (const Interrupted&) {
      stopped = true;
    }
  }
  if (stopped) throw py::error_already_set();
  return out;
}

}  // namespace dcpe
