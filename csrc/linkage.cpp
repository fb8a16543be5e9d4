// Dispatch of the linkage operation: argument checks, dtype and method dispatch, GIL
// release and Ctrl-C polling around the C++ CPU engine (csrc/cpu/).

#include "linkage.h"

#include <cstring>
#include <functional>

#include "cpu/linkage_cpu.h"
#include "macros.h"
#include "released.h"

namespace py = pybind11;

namespace dcpe {

Method parse_method(const std::string& name) {
  if (name == "average") return Method::Average;
  if (name == "single") return Method::Single;
  if (name == "complete") return Method::Complete;
  if (name == "weighted") return Method::Weighted;
  if (name == "centroid") return Method::Centroid;
  if (name == "ward") return Method::Ward;
  DCPE_CHECK_ARG(false, "linkage", "'" + name + "'",
                 "expected one of 'average', 'centroid', 'single', 'complete', 'weighted', "
                 "'ward'");
  return Method::Average;
}

Metric parse_metric(const std::string& name) {
  if (name == "euclidean") return Metric::Euclidean;
  if (name == "sqeuclidean") return Metric::SqEuclidean;
  if (name == "cosine") return Metric::Cosine;
  DCPE_CHECK_ARG(false, "metric", "'" + name + "'",
                 "expected one of 'euclidean', 'sqeuclidean', 'cosine'");
  return Metric::Euclidean;
}

namespace {

template <typename T>
std::vector<Merge> run(const T* data, int64_t n, int64_t d, const RunOptions& opt,
                       bool linear) {
  if (opt.method == Method::Centroid) return centroid_linkage<T>(data, n, d, opt);
  if (opt.method == Method::Ward) return ward_linkage<T>(data, n, d, opt);
  if (linear) return linear_linkage<T>(data, n, d, opt);
  return matrix_linkage<T>(data, n, d, opt);
}

py::array_t<double> to_array(const std::vector<double>& z) {
  const py::ssize_t m = static_cast<py::ssize_t>(z.size() / 4);
  py::array_t<double> out({m, py::ssize_t(4)});
  if (!z.empty()) std::memcpy(out.mutable_data(), z.data(), z.size() * sizeof(double));
  return out;
}

}  // namespace

py::array_t<double> linkage_cpu(const py::array& x, const std::string& method,
                                 const std::string& metric, int64_t max_cluster_size,
                                 int num_threads, int64_t max_merges,
                                 const std::string& engine, std::size_t cache_bytes,
                                 const py::object& progress) {
  DCPE_CHECK_ARG(x.ndim() == 2, "x.ndim", x.ndim(), "expected a 2-D array (N, d)");
  const bool is_f32 = py::isinstance<py::array_t<float>>(x);
  const bool is_f64 = py::isinstance<py::array_t<double>>(x);
  DCPE_CHECK_ARG(is_f32 || is_f64, "x.dtype", std::string(py::str(x.dtype())),
                 "expected float32 or float64");
  DCPE_CHECK_ARG(max_cluster_size >= 0, "max_cluster_size", max_cluster_size,
                 "must be >= 1 (0 means no cap)");
  DCPE_CHECK_ARG(num_threads >= 0, "num_threads", num_threads, "must be >= 0 (0 = default)");
  DCPE_CHECK_ARG(max_merges >= 0, "max_merges", max_merges, "must be >= 0 (0 = all)");
  RunOptions opt;
  opt.method = parse_method(method);
  opt.metric = parse_metric(metric);
  DCPE_CHECK(!is_centroid_method(opt.method) || opt.metric == Metric::Euclidean,
             "linkage='", method, "' is defined for metric='euclidean' only, got metric='",
             metric, "'");
  opt.max_cluster_size = max_cluster_size;
  opt.num_threads = num_threads;
  opt.max_merges = max_merges;
  DCPE_CHECK_ARG(engine == "matrix" || engine == "linear", "engine", "'" + engine + "'",
                 "expected 'matrix' or 'linear'");
  const bool linear = engine == "linear" && !is_centroid_method(opt.method);
  DCPE_CHECK(!linear || opt.method == Method::Average,
             "engine='linear' computes average linkage only, got linkage='", method, "'");
  opt.cache_bytes = cache_bytes;
  if (!progress.is_none()) {
    opt.progress = [progress](int64_t done) {
      pybind11::gil_scoped_acquire gil;
      progress(done);
    };
  }
  const int64_t n = x.shape(0), d = x.shape(1);
  DCPE_CHECK_ARG(n >= 1, "N", n, "need at least one row");
  DCPE_CHECK_ARG(d >= 1, "d", d, "need at least one column");
  // A C-contiguous copy owned here (the input is never modified).
  py::array contiguous = py::array::ensure(x, py::array::c_style | py::array::forcecast);
  std::vector<double> z;
  call_released([&](const std::function<bool()>& interrupted) {
    opt.interrupted = interrupted;
    std::vector<Merge> merges =
        is_f32 ? run<float>(static_cast<const float*>(contiguous.data()), n, d, opt, linear)
               : run<double>(static_cast<const double*>(contiguous.data()), n, d, opt, linear);
    z = merges_to_z(n, std::move(merges));
  });
  return to_array(z);
}

py::array_t<int64_t> cut_cpu(const py::array_t<double, py::array::c_style | py::array::forcecast>& z,
                             int64_t n, int64_t k) {
  DCPE_CHECK_ARG(z.ndim() == 2 && z.shape(1) == 4, "Z.shape", std::string(py::str(z.attr("shape"))),
                 "expected (m, 4), a SciPy linkage matrix");
  std::vector<int64_t> labels;
  {
    py::gil_scoped_release release;
    labels = cut_tree(z.data(), z.shape(0), n, k);
  }
  py::array_t<int64_t> out(static_cast<py::ssize_t>(labels.size()));
  if (!labels.empty()) std::memcpy(out.mutable_data(), labels.data(), labels.size() * sizeof(int64_t));
  return out;
}

std::size_t workspace_bytes_cpu(int64_t n, int64_t d, const std::string& method, int elem_size,
                                int num_threads, const std::string& engine,
                                const std::string& metric, std::size_t cache_bytes) {
  DCPE_CHECK_ARG(elem_size == 4 || elem_size == 8, "elem_size", elem_size, "expected 4 or 8");
  DCPE_CHECK_ARG(engine == "matrix" || engine == "linear", "engine", "'" + engine + "'",
                 "expected 'matrix' or 'linear'");
  const Method m = parse_method(method);
  if (engine == "linear" && !is_centroid_method(m)) {
    return linear_workspace_bytes(n, d, static_cast<std::size_t>(elem_size),
                                  has_closed_form(m, parse_metric(metric)), cache_bytes,
                                  num_threads);
  }
  return workspace_bytes(n, d, m, static_cast<std::size_t>(elem_size), num_threads);
}

}  // namespace dcpe
