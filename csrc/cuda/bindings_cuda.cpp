// pybind11 registration of the CUDA kernels as ``dcpe._C.cuda`` (compiled by the host
// compiler).  The kernels implement reciprocal-nearest-neighbour rounds (Murtagh 1983;
// Müllner 2011); see rnn_kernels.cu and, for the matrix-free engine,
// linear_kernels.cu.  Nothing here touches CUDA at import time.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cuda_ops.h"

namespace py = pybind11;

void dcpe_register_cuda(py::module_& m) {
  py::module_ c = m.def_submodule(
      "cuda", "CUDA kernels of the reciprocal-nearest-neighbour engine (pointers as ints).");
  c.def("pairwise_nn", &dcpe_cuda::pairwise_nn, py::arg("dtype"), py::arg("x"), py::arg("D"),
        py::arg("nn"), py::arg("nnd"), py::arg("n"), py::arg("dim"), py::arg("ld"),
        py::arg("metric"), py::arg("stream"),
        "Dense dissimilarity matrix (+inf diagonal) and row argmin/min.");
  c.def("merge_compact_nn", &dcpe_cuda::merge_compact_nn, py::arg("dtype"), py::arg("src"),
        py::arg("ld_src"), py::arg("dst"), py::arg("ld_dst"), py::arg("p"), py::arg("q"),
        py::arg("wp"), py::arg("wq"), py::arg("n_new"), py::arg("row0"), py::arg("nrows"),
        py::arg("mode"), py::arg("nn"), py::arg("nnd"), py::arg("count"), py::arg("stream"),
        "Merge the reciprocal pairs of a round, compact, and find row argmin/min.");
  c.def("round_scan", &dcpe_cuda::round_scan, py::arg("dtype"), py::arg("n"), py::arg("nn"),
        py::arg("nnd"), py::arg("size"), py::arg("rep"), py::arg("hfix"), py::arg("m_a"),
        py::arg("m_b"), py::arg("m_h"), py::arg("m_hf"), py::arg("m_s"), py::arg("m"),
        py::arg("check"), py::arg("cap"), py::arg("average"), py::arg("p"), py::arg("q"),
        py::arg("wp"), py::arg("wq"), py::arg("size_out"), py::arg("rep_out"),
        py::arg("hfix_out"), py::arg("counts"), py::arg("prev"), py::arg("need"),
        py::arg("stream"),
        "A round's reciprocal pairs, merge records and next slots, in one launch.");
  c.def("centroid_nn", &dcpe_cuda::centroid_nn, py::arg("dtype"), py::arg("mu_t"),
        py::arg("s2"), py::arg("n"), py::arg("dim"), py::arg("mode"), py::arg("scale"),
        py::arg("out"), py::arg("nn"), py::arg("rows"), py::arg("nrows"), py::arg("stream"),
        "Each centroid's nearest neighbour under the sqrt bound (mode 0) or closed form (1).");
  c.def("candidate_pairs", &dcpe_cuda::candidate_pairs, py::arg("dtype"), py::arg("mu_t"),
        py::arg("s2"), py::arg("rad"), py::arg("tau"), py::arg("n"), py::arg("dim"),
        py::arg("rel"), py::arg("absm"), py::arg("pa"), py::arg("pb"), py::arg("count"),
        py::arg("capacity"), py::arg("rows"), py::arg("nrows"), py::arg("needy"),
        py::arg("stream"),
        "Cluster pairs whose lower bound does not exceed tau, each once, atomically counted.");
  c.def("centroid_nn_gram", &dcpe_cuda::centroid_nn_gram, py::arg("dtype"), py::arg("g"),
        py::arg("g_rs"), py::arg("g_cs"), py::arg("nrm"), py::arg("gerr"), py::arg("s2"),
        py::arg("n"), py::arg("c0"), py::arg("c1"), py::arg("out"), py::arg("nn"),
        py::arg("rows"), py::arg("nrows"), py::arg("stream"),
        "Smallest squared upper bound over a tile of columns, dd from a Gram tile.");
  c.def("candidate_pairs_gram", &dcpe_cuda::candidate_pairs_gram, py::arg("dtype"),
        py::arg("g"), py::arg("g_rs"), py::arg("g_cs"), py::arg("nrm"), py::arg("gerr"),
        py::arg("s2"), py::arg("rad"), py::arg("tau"), py::arg("n"), py::arg("c0"),
        py::arg("c1"), py::arg("rel"), py::arg("absm"), py::arg("pa"), py::arg("pb"),
        py::arg("count"), py::arg("capacity"), py::arg("rows"), py::arg("nrows"),
        py::arg("needy"), py::arg("stream"),
        "candidate_pairs over a tile of columns, dd from a Gram tile, each pair once.");
  c.def("pair_average", &dcpe_cuda::pair_average, py::arg("dtype"), py::arg("x"),
        py::arg("dim"), py::arg("ts"), py::arg("cs"), py::arg("offsets"), py::arg("sizes"), py::arg("pa"), py::arg("pb"),
        py::arg("count"), py::arg("capacity"), py::arg("val"), py::arg("val_f64"),
        py::arg("stream"), "Exact average distances of a device-counted list of cluster pairs.");
  c.def("cluster_matrix", &dcpe_cuda::cluster_matrix, py::arg("dtype"), py::arg("x"),
        py::arg("dim"), py::arg("ts"), py::arg("cs"), py::arg("offsets"), py::arg("sizes"), py::arg("n"), py::arg("out"),
        py::arg("ld"), py::arg("nn"), py::arg("nnd"), py::arg("stream"),
        "Dense matrix of exact average distances of n clusters, with row argmin/min.");
  c.def("device_count", &dcpe_cuda::device_count,
        "Number of visible CUDA devices (0 without a driver).");
}
