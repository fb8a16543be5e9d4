// The dcpe._C extension module.

#include <omp.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "balanced_assign.h"
#include "center_stats.h"
#include "cpu/balanced_assign_cpu.h"
#include "cpu/amx_scan.h"
#include "cpu/linkage_cpu.h"
#include "linkage.h"
#include "member_sums.h"
#include "nearest.h"

#ifdef DCPE_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace py = pybind11;

namespace {

// An engine's counters of its last run as a dict, named in order.
template <std::size_t N>
py::dict named_counts(const std::array<int64_t, N>& values,
                      const std::array<const char*, N>& names) {
  py::dict out;
  for (std::size_t i = 0; i < N; ++i) out[names[i]] = values[i];
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "dcpe compiled kernels (C++ CPU engine; CUDA kernels when built with nvcc)";
  m.attr("__version__") = DCPE_VERSION;
  // (dimensions, centers) from which balanced_assign_cpu makes its lists from products
  m.attr("balanced_products_from") =
      py::make_tuple(dcpe::kAuctionProductMinD, dcpe::kAuctionProductMinK);
  m.def("linkage_cpu", &dcpe::linkage_cpu, py::arg("x"), py::arg("method") = "average",
        py::arg("metric") = "euclidean", py::arg("max_cluster_size") = 0,
        py::arg("num_threads") = 0, py::arg("max_merges") = 0, py::arg("engine") = "matrix",
        py::arg("cache_bytes") = 0, py::arg("progress") = py::none(),
        "Exact agglomerative clustering of the rows of x; returns the SciPy linkage matrix "
        "(m, 4) in greedy order. max_merges > 0: the first that many rows are those of the "
        "full result; the centroid engine returns only those, the matrix and linear engines "
        "those and some later ones (a flat cut), ward all. "
        "engine: 'matrix' (condensed distance matrix) or 'linear' (average linkage in "
        "O(N d) memory plus cache_bytes). progress: called with the merges found so far.");
  m.def("cut_cpu", &dcpe::cut_cpu, py::arg("Z"), py::arg("n"), py::arg("n_clusters"),
        "Canonical labels after the first min(m, n - n_clusters) merges of Z.");
  m.def("workspace_bytes_cpu", &dcpe::workspace_bytes_cpu, py::arg("n"), py::arg("d"),
        py::arg("method"), py::arg("elem_size"), py::arg("num_threads") = 0,
        py::arg("engine") = "matrix", py::arg("metric") = "euclidean",
        py::arg("cache_bytes") = 0,
        "Bytes of working memory linkage_cpu allocates for this problem.");
  m.def("balanced_assign_cpu", &dcpe::balanced_assign_cpu, py::arg("x"), py::arg("centers"),
        py::arg("capacity"), py::arg("prices"), py::arg("n_candidates") = 32,
        py::arg("rel_eps") = 1e-6, py::arg("num_threads") = 0,
        py::arg("labels") = py::none(), py::arg("start_rel_eps") = 0.0,
        py::arg("lists") = py::none(),
        "Capacity-constrained assignment of the rows of x to the centers (auction with "
        "eps-scaling; cost within N * eps of the optimum). Updates prices in place; "
        "returns (labels, stats). labels: an assignment that fills every center (e.g. the "
        "previous step's) as a warm start; start_rel_eps > 0: the first eps relative to the "
        "mean squared distance to the nearest center; lists: a dict, empty or from the "
        "previous call on the same points (with its prices as this call's), that carries "
        "the candidate lists to the next call.");
  m.def("nearest_cpu", &dcpe::nearest_cpu, py::arg("x"), py::arg("centers"),
        py::arg("mask") = py::none(), py::arg("num_threads") = 0,
        "Index of the nearest row of centers for every row of x (squared distances from "
        "differences in double, ties to the smallest index; mask: bool (k,), the usable "
        "centers).");
  m.def("nearest_refine_cpu", &dcpe::nearest_refine_cpu, py::arg("x"), py::arg("centers"),
        py::arg("approx"), py::arg("slack"), py::arg("first") = 0, py::arg("num_threads") = 0,
        "nearest_cpu's answer for every row of x from approx = |c|^2 - 2 x.c (m, k) float64 "
        "(+inf: a center to skip), within slack (m,) of |x - c|^2 - |x|^2: only the centers "
        "within 2 slack of a row's smallest approx get their distances computed.");
  m.def("nearest_among_cpu", &dcpe::nearest_among_cpu, py::arg("x"), py::arg("centers"),
        py::arg("cand"), py::arg("num_threads") = 0,
        "For every row of x, the nearest of its candidates cand (m, r) int64 by nearest_cpu's "
        "distances above 12 dimensions, ties to the smaller index, and that squared distance: "
        "(int64 (m,), float64 (m,)).");
  m.def("kmeanspp_cpu", &dcpe::kmeanspp_cpu, py::arg("x"), py::arg("k"), py::arg("first"),
        py::arg("u"), py::arg("num_threads") = 0,
        "Greedy k-means++ seeds (indices into x): first, then for every further seed the "
        "best of u.shape[1] candidates drawn by D^2 with the uniforms u (k - 1, trials).");
  m.def("paired_sq_dist_cpu", &dcpe::paired_sq_dist_cpu, py::arg("x"), py::arg("centers"),
        py::arg("labels"), py::arg("num_threads") = 0,
        "|x_i - centers[labels[i]]|^2 for every row of x (float64: differences in double, "
        "each square rounded, added in coordinate order).");
  m.def("segment_sums_cpu", &dcpe::segment_sums_cpu, py::arg("x"), py::arg("labels"),
        py::arg("k"), py::arg("num_threads") = 0,
        "(sums (k, d) float64, counts (k,) int64) of the rows of x per label: the differences "
        "of a running sum over the rows sorted stably by label (the same for any thread "
        "count).");
  m.def("member_sums_cpu", &dcpe::member_sums_cpu, py::arg("x"), py::arg("offsets"),
        py::arg("num_threads") = 0,
        "For every row of x (n, d) float64, the sum of its Euclidean distances to the rows "
        "of its cluster, the run of rows offsets[c]:offsets[c + 1] that holds it (distances "
        "from differences in double; the same result for any thread count).");
  m.def("max_threads", []() { return omp_get_max_threads(); },
        "Number of OpenMP threads used by default.");
  m.def("cpu_list_stats", []() {
          return named_counts(dcpe::linear_list_stats(),
                              {"searches", "tried", "settled", "handover", "rounds",
                               "tree_rounds", "refreshes", "copies", "dense",
                               "unscanned", "tested_blocks", "skipped_blocks", "pair_rescans",
                               "lists_digest"});
        },
        "The last linear-engine run's searches after its first round (Euclidean, above 12 "
        "dimensions), those that tried the tokens' neighbour lists and those the lists "
        "settled without a scan of the centroids (DCPE_CPU_LISTS=0 turns the lists off), "
        "and the clusters it handed over to the matrix of their averages (0: none); its "
        "rounds of searches, those on the kd-tree (the closed forms leave it once it "
        "prunes little; DCPE_CPU_LEAVE_TREE=0 keeps them on it), and its searches of every "
        "cluster again where rounding had left no reciprocal pair; and the merges of copies of "
        "a row it made at once after its first search (DCPE_CPU_COPIES=0: in the rounds), and its "
        "searches whose bounds left so many candidates that they summed every cluster densely "
        "(DCPE_CPU_DENSE=0: none do), and those of them that summed densely without a scan, "
        "as their cluster's last search had (DCPE_CPU_DENSE_SKIP=0: none); and the blocks of "
        "16 tokens that its first search tested and skipped at 13 to 16 dimensions, counted "
        "once per group of searches (DCPE_CPU_BLOCKS=0: none; where they are skipped too "
        "rarely, the later groups test none); and the searches of its first search that "
        "tested each pair of tokens once for both and then scanned again, as without that "
        "(above 16 dimensions; DCPE_CPU_PAIRS=0: none do); and a digest of the lists its first "
        "search filled (0: none).");
  m.def("cpu_scan_group", []() { return dcpe::linear_scan_group(); },
        "How many searches one scan of the tokens serves at once in the linear engine (64 in "
        "an AVX-512 build, 32 otherwise): the size of the first search's groups.");
  m.def("cpu_matrix_stats", []() {
          return named_counts(dcpe::matrix_stats(), {"rounds", "chain"});
        },
        "The last matrix-engine run's rounds (also the linear engine's hand-over to the matrix "
        "of its clusters) and the clusters it left to the nearest-neighbour chain (0: none). "
        "The rounds hand over when one merges fewer than 1/64 of the clusters; "
        "DCPE_CPU_CHAIN=0 never, =1 after the first round.");
  m.def("cpu_amx", []() { return dcpe::amx::available(); },
        "Whether the linear engine's centroid scan (above 12 dimensions) runs on AMX tiles "
        "in this process: built with AMX-BF16, granted by the kernel, and DCPE_CPU_AMX "
        "not 0 (read at each call, as the engine reads it each round).");
#ifdef DCPE_WITH_CUDA
  m.attr("has_cuda") = true;
  dcpe_register_cuda(m);
#else
  m.attr("has_cuda") = false;
#endif
}
