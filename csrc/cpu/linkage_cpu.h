// C++ CPU engine of dcpe: exact agglomerative clustering in O(N^2) time.
//
// Algorithms (see the .cpp files for details):
//  * reducible linkages (average = DCPE, single, complete, weighted), optional size cap:
//    reciprocal-nearest-neighbour rounds on a condensed (lower-triangular) float32/float64
//    distance matrix (first built for the clusters left by the first round, from the
//    points), each round one streaming pass (Lance–Williams merge + in-place
//    compaction + nearest-neighbour search), finishing with a nearest-neighbour chain when
//    rounds stop paying off [Murtagh 1983, "A survey of recent advances in hierarchical
//    clustering algorithms"; Müllner 2011, arXiv:1109.2378, section 3.3].
//  * average linkage in linear memory (linear_linkage.cpp): reciprocal-nearest-neighbour
//    rounds on clusters kept as groups of token rows, nearest neighbours found through a
//    kd-tree on centroids and exact bounds, exact average distances from member pairs, and
//    the nearest-neighbour chain on the matrix of the clusters left once it fits a cache;
//    sqeuclidean and cosine by their closed forms on cluster moments.
//  * centroid (not reducible): the generic greedy algorithm with cached row minima
//    [Müllner 2011, section 3.1] on cluster centroids, no matrix.
//  * ward (reducible): nearest-neighbour chain on centroids and sizes [Murtagh 1983;
//    Müllner 2011, section 3.2], no matrix.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace dcpe {

// A run-time switch of an engine: 0 or 1 where the environment variable `name` is "0" or
// "1", -1 otherwise (unset: the engine's own choice).
inline int env_switch(const char* name) {
  const char* env = std::getenv(name);
  if (env == nullptr) return -1;
  if (std::strcmp(env, "0") == 0) return 0;
  return std::strcmp(env, "1") == 0 ? 1 : -1;
}

// ... on unless it is "0".
inline bool switched_on(const char* name) { return env_switch(name) != 0; }

enum class Method { Average, Single, Complete, Weighted, Centroid, Ward };

// Linkages computed from centroids and sizes (Euclidean metric only).
inline bool is_centroid_method(Method m) { return m == Method::Centroid || m == Method::Ward; }
enum class Metric { Euclidean, SqEuclidean, Cosine };

Method parse_method(const std::string& name);
Metric parse_metric(const std::string& name);

// One merge as found by an engine. a and b are the clusters' representatives (their
// smallest token index); order_key orders merges into greedy order (for monotone linkages
// the height made monotone up the tree, for centroid the discovery index).
struct Merge {
  int64_t a, b;
  double height;
  double order_key;
  int64_t size;
};

struct RunOptions {
  Method method = Method::Average;
  Metric metric = Metric::Euclidean;
  int64_t max_cluster_size = 0;  // 0: no cap
  int num_threads = 0;           // 0: OpenMP default (OMP_NUM_THREADS or all cores)
  // A flat cut: only the first this many merges of the greedy order are needed; 0: all.
  // The centroid engine (merges found in greedy order) stops after them; the matrix and
  // linear engines stop once they are known and return them with some later merges
  // (clusters beyond the cut's bound are set aside: rnn_linkage.cpp, linear_linkage.cpp);
  // ward ignores it.
  int64_t max_merges = 0;
  // Linear-memory engine: bytes it may use for the matrix of the clusters it has left,
  // once they fit (0: never).
  std::size_t cache_bytes = 0;
  // Polled from the calling thread between blocks of work; returns true to stop.
  std::function<bool()> interrupted;
  // Called from the calling thread with the number of merges found so far (may be empty).
  std::function<void(int64_t)> progress;
};

// Threads to use: the requested count, or OpenMP's default (OMP_NUM_THREADS or all cores).
inline int resolve_threads(int requested) {
  return requested > 0 ? requested : std::max(1, omp_get_max_threads());
}

// Reducible linkages on a condensed distance matrix of element type T.
template <typename T>
std::vector<Merge> matrix_linkage(const T* x, int64_t n, int64_t d, const RunOptions& opt);

// Average linkage by the matrix engine's rounds and chain on a condensed matrix D of m
// clusters (sizes, representatives, monotone heights so far) made elsewhere; D is
// overwritten. Merges are appended.
template <typename T>
void matrix_linkage_on(T* D, int64_t m, const std::vector<int64_t>& size,
                       const std::vector<int64_t>& rep, const std::vector<double>& adj,
                       const RunOptions& opt, std::vector<Merge>& merges);

// Average linkage in O(N d) memory plus opt.cache_bytes (linear_linkage.cpp): Euclidean
// by bound-pruned searches over clusters of token rows, sqeuclidean and cosine by their
// closed forms on cluster moments.
template <typename T>
std::vector<Merge> linear_linkage(const T* x, int64_t n, int64_t d, const RunOptions& opt);

// Average linkage with a metric whose cluster distance is a function of cluster moments.
bool has_closed_form(Method method, Metric metric);

// Bytes the linear engine allocates at most (its cache included).
std::size_t linear_workspace_bytes(int64_t n, int64_t d, std::size_t elem_size, bool closed,
                                   std::size_t cache_bytes, int num_threads);

// The last linear run's searches after its first round (Euclidean, above 12 dimensions),
// those that tried the neighbour lists and those the lists settled without a scan (all
// threads), the clusters it handed over to the matrix (0: none), its rounds of searches,
// those of them on the kd-tree, its searches of every cluster again where no pair was
// reciprocal, its merges of copies of a row at once after the first search, and its
// searches that summed every cluster densely, and those of them that did so without a
// scan; and the blocks of tokens its first search skipped (13 to 16 dimensions), and the
// searches of its first search that tested each pair of tokens once and then scanned
// again, and a digest of the lists that search filled; a diagnostic: concurrent runs share
// the counters.
std::array<int64_t, 14> linear_list_stats();

// The searches that one scan of the tokens serves at once (KdTree::kScanGroup): 64 with
// AVX-512, 32 otherwise; the first search's groups, whose blocks linear_list_stats() counts.
int linear_scan_group();

// The last matrix-engine run's rounds (also the linear engine's hand-over to its matrix)
// and the clusters its rounds left to the nearest-neighbour chain (0: none); a diagnostic:
// concurrent runs share the counters.
std::array<int64_t, 2> matrix_stats();

// Centroid linkage on centroids (Euclidean only).
template <typename T>
std::vector<Merge> centroid_linkage(const T* x, int64_t n, int64_t d, const RunOptions& opt);

// Ward linkage on centroids and sizes (Euclidean only).
template <typename T>
std::vector<Merge> ward_linkage(const T* x, int64_t n, int64_t d, const RunOptions& opt);

// Bytes of working memory the engine allocates for a problem of this size, at most (the
// matrix of the reducible linkages is counted for N clusters; it is built for fewer).
std::size_t workspace_bytes(int64_t n, int64_t d, Method method, std::size_t elem_size,
                            int num_threads);

// Merges (any order) -> rows of a SciPy linkage matrix in greedy order, row-major (m x 4).
std::vector<double> merges_to_z(int64_t n, std::vector<Merge> merges);

// A flat cut's bound (RunOptions::max_merges = need > 0). Once at least `need` merges are
// recorded, the need-th smallest of their order keys, U, bounds the cut's height: merges
// still to come only add keys, and one found later with a key of at least U sorts after
// the first `need` (keys, then discovery order: merges_to_z). U only decreases as merges
// are recorded. Returned widened by `ulps` units of rounding of a type with machine
// epsilon `eps` (what the engine's distances may lose below their exact values); +inf
// while fewer than `need` merges are known or need <= 0. keys: scratch.
double cut_bound(const std::vector<Merge>& merges, int64_t need, double ulps, double eps,
                 std::vector<double>& keys);

// The widening the engines use: units of rounding between a cluster's nearest distance and
// its later distances (each Lance–Williams update, or the hand-over's matrix, rounds).
constexpr double kCutBoundUlps = 16.0;

// Apply the first min(m, n - k) rows of Z; canonical labels (0.. in order of first token).
std::vector<int64_t> cut_tree(const double* z, int64_t m, int64_t n, int64_t k);

}  // namespace dcpe
