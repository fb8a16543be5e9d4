// Exact average linkage in O(N d) memory plus a bounded cache: the `linear` engine.
//
// Algorithm: reciprocal-nearest-neighbour (RNN) rounds [Murtagh 1983, "A survey of recent
// advances in hierarchical clustering algorithms"; Müllner 2011, arXiv:1109.2378] on
// clusters kept as contiguous groups of token rows, without a distance matrix.
//
// Average linkage is reducible (d(A ∪ B, C) >= min(d(A, C), d(B, C))), so every pair of
// clusters that are each other's nearest neighbour is merged by the greedy algorithm too,
// and a round merges all of them at once (sorting the merges by height, made monotone up
// the tree, gives the greedy order: dendrogram.cpp). For the same reason a cluster whose
// nearest neighbour was not merged keeps it: a merge elsewhere never brings a cluster
// closer than the nearer of its two parts. Only the new clusters and the clusters whose
// nearest neighbour was merged (or frozen by the size cap) search again.
//
// A search for cluster A over the other clusters B (Euclidean token distance) prunes with
// exact bounds on the average distance avg(A, B) = E||a - b|| (a in A, b in B uniform):
//   lower: ||mu_A - mu_B||                                   (convexity of the norm)
//          (||mu_A - mu_B||^2 + s_A + s_B) / (||mu_A - mu_B|| + R_A + R_B)
//                                 (E||X|| >= E||X||^2 / max||X||, max||X|| <= that sum)
//   upper: sqrt(||mu_A - mu_B||^2 + s_A + s_B)               (Jensen: E||X|| <= sqrt(E||X||^2))
// with mu the centroid, s the mean squared distance to it, R the largest distance to it.
// Candidates come from a kd-tree over the centroids, rebuilt every round [Bentley 1975;
// Friedman, Bentley, Finkel 1977], searched nearer subtrees first within a radius that
// shrinks to the smallest upper bound seen, the searches of a round in the tree's order
// and each leaf's distances eight points at a time as vector lanes. Above 12 dimensions
// (Euclidean; 16 for the closed forms: uses_tree()) a kd-tree's boxes prune little and
// there is none: the centroids are scanned in order for 64 searching clusters at once (32
// without AVX-512), each centroid read once for all of them (the searches had been bound
// by reading every centroid from memory once each), with the same shrinking radius; a
// centroid is first tested by a lower bound of its distance from float32 dot products of
// centred, scaled copies of the centroids (a register-blocked product of six centroids
// with the 64 searching ones; three with 32 without AVX-512; on a CPU with AMX tiles,
// bfloat16 products of 16 centroids with 16 searching ones per tile, amx_scan.h), within
// a rigorous error bound [Higham 2002, Sec. 3.1],
// and only one that the test does not exclude gets its distance computed directly, in
// float64 (KdTree::scan_group()). The survivors of the lower
// bounds are evaluated exactly, in increasing order of their lower bound, a few at a time
// (the token-pair distances of small clusters sixteen at a time as vector lanes, eight
// without AVX-512, from the tokens' input rows: chain_sums(); those of larger ones from
// their blocks, four runs of sixteen tokens at a time: block_sum()), until the bound
// passes the best exact distance (whatever the order of the visits, the same nearest
// neighbour: the smallest upper bound does not depend on it, and a centroid visited in
// one order and not in another lies beyond it). An exact distance is the mean of the token
// distances of all member pairs, each computed in the compute type with the matrix
// engine's expression (squares of direct coordinate differences summed in coordinate
// order, then the square root), summed in float64; it is computed from the cluster of the
// smaller identity, so it is the same number whichever of the two asks. The comparisons
// use a relative safety margin of a few units of the compute type's rounding, and an
// absolute one for the rounding of the float64 centroids themselves (float64 rows a few
// roundings apart are that near), so pruning never drops the true nearest neighbour.
//
// Neighbour lists (with the scan, Euclidean: above 12 dimensions). The first search, in
// which every cluster is one token and every token searches, also keeps for each token t
// its K nearest other tokens and r(t), the distance of the K-th: its scan's radius stays
// at least there, so every token off the list is at least r(t) away (K about sqrt(N) / 2,
// from 64, above 16 dimensions; 16 at 13 to 16: list_length()). Averaging over A's
// tokens, a cluster B with none of its tokens on the lists of A's tokens has
// avg(A, B) >= L(A), the mean of r(t) over t in A, and one with some has
// avg(A, B) >= P(A, B), the same mean with the listed distances in place of r(t) for its
// listed tokens (LinearEngine::settle_from_lists()). A later search of A first sums
// exactly the clusters on its lists, in increasing order of P; if the nearest of them (or
// a flat cut's bound, if smaller) is nearer than L(A), within the margin, it is A's
// nearest neighbour, and no scan of the centroids is needed; otherwise A scans as above.
// The lists are token facts, true for every later cluster, and cost 8 K + 12 bytes a
// token. On the sample codebook's generator at d = 256 (a flat cut at N/2 under 1 GiB),
// with K = 64 at every N, they settled 99.9%, 98.7% and 93% of the searches after the
// first round at N = 16,384, 32,768 and 65,536: a flat cut of 32,768 x 256 took 7.4 s
// instead of 16.3 s, 65,536 x 256 31 s instead of 78 s, 262,144 x 256 10.3 min instead
// of 24.9 (2 cores). Clusters in dense regions, whose tokens' r(t) are small, still scan;
// longer lists at larger N settle most of them (K = 128 at 65,536: 98%). The idea is that
// of a k-nearest-neighbour graph as a filter for exact search, with the bound of an
// average over token pairs in place of a single distance. The first search takes the
// tokens cell by cell (k-means cells in a chain, scan_order.h), and each group of 64
// searching tokens of one cell starts its scan there, so that its K nearest so far are
// near early and fewer tokens get their exact distance computed (the same lists and
// neighbours: DCPE_CPU_SCAN_ORDER=0 scans in index order). From 13 to 16 dimensions the
// tokens of a cell follow a kd split on a grid of 16 positions, and the first search
// skips every block of 16 tokens whose bounding box is beyond the radius of each token of
// its group (KdTree::for_blocks(): tokens it would not have visited, so the same lists
// and neighbours; DCPE_CPU_BLOCKS=0 scans them all). Above 16 dimensions (on float32
// products, not AMX tiles) the first search computes each pair's dot product once for
// both of its tokens: blocks of that order, each meeting itself and then the blocks
// nearest it, in rounds of disjoint pairs of blocks on the threads (KdTree::scan_pairs(),
// LinearEngine::pairs_first_search(); the same lists and neighbours: DCPE_CPU_PAIRS=0
// scans every token for each group). The later rounds' searches run
// in that order too (nearby tokens' rows are summed one after the other), and those the
// lists do not settle scan together, in groups of their own (search()). Where the bounds
// prune little (points without clusters, every token nearly as far from all others) a
// search whose candidates hold at least 1/8 of the live tokens sums them all at once
// instead: its tokens against column tiles of every cluster's, the same averages in the
// same order (dense_search()); on isotropic Gaussian points the whole tree of 65,536 x 64
// took 69 s instead of 140 s (2 cores; benchmarks/README.md).
//
// Once the clusters left fit the cache (their condensed matrix within `cache_bytes`) and
// their searches have become costly (with the kd-tree; with the scan from 13 to 16
// dimensions; above 16, for a flat cut whose merges are all known: the last one summed at
// least 1/256, 1/128 or 1/64 of the token pairs among their tokens exactly:
// kHandoverShare, kHandoverListShare, kHandoverCutShare; handover_now()), the matrix of
// their exact average distances is built in one pass over all those token pairs and the
// matrix engine (rnn_linkage.cpp: RNN rounds with Lance–Williams updates, then the
// nearest-neighbour chain [Murtagh 1983; Müllner 2011, Fig. 4]) finishes on it, so large
// clusters are never compared member by member.
//
// Closed forms. With metric "sqeuclidean", average linkage is a function of cluster
// moments: E||a - b||^2 = ||mu_A - mu_B||^2 + s_A + s_B; with "cosine" (rows scaled to unit
// length) 1 - cos = ||a - b||^2 / 2, so it is half of that. Moments merge exactly
// (mu_C = mu_A + |B| / |C| (mu_B - mu_A), which keeps the centroid of copies of a row
// exactly; s_C = (|A| s_A + |B| s_B) / |C| + |A||B| / |C|^2 ||mu_A - mu_B||^2, no
// cancellation), so these run on the moments alone (float64), in O(N d) memory at any N.
// Their search is the same walk of the kd-tree on the centroids, within a radius that
// follows the best value found: value(B) >= ||mu_A - mu_B||^2 + s_A, scaled. As the
// clusters grow the radius admits more of the tree's leaves, and once a round's searches
// computed the distances of a share d / 512 of the centroids, few of them within the
// radius, the searches leave the tree for the same scan as above, 64 searches at a time
// (leave_tree(); above 16 dimensions they scan from the start).
// Above 128 dimensions the matrix engine is faster where it fits (backends/cpu.py chooses).
// Euclidean distance (the paper's DCPE) has no such form.
//
// Flat cut (RunOptions::max_merges = N - k): once N - k merges are recorded, the
// (N - k)-th smallest of their monotone heights, U, bounds the cut's height; the searches
// stop at U and a cluster with no neighbour within U is set aside for good (reducibility:
// all of its later merges sort after the cut), so the engine stops once every cluster
// left is set aside (update_cut(), set_aside()). The merges returned are the first N - k
// of the full result and some later ones.
//
// Size cap: a merged cluster larger than max_cluster_size leaves (frozen), as in the
// matrix engine. Ties: nearest neighbours are chosen by (distance, identity), a strict
// order, so every round has a reciprocal pair, and the result does not depend on the
// number of threads (each search runs on one thread; merges are recorded in slot order).
// (Where rounding breaks reducibility by a unit in the last place, a kept nearest
// neighbour can be out of date and a round left without a reciprocal pair: every cluster
// then searches again, run().) Copies of a row, which those ties would merge one pair a
// round, merge at once after the first search, in the rounds' order (merge_copies()).

#include <omp.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <chrono>
#include <cstdio>
#include <atomic>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cpu/amx_scan.h"
#include "cpu/linkage_cpu.h"
#include "cpu/scan_order.h"
#include "macros.h"

namespace dcpe {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Tokens on each token's neighbour list (LinearEngine::settle_from_lists()), Euclidean,
// where the searches scan (uses_tree()), for n tokens above 16 dimensions: about
// sqrt(n) / 2, a multiple of 8 from 64 to 512
// (64 up to 16,384 tokens, 128 at 65,536, 184 at 131,072, 256 at 262,144). Longer lists
// settle more searches (the clusters of dense regions) and cost the first round's scan
// more (its radius stays at the last one's distance); on the sample codebook's generator
// at d = 256 (a flat cut at N/2, 2 cores) the best of 64, 128 and 256 was 64 at 16,384
// tokens (2.4 s against 2.7 s for 128), 64 and 128 alike at 32,768, 128 at 65,536 (22 s,
// 24 s for 256, 29 s for 64) and 256 at 131,072 (74 s, 78 s for 128, 100 s for 64).
// DCPE_CPU_LISTS=0 runs without them, and an integer from 8 to 1024 sets their length
// (the same merges either way); any other value is the default.
//
// From 13 to 16 dimensions (where the Euclidean searches scan too, uses_tree()) the lists
// are kLowDimList long at any N: there the first search's visits, not its test of every
// centroid, are what longer lists cost, and a few nearest tokens settle most later
// searches. On the sample codebook's generator at d = 16 (a flat cut at N/2, 2 cores)
// lists of 8, 16, 24, 32, 48, 64 and 128 took 3.9, 3.8, 4.0, 4.3, 4.9, 5.5 and 8.4 s at
// 131,072 tokens (184, the rule above, 10.8 s), and 16, 32, 48, 64 and 128 took 13.2, 13.6,
// 14.9, 16.2 and 22.4 s at 262,144 (256: 34.9 s).
constexpr int kLowDimList = 16;
constexpr int64_t kLowDimListMaxDim = 16;
inline int list_length(int64_t n, int64_t d) {
  const char* env = std::getenv("DCPE_CPU_LISTS");
  if (env != nullptr) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v >= 8 && v <= 1024) return static_cast<int>(v);
  }
  if (d <= kLowDimListMaxDim) return kLowDimList;
  const int64_t k = std::llround(std::sqrt(double(std::max<int64_t>(n, 1))) / 16.0) * 8;
  return static_cast<int>(std::clamp<int64_t>(k, 64, 512));
}
// ... and the largest cluster whose search tries them (a larger one scans; the lists of
// its tokens, |A| times the length, are a search's scratch)
constexpr int64_t kListMaxSize = 1024;

// Whether the linear engine's searches walk a kd-tree on the centroids (else they scan
// them, 64 at a time; the Euclidean ones with the neighbour lists): at most 12 dimensions
// for Euclidean distance, at most 16 for the closed forms (as KDTREE_MAX_D and
// CLOSED_KDTREE_MAX_D of backends/cpu.py). From 13 to 16 dimensions the tree's boxes
// prune little (a search visits thousands of leaf points), and the scan with short lists
// was the faster: on the sample codebook's generator (a flat cut at N/2, 2 cores) the
// tree took 8.8 s at 131,072 x 16, 25.8 s at 262,144 x 16 and 4.7 s at 131,072 x 13, the
// scan 3.8 s, 13.2 s and 3.6 s; at 131,072 x 12 the tree 3.4 s and the scan 3.5 s.
constexpr int64_t kEuclideanTreeMaxDim = 12;
constexpr int64_t kClosedTreeMaxDim = 16;
inline bool uses_tree(int64_t d, bool closed) {
  return d <= (closed ? kClosedTreeMaxDim : kEuclideanTreeMaxDim);
}

// DCPE_CPU_SCAN_ORDER=0: the first search scans the tokens in index order (the same lists
// and merges; scan_order.h)
inline bool scan_order_enabled() { return switched_on("DCPE_CPU_SCAN_ORDER"); }

inline bool lists_enabled() { return switched_on("DCPE_CPU_LISTS"); }

// DCPE_CPU_LEAVE_TREE=0: the closed forms' searches stay on the kd-tree in every round
// (the same nearest neighbours and merges; LinearEngine::leave_tree())
inline bool leave_tree_enabled() { return switched_on("DCPE_CPU_LEAVE_TREE"); }

// DCPE_CPU_COPIES=0: copies of a row merge in the rounds, one merge of them a round,
// instead of at once after the first search (the same merges, unless the rounds hand
// over to the matrix, which orders the merges at height 0 its own way;
// LinearEngine::merge_copies())
inline bool copies_enabled() { return switched_on("DCPE_CPU_COPIES"); }

// DCPE_CPU_DENSE=0: every search that the lists leave sums its candidates one by one, in
// the order of their bounds, however many its bounds leave (LinearEngine::dense_search();
// the same numbers, so the same merges)
inline bool dense_enabled() { return switched_on("DCPE_CPU_DENSE"); }

// DCPE_CPU_DENSE_SKIP=0: every search scans the centroids before it sums densely, even where
// its cluster's last search summed densely (LinearEngine::search_euclidean_group(); a
// search may then sum one by one where it would have skipped the scan, but every average
// is the same number, so the merges are the same)
inline bool dense_skip_enabled() { return switched_on("DCPE_CPU_DENSE_SKIP"); }

// DCPE_CPU_BLOCKS=0: the first search at 13 to 16 dimensions scans every point, without
// skipping blocks whose box is beyond its queries (KdTree::for_blocks(); the same visits,
// so the same lists and merges)
inline bool blocks_enabled() { return switched_on("DCPE_CPU_BLOCKS"); }

// DCPE_CPU_PAIRS=0: the first search above 16 dimensions scans the tokens for each group
// of searching tokens, each pair's float32 dot product computed for both of its tokens,
// instead of once for both (KdTree::scan_pairs(); the same lists and nearest neighbours,
// so the same merges)
inline bool pairs_enabled() { return switched_on("DCPE_CPU_PAIRS"); }

// Tokens of a column tile (LinearEngine::column_tiles()): 256 KiB of float32 coordinates
inline int64_t column_tile(int64_t d) { return std::clamp<int64_t>(65536 / d, 64, 8192); }

// A search sums densely when its candidates hold at least 1 / kDenseDiv of the live
// tokens, and it has at most kDenseMaxTokens tokens; the searches' tokens meet a tile
// about kDenseRows at a time (LinearEngine::dense_search()). On isotropic Gaussian
// points (2 cores of an AMD EPYC) a divisor of 4 to 32 gave the same times within the
// runs' spread: 32,768 x 64, the whole tree, 9.9 s at 8 (10.8 s at 4, 11.1 s at 16), and
// 2 (dense only once the candidates hold half the tokens) 14.1 s; 16,384 x 256 under a
// cache of 64 MB, 22.6 to 23.3 s at 4, 8 and 16 against 52.6 to 57.5 s with none dense.
constexpr double kDenseDiv = 8.0;
constexpr int64_t kDenseMaxTokens = 256;
constexpr int64_t kDenseRows = 16;
// A cluster whose search scanned and summed densely sums densely, without a scan, in its
// next kDenseSkips searches (at most kDenseMaxTokens tokens), then scans again to decide
// (LinearEngine::search_euclidean_group()).
constexpr uint8_t kDenseSkips = 7;

// The last run's searches after the first round (all threads), those that tried the lists
// and those the lists settled (linear_list_stats()).
std::atomic<int64_t> g_list_searches{0}, g_list_tried{0}, g_list_settled{0};
// ... and the clusters it handed over to the matrix (finish_on_matrix(); 0: none).
std::atomic<int64_t> g_handover{0};
// ... and its rounds of searches, those that walked the kd-tree (leave_tree()), the
// searches of every cluster again where no pair was reciprocal (run()), and the merges of
// copies of a row made at once after the first search (merge_copies()).
std::atomic<int64_t> g_rounds{0}, g_tree_rounds{0}, g_refreshes{0}, g_copies{0};
// ... and its searches that summed densely (LinearEngine::dense_search()), and those of
// them that did not scan the centroids first (LinearEngine::search_euclidean_group())
std::atomic<int64_t> g_dense{0}, g_unscanned{0};
// ... and the blocks of points that its first search tested and skipped, once for each
// group of searches (KdTree::for_blocks(), counted by the tree)
std::atomic<int64_t> g_blocks_tested{0}, g_blocks{0};
// ... and the searches of its first search that tested each pair once and then scanned
// again (LinearEngine::pairs_first_search())
std::atomic<int64_t> g_pair_rescans{0};
// ... and a digest of the neighbour lists its first search filled (every token's list,
// its bounds' bits and r(t)'s; 0 without lists: LinearEngine::lists_digest())
std::atomic<int64_t> g_lists_digest{0};

inline std::size_t tri(int64_t i) {
  return static_cast<std::size_t>(i) * static_cast<std::size_t>(i - 1) / 2;
}

inline void poll(const RunOptions& opt) {
  if (opt.interrupted && opt.interrupted()) throw Interrupted();
}

// Eight lanes of T as a GCC/Clang vector type: elementwise arithmetic, each lane rounded
// as the scalar operation.
template <typename T>
struct Lanes8;
template <>
struct Lanes8<float> {
  typedef float type __attribute__((vector_size(8 * sizeof(float))));
};
template <>
struct Lanes8<double> {
  typedef double type __attribute__((vector_size(8 * sizeof(double))));
};

// scan_group()'s running dot products: a register of floats (sixteen with AVX-512, else
// eight: a vector wider than the registers is lowered through memory).
#if defined(__AVX512F__)
constexpr int kScanWidth = 16;
#else
constexpr int kScanWidth = 8;
#endif
typedef float ScanLanes __attribute__((vector_size(kScanWidth * sizeof(float))));

// kd-tree over a set of points (float64, row-major), rebuilt from scratch each round.
// Where it prunes little (uses_tree() false: build()'s `tree`) there is no tree, and the
// points are scanned in order (search(), scan_group()).
class KdTree {
 public:
  static constexpr int kLeaf = 24;

  void build(const double* pts, const std::vector<int32_t>& ids, int64_t d, bool tree,
             bool blocks = false) {
    d_ = d;
    tree_ = tree;
    ids_ = ids;
    nodes_.clear();
    box_.clear();
    src_ = pts;
    if (!flat()) {
      pts_.clear();
      if (!ids_.empty()) build_rec(0, static_cast<int32_t>(ids_.size()));
      build_leaf_blocks();
      return;
    }
    pts_.resize(ids_.size() * static_cast<std::size_t>(d));
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      std::memcpy(&pts_[i * d], pts + static_cast<std::size_t>(ids_[i]) * d, d * sizeof(double));
    }
    build_scan_copy();
    build_blocks(blocks);
  }

  // visit(id, squared distance, r2) for every point within squared distance r2 of q,
  // nearer subtrees first; visit may lower r2 (a branch-and-bound search). Returns the
  // number of points whose distance it computed (with the tree, those of the leaves it
  // entered; without, all of them).
  template <typename F>
  int64_t search(const double* q, double& r2, F&& visit) const {
    int64_t examined = 0;
    if (!nodes_.empty()) {
      search_rec(0, q, r2, visit, examined);
    } else if (!ids_.empty()) {
      scan_group(&q, 1, &r2, [&visit](int, int32_t id, double v, double& r) {
        visit(id, v, r);
      });
      examined = static_cast<int64_t>(ids_.size());
    }
    return examined;
  }

  // No tree: the points are scanned (scan_group()).
  bool flat() const { return !tree_; }

  // Whether scan_group() runs on AMX tiles (build_scan_copy()).
  bool amx() const { return amx_; }

  // The squared distance of two float64 rows as the searches compute it.
  double distance2(const double* a, const double* b) const { return dist2(a, b); }

  // The points in the tree's order (leaf by leaf, as build() left them).
  const std::vector<int32_t>& order() const { return ids_; }

  // Without a tree: visit(j, id, squared distance, r2[j]) for every
  // point within squared distance r2[j] of qs[j], j < g <= kScanGroup, in the points'
  // order; visit may lower r2[j]. The g queries share one pass over the points, which are
  // read once for all of them (at d = 256 separate searches were bound by reading every
  // point once each). A point is first tested by a lower bound of its distance from a
  // float32 copy of the points, less their mean and scaled by a power of two
  // (build_scan_copy()): ||q' - p'||^2 estimated as ||q'||^2 + ||p'||^2 - 2 <q', p'>, the
  // dot products of kScanPoints points with all kScanGroup queries one register-blocked
  // product in float32 (scan_points(): the queries transposed, a vector of kScanWidth
  // queries times one coordinate of a point per operation; half the bytes and twice the
  // lanes of float64). Only a point that the bound (scan_points()) does not put beyond
  // r2[j] gets its squared distance computed in float64 as dist2() computes it. So the
  // visits and their values are those of the direct scan. Where AMX tiles are available
  // (amx::available(), checked every round) the dot products come from bfloat16 copies of
  // the float32 copies instead, 16 points at a time (scan_group_amx()), with a bound that
  // adds their rounding: the same visits and values. On 32,768 to 131,072 x 256 (a flat cut
  // at N/2 on two cores of an Intel Xeon with AMX) that took 10% to 14% off the whole run.
  // The test of a point against the queries is then float32 vectors, 16 queries an
  // instruction (near_queries(); evaluated one query at a time in float64, it had taken more
  // time than the tiles' products): 14% off a flat cut of 32,768 x 256, 31% off cosine on
  // the moments of 16,384 x 256, with the same visits. Most of the scan's time is then its
  // visits (a float64 row of each point visited).
#if defined(__AVX512F__)
  static constexpr int kScanGroup = 64;
#else
  static constexpr int kScanGroup = 32;
#endif
  //
  // `start`: the scan takes the points from position start (a multiple of 16) to the end,
  // then from the first one up to start (the first search starts each group at its cell of
  // scan_order.h). Which points it visits and their values do not depend on the order of
  // the points: every point within the final r2[j] is visited in any order, and a point
  // visited in one order and not in another lies beyond it (the visits' callers keep only
  // what is within it, or the nearest by (distance, index)). With blocks (build(): the
  // first search from 13 to 16 dimensions) the float32 scan skips the blocks of points
  // that are beyond every query (for_blocks()), points it would not have visited: the
  // same visits and values. (The scan on AMX tiles does not skip.)
  template <typename F>
  void scan_group(const double* const* qs, int g, double* r2, F&& visit,
                  std::size_t start = 0) const {
    start = std::min(start, ids_.size());
    if (amx_) {
      scan_group_amx(qs, g, r2, visit, start);
      return;
    }
    const std::size_t n = ids_.size();
    const std::size_t d = static_cast<std::size_t>(d_);
    // the queries as the points' copy, transposed: coordinate k of query j at
    // qt[k * kScanGroup + j] (zero for j >= g, whose products are never read)
    std::vector<ScanLanes> qt(d * kScanVecs);
    float* qf = reinterpret_cast<float*>(qt.data());
    ScanQueries sq;
    copy_queries(qs, g, r2, sq, [qf](int j, std::size_t k, float v) {
      qf[k * kScanGroup + j] = v;
    });
    auto points = [&](std::size_t lo, std::size_t hi) {
      std::size_t i = lo;
      for (; i + kScanPoints <= hi; i += kScanPoints) {
        scan_points<kScanPoints>(qt.data(), qs, sq, g, r2, i, visit);
      }
#if defined(__AVX512F__)
      if (i + 4 <= hi) {
        scan_points<4>(qt.data(), qs, sq, g, r2, i, visit);
        i += 4;
      }
      if (i + 2 <= hi) {
        scan_points<2>(qt.data(), qs, sq, g, r2, i, visit);
        i += 2;
      }
#endif
      for (; i < hi; ++i) scan_points<1>(qt.data(), qs, sq, g, r2, i, visit);
    };
    if (blk_box_.empty()) {
      points(start, n);
      points(0, start);
      return;
    }
    // where the blocks have been skipped too rarely to pay for their tests (isotropic
    // Gaussian points: about 1 in 400 at 131,072 x 16), the plain scan
    const int64_t seen = blk_seen_.load(std::memory_order_relaxed);
    if (seen >= kBlocksTrial &&
        blk_skipped_.load(std::memory_order_relaxed) * kBlocksMinShare < seen) {
      points(start, n);
      points(0, start);
      return;
    }
    GroupBox gb(qs, g, d_);
    for_blocks(qs, g, r2, gb, start, points);
  }

  // The first search's scan with each pair of points tested once for both of them (no
  // tree, no AMX tiles; LinearEngine::pairs_first_search()). Every point searches whose
  // r2[p] (by position in order()) is not negative; visit(q, p, squared distance, r2[q])
  // is called for every point p within squared distance r2[q] of a searching point q != p
  // (by positions), and may lower r2[q]. Which pairs it visits depends on the order of the
  // visits, but every pair within the final r2[q] is visited, and every visit is within
  // r2[q] at the time (as scan_group()'s; its callers keep the nearest by (distance,
  // index)).
  //
  // How. The points, in the first search's order (near points near each other), are cut
  // into blocks of m; the float32 dot products of two blocks are computed once (the
  // queries of one, kScanGroup at a time, as scan_group() computes them, against the
  // points of the other, which stay in the cache meanwhile) and tested both ways: each
  // query of the first block against each point of the second (near_queries()), and each
  // point of the second, as a query, against the points of the first (near_points(), the
  // same criterion with the roles swapped: a dot product is the same sum either way). A
  // pair the test keeps gets its squared distance in float64 once (dist2(), whose terms do
  // not depend on the order of the two), and each way visits it if it is within that
  // query's radius. A block first meets itself (one way, every ordered pair), then the
  // blocks 1, 2, 3, ... positions away, nearest first, so that its radii shrink early.
  // Blocks are cut and met in rounds of pairs of blocks that share no block, each round
  // on the threads at once, so that a point's radius and visits are one thread's (and
  // between() runs on this thread after each round). scan_group() computes each dot
  // product twice, once for each of its points, and in the first search at 65,536 x 256
  // it made 37 billion float32 multiply-adds a second on two AVX2 cores, 88% of what they
  // can do; here each is computed once. On the sample codebook's generator (a flat cut
  // at N/16 under 2 GiB, two AVX2 cores, alternating runs) the first round took 17.5 s
  // and 16.8 s instead of 31.2 s and 35.2 s at 65,536 x 256, 4.3 s and 4.1 s instead of
  // 5.0 s and 5.6 s at 65,536 x 24, with as many exact distances within 1%.
  template <typename F, typename Between>
  void scan_pairs(std::vector<double>& r2, const std::vector<int32_t>& start, int threads,
                  F&& visit, Between&& between) const {
    const std::size_t n = ids_.size(), d = static_cast<std::size_t>(d_);
    PairScan ps;
    ps.r2 = r2.data();
    ps.start = start.data();
    ps.norm.resize(n);
    ps.norm2.resize(n);
    ps.skip.resize(n);
    for (std::size_t p = 0; p < n; ++p) {
      double s = 0.0;  // ||p'||^2 as copy_queries() sums it
      for (std::size_t k = 0; k < d; ++k) {
        s += double(pts32_[p * d + k]) * double(pts32_[p * d + k]);
      }
      ps.norm2[p] = s;
      ps.norm[p] = std::sqrt(s);
      ps.skip[p] = r2[p] < 0.0 ? std::numeric_limits<float>::infinity()
                               : threshold(scaled_radius(r2[p]), ps.norm[p], s);
    }
    // a block: about 256 KiB of the copy (the points that stay in the cache), a multiple
    // of kScanGroup, at most an eighth of the points a thread
    const std::size_t g = static_cast<std::size_t>(kScanGroup);
    std::size_t m = std::clamp<std::size_t>(65536 / d, g, 2048) / g * g;
    const std::size_t most = n / (8 * static_cast<std::size_t>(std::max(threads, 1))) / g * g;
    m = std::max(g, std::min(m, most));
    const int64_t nb = static_cast<int64_t>((n + m - 1) / m);
    std::vector<int64_t> first;  // this round's pairs (first, first + apart)
    auto round = [&](int64_t apart) {
      const int64_t c = static_cast<int64_t>(first.size());
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (c > 1)
      for (int64_t t = 0; t < c; ++t) {
        const std::size_t i = static_cast<std::size_t>(first[t]) * m;
        const std::size_t j = i + static_cast<std::size_t>(apart) * m;
        pair_blocks(i, std::min(n, i + m), j, std::min(n, j + m), apart == 0, ps, visit);
      }
      between();
    };
    for (int64_t b = 0; b < nb; ++b) first.push_back(b);
    round(0);
    for (int64_t apart = 1; apart < nb; ++apart) {
      for (int64_t half = 0; half < 2; ++half) {  // (b / apart even, then odd: no block twice)
        first.clear();
        for (int64_t b = 0; b + apart < nb; ++b) {
          if ((b / apart) % 2 == half) first.push_back(b);
        }
        if (!first.empty()) round(apart);
      }
    }
  }

  // Without a tree, and with blocks (build()): the bounding box of each block of
  // kOrderBlock consecutive points (float64), so that a scan can skip a block whose box is
  // beyond every query's radius (for_blocks()). At most kBlockMaxDim dimensions.
  void build_blocks(bool blocks) {
    blk_box_.clear();
    blk_seen_ = 0;
    blk_skipped_ = 0;
    const std::size_t n = ids_.size(), d = static_cast<std::size_t>(d_);
    if (!blocks || d_ > kBlockMaxDim) return;
    // (past 2^500 a box's squared distance could overflow, which the margins of
    // block_thresholds() do not cover: no blocks; dcpe.cluster refuses such values anyway)
    for (std::size_t i = 0; i < n * d; ++i) {
      if (!(std::fabs(pts_[i]) <= 0x1p500)) return;
    }
    const std::size_t nb = (n + kOrderBlock - 1) / kOrderBlock;
    blk_box_.resize(nb * 2 * d);
    for (std::size_t b = 0; b < nb; ++b) {
      double* lo = &blk_box_[b * 2 * d];
      double* hi = lo + d;
      for (std::size_t k = 0; k < d; ++k) {
        lo[k] = kInf;
        hi[k] = -kInf;
      }
      for (std::size_t i = b * kOrderBlock; i < std::min(n, (b + 1) * kOrderBlock); ++i) {
        for (std::size_t k = 0; k < d; ++k) {
          lo[k] = std::min(lo[k], pts_[i * d + k]);
          hi[k] = std::max(hi[k], pts_[i * d + k]);
        }
      }
    }
  }

  // The queries' bounding box.
  struct GroupBox {
    double lo[kLowDimListMaxDim], hi[kLowDimListMaxDim];
    GroupBox(const double* const* qs, int g, int64_t d) {
      for (int64_t k = 0; k < d; ++k) {
        lo[k] = kInf;
        hi[k] = -kInf;
        for (int j = 0; j < g; ++j) {
          lo[k] = std::min(lo[k], qs[j][k]);
          hi[k] = std::max(hi[k], qs[j][k]);
        }
      }
    }
  };

  // The queries transposed (coordinate k of query j at q[k * kScanGroup + j]) and each
  // one's threshold: a block is beyond query j when its box's squared distance exceeds it.
  static constexpr int64_t kBlockMaxDim = kLowDimListMaxDim;
  struct BlockQueries {
    alignas(64) double q[kBlockMaxDim * kScanGroup];
    alignas(64) double thr[kScanGroup];
    double most = 0.0;
  };

  // The thresholds from the radii: r2[j] (1 + 2^-40) + 2^-1000, which a box sum in
  // another order than dist2()'s, or below the normal range, cannot pass unless every
  // dist2() from q_j to the block's points is above r2[j]; -1 past g (always beyond).
  static void block_thresholds(int g, const double* r2, BlockQueries& bq) {
    bq.most = 0.0;
    for (int j = 0; j < kScanGroup; ++j) {
      bq.thr[j] = j < g ? r2[j] * (1.0 + 0x1p-40) + 0x1p-1000 : -1.0;
      if (j < g) bq.most = std::max(bq.most, bq.thr[j]);
    }
  }

  // Whether every point of block b is beyond r2[j] for every query j < g: the squared
  // distance from the queries' box to the block's box, then from each query to it, is a
  // lower bound of every exact squared distance between them.
  bool block_beyond(std::size_t b, const BlockQueries& bq, const GroupBox& gb,
                    const double* const* qs, int g) const {
    const double* lo = &blk_box_[b * 2 * d_];
    const double* hi = lo + d_;
    const double gap = sum_squares([&](int64_t k) {
      return std::max(std::max(lo[k] - gb.hi[k], gb.lo[k] - hi[k]), 0.0);
    });
    if (gap > bq.most) return true;
    // 16 queries at a time, each a running sum over the coordinates in order; the first 16
    // with one query not beyond decide (as four vectors of four with AVX2; without either,
    // one query at a time)
#if defined(__AVX512F__)
    for (int v = 0; 8 * v < g; v += 2) {  // (the lanes past g never hold a block back)
      __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
      for (int64_t k = 0; k < d_; ++k) {
        const __m512d l = _mm512_set1_pd(lo[k]), h = _mm512_set1_pd(hi[k]);
        const __m512d q0 = _mm512_load_pd(&bq.q[k * kScanGroup + 8 * v]);
        const __m512d q1 = _mm512_load_pd(&bq.q[k * kScanGroup + 8 * v + 8]);
        const __m512d t0 = _mm512_max_pd(_mm512_max_pd(_mm512_sub_pd(l, q0), _mm512_sub_pd(q0, h)),
                                         _mm512_setzero_pd());
        const __m512d t1 = _mm512_max_pd(_mm512_max_pd(_mm512_sub_pd(l, q1), _mm512_sub_pd(q1, h)),
                                         _mm512_setzero_pd());
        acc0 = _mm512_add_pd(acc0, _mm512_mul_pd(t0, t0));
        acc1 = _mm512_add_pd(acc1, _mm512_mul_pd(t1, t1));
      }
      if ((_mm512_cmp_pd_mask(acc0, _mm512_load_pd(&bq.thr[8 * v]), _CMP_GT_OQ) &
           _mm512_cmp_pd_mask(acc1, _mm512_load_pd(&bq.thr[8 * v + 8]), _CMP_GT_OQ)) != 0xff) {
        return false;
      }
    }
#elif defined(__AVX2__)
    static_assert(kScanGroup % 16 == 0, "whole passes of 16 queries");
    // (one query at a time, this test took 58% of a flat cut of 131,072 x 16 on two AVX2
    // cores, which then ran 1.5 times as long as without blocks)
    for (int v = 0; v < g; v += 16) {
      __m256d acc[4];
      for (int u = 0; u < 4; ++u) acc[u] = _mm256_setzero_pd();
      for (int64_t k = 0; k < d_; ++k) {
        const __m256d l = _mm256_set1_pd(lo[k]), h = _mm256_set1_pd(hi[k]);
        for (int u = 0; u < 4; ++u) {
          const __m256d q = _mm256_load_pd(&bq.q[k * kScanGroup + v + 4 * u]);
          const __m256d t = _mm256_max_pd(_mm256_max_pd(_mm256_sub_pd(l, q), _mm256_sub_pd(q, h)),
                                          _mm256_setzero_pd());
          acc[u] = _mm256_add_pd(acc[u], _mm256_mul_pd(t, t));
        }
      }
      int beyond = 0xf;
      for (int u = 0; u < 4; ++u) {
        beyond &= _mm256_movemask_pd(
            _mm256_cmp_pd(acc[u], _mm256_load_pd(&bq.thr[v + 4 * u]), _CMP_GT_OQ));
      }
      if (beyond != 0xf) return false;
    }
#else
    for (int j = 0; j < g; ++j) {
      if (!(box_dist2(lo, hi, qs[j]) > bq.thr[j])) return false;
    }
#endif
    return true;
  }

  // points(lo, hi) over the blocks that block_beyond() does not skip, from start (a
  // multiple of kOrderBlock) to the end, then from the first one: up to kRunBlocks
  // consecutive blocks are tested, then scanned at once (48 points: eight products of six),
  // and the thresholds follow the radii after each scan (the radii only shrink, so a
  // threshold a scan behind skips less, never more).
  //
  // Why. The first search (every token searching, for its kLowDimList nearest tokens)
  // tests every token against each group of 64 searching tokens, N^2 tests in all: 161 s
  // of a flat cut of 1,048,576 x 16 that took 207 s. Its groups are 64 consecutive tokens
  // of a cell, and the cells' tokens follow a kd split whose cuts lie on the blocks' grid
  // (scan_order.h), so a group and a block are each a few near tokens. A block is
  // skipped when the box of the whole group is beyond the largest radius (one squared
  // distance of boxes), or else when the block's box is beyond each query's own radius
  // (the queries 16 at a time as vector lanes; at the first 16 with one that is not, the
  // block is scanned). Where blocks are hardly ever skipped (isotropic Gaussian points) the
  // tests cost a flat cut of 131,072 x 16 about a tenth more time, so once 2^16 blocks
  // were met the groups test blocks only while at least one in 16 of them was skipped
  // (scan_group()). Blocks at 17 to 32 dimensions saved nothing
  // (65,536 x 32: 3.19 s against 3.07 s for the first search), so there are none.
  template <typename Points>
  void for_blocks(const double* const* qs, int g, const double* r2, const GroupBox& gb,
                  std::size_t start, Points& points) const {
    static constexpr std::size_t kRunBlocks = 3;
    const std::size_t n = ids_.size(), nb = (n + kOrderBlock - 1) / kOrderBlock;
    const std::size_t b0 = start / kOrderBlock;
    BlockQueries bq;
    for (int64_t k = 0; k < d_; ++k) {
      for (int j = 0; j < kScanGroup; ++j) bq.q[k * kScanGroup + j] = j < g ? qs[j][k] : 0.0;
    }
    block_thresholds(g, r2, bq);
    std::size_t run_lo = 0, run_n = 0;
    int64_t skipped = 0;
    auto flush = [&] {
      if (run_n > 0) {
        points(run_lo * kOrderBlock, std::min(n, (run_lo + run_n) * kOrderBlock));
        block_thresholds(g, r2, bq);
      }
      run_n = 0;
    };
    for (std::size_t t = 0; t < nb; ++t) {
      const std::size_t b = b0 + t < nb ? b0 + t : b0 + t - nb;
      if (b == 0) flush();  // (the wrap)
      if (block_beyond(b, bq, gb, qs, g)) {
        flush();
        ++skipped;
        continue;
      }
      if (run_n == 0) run_lo = b;
      if (++run_n == kRunBlocks) flush();
    }
    flush();
    blk_seen_.fetch_add(static_cast<int64_t>(nb), std::memory_order_relaxed);
    blk_skipped_.fetch_add(skipped, std::memory_order_relaxed);
  }

 private:
  // The points of ids_[lo .. hi-1]; a leaf has left = -1 and its first block at right
  // (build_leaf_blocks()).
  struct Node {
    int32_t lo, hi, left, right;
  };

  // Both squared distances below sum their terms in one order at every d: kLanes running
  // sums (coordinate k to sum k % kLanes, each in coordinate order) added pairwise at the
  // end. That order is a loop the compiler vectorises, where one running sum is a chain of
  // d dependent additions (at d = 256 the searches spent most of their time in it; up to
  // 16 dimensions the sums had been one such chain, in coordinate order, and a flat cut of
  // 262,144 x 16 spent 88% of its time in the kd-tree's box and leaf distances). Every
  // term of the box's sum is at most the same term of any inner point's, and each partial
  // sum rounds monotonically, so the box's sum stays a lower bound of the point's in
  // floating point.
  static constexpr int64_t kLanes = 8;

  static_assert(sizeof(ScanLanes) == kScanWidth * sizeof(float), "a query per lane");
  static_assert(kScanGroup <= 64, "near_queries() keeps a bit per query");
  // scan_group()'s queries as vectors of kScanWidth floats, and the points of one
  // product: with 512-bit registers, 6 x 4 running sums and the 4 query vectors of a
  // coordinate take 28 of the 32 registers; with 256-bit ones (AVX2: 32 queries), 3 x 4
  // running sums take 12 of the 16. (64 queries per pass read the points half as often
  // as 32, which made no measurable difference at 32,768 x 256 on two cores; the running
  // sums in registers of a function of their own, scan_dots(), took 15% off the whole run
  // there.)
  static constexpr int kScanVecs = kScanGroup / kScanWidth;
#if defined(__AVX512F__)
  static constexpr int kScanPoints = 6;
#else
  static constexpr int kScanPoints = 3;
#endif

  // The kLanes running sums added pairwise (a double each, or a vector of them lane by lane).
  template <typename V>
  static V combine(const V* acc) {
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }

  // The sum of term(k)^2 over the coordinates, in the order above.
  template <typename Term>
  double sum_squares(Term term) const {
    double acc[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= d_; k += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) {
        const double t = term(k + j);
        acc[j] += t * t;
      }
    }
    for (int64_t j = 0; k + j < d_; ++j) {
      const double t = term(k + j);
      acc[j] += t * t;
    }
    return combine(acc);
  }

  double dist2(const double* a, const double* b) const {
    return sum_squares([a, b](int64_t k) { return a[k] - b[k]; });
  }

  // The float32 copy that scan_group() tests the points with: p' = fl32(fl64(p - c) * 2^e),
  // c the points' mean (float64) and 2^e the power of two that brings the largest |p - c|
  // to [1, 2), so that the copy neither overflows nor loses the small coordinates to
  // underflow (a fixed offset, as in a raw codebook, would cost the estimate its
  // precision); with each point's share of the test and the largest ||p'|| (float64).
  void build_scan_copy() {
    const std::size_t n = ids_.size(), d = static_cast<std::size_t>(d_);
    center_.assign(d, 0.0);
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t k = 0; k < d; ++k) center_[k] += pts_[i * d + k];
    }
    for (std::size_t k = 0; k < d; ++k) center_[k] /= double(n);
    double big = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t k = 0; k < d; ++k) {
        big = std::max(big, std::fabs(pts_[i * d + k] - center_[k]));
      }
    }
    int e = 0;
    if (big > 0.0 && std::isfinite(big)) std::frexp(big, &e);
    scale_ = std::ldexp(1.0, std::clamp(1 - e, -400, 400));
    // the copy, and each point's share of the test (near_queries()):
    // fl32(fl64(c ||p'||^2)) with c = 1 - slack - 2^-19, at most (1 - slack - 2^-20) ||p'||^2
    amx_ = amx::available();
    const double c = 1.0 - scan_slack() - 0x1p-19;
    pts32_.resize(n * d);
    point32_.resize(n);
    double most = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      double s = 0.0;
      for (std::size_t k = 0; k < d; ++k) {
        const float v = scan_coordinate(pts_[i * d + k], k);
        pts32_[i * d + k] = v;
        s += double(v) * double(v);
      }
      point32_[i] = static_cast<float>(c * s);
      most = std::max(most, s);
    }
    len32_max_ = std::sqrt(most);
    // scan_group_amx()'s bfloat16 copy: rows of dp_ (d rounded up to a tile step), the
    // points rounded up to a tile of 16, zero past them
    if (amx_) {
      dp_ = amx::padded(d);
      pts16_.assign((n + 15) / 16 * 16 * dp_, 0);
      for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t k = 0; k < d; ++k) pts16_[i * dp_ + k] = amx::to_bf16(pts32_[i * d + k]);
      }
    } else {
      pts16_.clear();
    }
  }

  float scan_coordinate(double x, std::size_t k) const {
    return static_cast<float>((x - center_[k]) * scale_);
  }

  // sqrt(r2) in the copy's scale, rounded up (a radius of the test; infinite stays so)
  double scaled_radius(double r2) const {
    return std::sqrt(r2) * scale_ * (1.0 + 0x1p-50);
  }

  struct ScanQueries {
    double norm2[kScanGroup];   // ||q'||^2
    double norm[kScanGroup];    // ||q'||
    double radius[kScanGroup];  // scaled_radius(r2[j]), updated after every visit
    // the test's float32 thresholds (query_threshold()), one vector per kScanWidth queries
    alignas(64) float skip[kScanGroup];
  };

  // The estimate's error bound slack * S + floor (S = ||q'||^2 + ||p'||^2) of the scan in
  // use: float32 products (scan_points()) or bfloat16 ones (scan_group_amx()).
  double scan_slack() const {
    return (amx_ ? 0x1p-7 + 0x1p-14 : 0.0) + (2.0 * double(d_) + 16.0) * 0x1p-24;
  }
  double scan_floor() const { return amx_ ? 0x1p-100 : 0x1p-120; }

  // scan_group() for the P points i0 .. i0 + P - 1: their dot products with the queries
  // (qt, transposed), each a running sum over the coordinates in order, then each point's
  // test and visits, in the points' order.
  //
  // The test. With q' and p' the copies of q and p (build_scan_copy()), each coordinate of
  // q' - p' is within 2^-23 (|q'_k| + |p'_k|) of the scaled exact difference (two roundings
  // of at most 2^-53 and 2^-24 relative each, the scaling exact; below float32's normal
  // range, at most 2^-149 absolute), so ||q - p|| * 2^e >= ||q' - p'|| - E with
  // E = 2^-22 (||q'|| + ||p'||) + 2^-140 (the norm of those errors, with room). The
  // estimate ||q'||^2 + ||p'||^2 - 2 <q', p'> is within (2d + 16) 2^-24 S + 2^-120 of
  // ||q' - p'||^2, S = ||q'||^2 + ||p'||^2 (a float32 dot product of d terms is within
  // gamma_d sum |q'_k p'_k| <= gamma_d S / 2 of the exact one, with or without fused
  // multiply-adds, in any order; the float64 operations add a few 2^-53 S; underflow of
  // the products, at most d 2^-149) [Higham 2002, "Accuracy and Stability of Numerical
  // Algorithms", Sec. 3.1]. So the point is skipped only when estimate - slack >
  // (radius + E)^2 (1 + 2^-40 + (d + 3) 2^-50), where radius is sqrt(r2[j]) scaled and
  // rounded up: then ||q - p||^2 > r2[j] with a relative margin of more than 2^-40 +
  // (d + 3) 2^-53, beyond dist2()'s rounding (at most (d + 3) 2^-53 of the exact value,
  // all of its terms non-negative), so dist2() > r2[j] too and the direct scan would not
  // have visited it either. near_queries() evaluates that criterion in float32, 16 queries
  // per instruction, within guards under which a skip there implies it (query_threshold()).
  // A NaN in the test, or a dot product that is not finite (from about 1e140
  // the copies' scaling is clamped and their products overflow float32), skips nothing.
  //
  // The dot products of the P points i0 .. i0 + P - 1 (the copy) with the queries (qt,
  // transposed): out[u][v] lane l is point u's with query 16 v + l, a running sum over
  // the coordinates in order. The running sums are locals of this function alone, so that
  // they stay in registers.
  template <int P>
  void scan_dots(const ScanLanes* __restrict qt, std::size_t i0,
                 ScanLanes (*__restrict out)[kScanVecs]) const {
    const std::size_t d = static_cast<std::size_t>(d_);
    const float* __restrict p = &pts32_[i0 * d];
    ScanLanes acc[P][kScanVecs];
#pragma GCC unroll 16
    for (int u = 0; u < P; ++u) {
#pragma GCC unroll 8
      for (int v = 0; v < kScanVecs; ++v) acc[u][v] = ScanLanes{};
    }
    for (std::size_t k = 0; k < d; ++k) {
      const ScanLanes* q = qt + k * kScanVecs;
#pragma GCC unroll 16
      for (int u = 0; u < P; ++u) {
        const float x = p[u * d + k];
        // fused where the instruction set has it for all sixteen lanes (the source is
        // compiled without contraction); scan_points()'s bound holds either way
#if defined(__AVX512F__)
        const __m512 xs = _mm512_set1_ps(x);
#pragma GCC unroll 8
        for (int v = 0; v < kScanVecs; ++v) acc[u][v] = _mm512_fmadd_ps(q[v], xs, acc[u][v]);
#else
#pragma GCC unroll 8
        for (int v = 0; v < kScanVecs; ++v) acc[u][v] += q[v] * x;
#endif
      }
    }
#pragma GCC unroll 16
    for (int u = 0; u < P; ++u) {
#pragma GCC unroll 8
      for (int v = 0; v < kScanVecs; ++v) out[u][v] = acc[u][v];
    }
  }

  template <int P, typename F>
  void scan_points(const ScanLanes* __restrict qt, const double* const* qs, ScanQueries& sq,
                   int g, double* r2, std::size_t i0, F& visit) const {
    ScanLanes acc[P][kScanVecs];
    scan_dots<P>(qt, i0, acc);
    static_assert(P <= kTestPoints, "a block of test_points()");
    test_points(i0, P, reinterpret_cast<const float*>(acc), kScanGroup, qs, sq, g, r2, visit);
  }

  // The queries' copies (put(j, k, coordinate k of query j's copy), zero for j >= g),
  // their squared norms and norms, their scaled radii and the test's thresholds, for both
  // scans.
  template <typename Put>
  void copy_queries(const double* const* qs, int g, const double* r2, ScanQueries& sq,
                    Put&& put) const {
    const std::size_t d = static_cast<std::size_t>(d_);
    for (int j = 0; j < kScanGroup; ++j) {
      double nq = 0.0;
      for (std::size_t k = 0; k < d; ++k) {
        const float v = j < g ? scan_coordinate(qs[j][k], k) : 0.0f;
        put(j, k, v);
        nq += double(v) * double(v);
      }
      sq.norm2[j] = nq;
      sq.norm[j] = std::sqrt(nq);
      sq.radius[j] = j < g ? scaled_radius(r2[j]) : 0.0;
      sq.skip[j] = j < g ? query_threshold(sq, j) : std::numeric_limits<float>::infinity();
    }
  }

  // scan_pairs()'s state of each point: its radius (the caller's r2), the norms of its copy
  // and its threshold as a query (query_threshold(); +inf for a point that does not search)
  struct PairScan {
    double* r2 = nullptr;
    const int32_t* start = nullptr;
    std::vector<double> norm, norm2;
    std::vector<float> skip;
  };

  // scan_pairs() for the blocks of points i0 .. i1 - 1 (the queries) and j0 .. j1 - 1 (the
  // points; the same block, one way only, where `same`).
  template <typename F>
  void pair_blocks(std::size_t i0, std::size_t i1, std::size_t j0, std::size_t j1, bool same,
                   PairScan& ps, F& visit) const {
    const std::size_t d = static_cast<std::size_t>(d_);
    std::vector<ScanLanes> qt(d * kScanVecs);
    float* qf = reinterpret_cast<float*>(qt.data());
    for (std::size_t g0 = i0; g0 < i1; g0 += kScanGroup) {
      const int g = static_cast<int>(std::min<std::size_t>(kScanGroup, i1 - g0));
      ScanQueries sq;
      alignas(64) float share[kScanGroup];  // the group's points' shares of the test
      for (int j = 0; j < kScanGroup; ++j) {
        for (std::size_t k = 0; k < d; ++k) {
          qf[k * kScanGroup + j] = j < g ? pts32_[(g0 + j) * d + k] : 0.0f;
        }
        if (j < g) {
          const std::size_t q = g0 + j;
          sq.norm2[j] = ps.norm2[q];
          sq.norm[j] = ps.norm[q];
          sq.radius[j] = ps.r2[q] < 0.0 ? 0.0 : scaled_radius(ps.r2[q]);
          sq.skip[j] = ps.skip[q];
          share[j] = point32_[q];
        } else {  // (never near: its lanes' dot products are exactly 0)
          sq.norm2[j] = sq.norm[j] = sq.radius[j] = 0.0;
          sq.skip[j] = share[j] = std::numeric_limits<float>::infinity();
        }
      }
      auto points = [&](std::size_t lo, std::size_t hi) {
        std::size_t i = lo;
        for (; i + kScanPoints <= hi; i += kScanPoints) {
          pair_points<kScanPoints>(qt.data(), sq, share, g0, g, i, same, ps, visit);
        }
        for (; i < hi; ++i) pair_points<1>(qt.data(), sq, share, g0, g, i, same, ps, visit);
      };
      // in its own block a group starts with itself and the points after it (near ones)
      const std::size_t from =
          same ? std::clamp<std::size_t>(static_cast<std::size_t>(ps.start[g0]), j0, g0) : j0;
      points(from, j1);
      points(j0, from);
      for (int j = 0; j < g; ++j) ps.skip[g0 + j] = sq.skip[j];
    }
  }

  // pair_blocks() for the P points i0 .. i0 + P - 1 against the group of g queries from
  // g0: the dot products (scan_dots()), then the tests both ways (the group's queries
  // against each point; unless `same`, each point as a query against the group's points),
  // the squared distances of the pairs either keeps, and the visits.
  template <int P, typename F>
  void pair_points(const ScanLanes* __restrict qt, ScanQueries& sq, const float* share,
                   std::size_t g0, int g, std::size_t i0, bool same, PairScan& ps,
                   F& visit) const {
    ScanLanes acc[P][kScanVecs];
    scan_dots<P>(qt, i0, acc);
    const float* dot = reinterpret_cast<const float*>(acc);
    const std::size_t d = static_cast<std::size_t>(d_);
    const uint64_t live = g < kScanGroup ? (uint64_t(1) << g) - 1 : ~uint64_t(0);
    uint8_t pu[P * kScanGroup], pj[P * kScanGroup], way[P * kScanGroup];
    int m = 0;
    for (int u = 0; u < P; ++u) {
      const uint64_t fwd = near_queries(point32_[i0 + u], dot + u * kScanGroup, sq) & live;
      const uint64_t back =
          same ? 0 : near_points(ps.skip[i0 + u], dot + u * kScanGroup, share) & live;
      for (uint64_t near = fwd | back; near; near &= near - 1) {
        const int j = __builtin_ctzll(near);
        pu[m] = static_cast<uint8_t>(u);
        pj[m] = static_cast<uint8_t>(j);
        way[m] = static_cast<uint8_t>(((fwd >> j) & 1) | (((back >> j) & 1) << 1));
        ++m;
      }
    }
    if (m == 0) return;
    double v[P * kScanGroup];
    pair_dists(m, pu, pj, i0, v, [&](int j) { return &pts_[(g0 + j) * d]; });
    for (int t = 0; t < m; ++t) {
      const int j = pj[t];
      const std::size_t q = g0 + j, p = i0 + pu[t];
      if ((way[t] & 1) && q != p && v[t] <= ps.r2[q]) {
        visit(q, p, v[t], ps.r2[q]);
        sq.radius[j] = scaled_radius(ps.r2[q]);
        sq.skip[j] = query_threshold(sq, j);
      }
      if ((way[t] & 2) && v[t] <= ps.r2[p]) {
        visit(p, q, v[t], ps.r2[p]);
        ps.skip[p] = threshold(scaled_radius(ps.r2[p]), ps.norm[p], ps.norm2[p]);
      }
    }
  }

  // The test in float32. In real numbers, with s = ||q'||^2 + ||p'||^2, x = <q', p'> as
  // computed, the criterion above is L > T with L = (1 - slack) s - 2x - floor and
  // T = t^2 m, t = radius + 2^-22 (||q'|| + ||p'||) + 2^-140, m = 1 + 2^-40 + (d + 3) 2^-50.
  // T_j is T evaluated in float64 with the largest ||p'|| of all points: at least
  // (1 - 2^-50) T (T grows with ||p'||; four roundings). The point's share
  // A_i = fl32(fl64((1 - slack - 2^-19) ||p'||^2)) (build_scan_copy()) and the query's
  // B_j = fl32(fl64((1 - slack - 2^-19) ||q'||^2 - 2 floor - T_j (1 + 2^-19)))
  // (query_threshold()) are each at least 2^-20 (||p'||^2, resp. ||q'||^2 + T_j) plus a
  // floor below their real shares (the float64 and float32 roundings are far smaller), and
  // the lane skips when h = fl32(fl32(A_i + B_j) - 2x) > 0 and x is finite: then
  // A_i + B_j - 2x > -2^-24 |A_i + B_j| >= -2^-23 (s + T_j) (a positive h needs
  // fl32(A_i + B_j) > 2x, and fl32(A_i + B_j) is within 2^-24 of A_i + B_j, plus 2^-149
  // below float32's normal range, which the floor covers), so L - T_j > 2^-21 (s + T_j) and
  // L > T: the criterion holds, and dist2() > r2[j]. The guards keep a few more points
  // than the criterion itself would, and dist2() <= r2[j] decides each of those, so the
  // visits are the same. A query past g has B_j = +inf: its lane always skips (its dot
  // products are exactly 0).
  float query_threshold(const ScanQueries& sq, int j) const {
    return threshold(sq.radius[j], sq.norm[j], sq.norm2[j]);
  }
  float threshold(double radius, double norm, double norm2) const {
    const double m = 1.0 + 0x1p-40 + double(d_ + 3) * 0x1p-50;
    const double t = radius + (0x1p-22 * (norm + len32_max_) + 0x1p-140);
    const double tm = t * t * m;
    return static_cast<float>((1.0 - scan_slack() - 0x1p-19) * norm2 - 2.0 * scan_floor() -
                              tm * (1.0 + 0x1p-19));
  }

  // The points i0 .. i0 + np - 1 against the queries, point u's dot products (the
  // copies') at dot[u * stride + j]: the test of all kScanGroup queries at once (kScanVecs
  // vectors) for each point, then the distances of the pairs it does not exclude
  // (dist2_batch()), then their visits, in the points' order and, for each point, in
  // increasing j. The whole block is tested with the thresholds it started with, which a
  // visit may only lower, so the test keeps a superset of the pairs a test after each
  // visit would, and dist2() <= r2[j] at the time of the visit decides each, as it would
  // have: the same visits. (A distance of many dimensions is d / kLanes dependent
  // additions per lane; one pair at a time, the visits waited on the adder. In the first
  // round, which fills the neighbour lists, a query visits about K (1 + ln(N / K)) points,
  // K the lists' length: each one nearer than its K nearest so far, in the points' order.)
  static constexpr int kTestPoints = 16;  // the most points a block tests at once
  template <typename F>
  void test_points(std::size_t i0, int np, const float* dot, std::size_t stride,
                   const double* const* qs, ScanQueries& sq, int g, double* r2,
                   F& visit) const {
    const uint64_t live = g < kScanGroup ? (uint64_t(1) << g) - 1 : ~uint64_t(0);
    uint8_t pu[kTestPoints * kScanGroup], pj[kTestPoints * kScanGroup];
    int m = 0;
    for (int u = 0; u < np; ++u) {
      uint64_t near = near_queries(point32_[i0 + u], dot + u * stride, sq) & live;
      for (; near; near &= near - 1) {
        pu[m] = static_cast<uint8_t>(u);
        pj[m] = static_cast<uint8_t>(__builtin_ctzll(near));
        ++m;
      }
    }
    if (m == 0) return;
    double v[kTestPoints * kScanGroup];
    pair_dists(m, pu, pj, i0, v, [qs](int j) { return qs[j]; });
    for (int t = 0; t < m; ++t) {
      const int j = pj[t];
      if (v[t] <= r2[j]) {
        visit(j, ids_[i0 + pu[t]], v[t], r2[j]);
        sq.radius[j] = scaled_radius(r2[j]);
        sq.skip[j] = query_threshold(sq, j);
      }
    }
  }

  // The test of a point (its share a, its dot products dot[j] with the queries): a bit for
  // each query it does not exclude.
  uint64_t near_queries(float a, const float* dot, const ScanQueries& sq) const {
    uint64_t near = 0;
    for (int v = 0; v < kScanVecs; ++v) {
      ScanLanes x, b;
      std::memcpy(&x, dot + v * kScanWidth, sizeof x);
      std::memcpy(&b, sq.skip + v * kScanWidth, sizeof b);
      near |= near_lanes((a + b) - (x + x), x) << (v * kScanWidth);
    }
    return near;
  }

  // The same test of one query (its threshold b) against the points of a group (their
  // shares a[j], their dot products dot[j] with it): a bit for each point it does not
  // exclude (scan_pairs(); a + b is the same sum in either order).
  uint64_t near_points(float b, const float* dot, const float* a) const {
    uint64_t near = 0;
    for (int v = 0; v < kScanVecs; ++v) {
      ScanLanes x, s;
      std::memcpy(&x, dot + v * kScanWidth, sizeof x);
      std::memcpy(&s, a + v * kScanWidth, sizeof s);
      near |= near_lanes((s + b) - (x + x), x) << (v * kScanWidth);
    }
    return near;
  }

  // A bit for each lane that the test does not skip: h > 0 with a finite dot product x
  // skips.
  static uint64_t near_lanes(ScanLanes h, ScanLanes x) {
#if defined(__AVX512F__)
    const __mmask16 skip = _mm512_cmp_ps_mask(h, _mm512_setzero_ps(), _CMP_GT_OQ) &
                           _mm512_cmp_ps_mask(x, _mm512_set1_ps(-0x1.fffffep127f), _CMP_GE_OQ);
    return uint64_t(uint16_t(~skip));
#else
    const auto skip = (h > 0.0f) & (x >= -0x1.fffffep127f);
    uint64_t near = 0;
    for (int l = 0; l < kScanWidth; ++l) {
      if (!skip[l]) near |= uint64_t(1) << l;
    }
    return near;
#endif
  }

  // v[t] = dist2(query(pj[t]), point i0 + pu[t]) for t < m, kDistBatch at a time.
  template <typename Query>
  void pair_dists(int m, const uint8_t* pu, const uint8_t* pj, std::size_t i0, double* v,
                  Query&& query) const {
    const std::size_t d = static_cast<std::size_t>(d_);
    int t = 0;
    for (; t + kDistBatch <= m; t += kDistBatch) {
      const double* a[kDistBatch];
      const double* b[kDistBatch];
      for (int w = 0; w < kDistBatch; ++w) {
        a[w] = query(pj[t + w]);
        b[w] = &pts_[(i0 + pu[t + w]) * d];
      }
      dist2_batch(a, b, v + t);
    }
    for (; t < m; ++t) v[t] = dist2(query(pj[t]), &pts_[(i0 + pu[t]) * d]);
  }

  // dist2(a[w], b[w]) for w < kDistBatch, the same bits, their running sums apart.
  static constexpr int kDistBatch = 4;
  void dist2_batch(const double* const* a, const double* const* b, double* out) const {
    using V = Lanes8<double>::type;
    static_assert(sizeof(V) == kLanes * sizeof(double), "a lane per running sum");
    V acc[kDistBatch];
    for (int w = 0; w < kDistBatch; ++w) acc[w] = V{};
    int64_t k = 0;
    for (; k + kLanes <= d_; k += kLanes) {
#pragma GCC unroll 4
      for (int w = 0; w < kDistBatch; ++w) {
        V x, y;
        std::memcpy(&x, a[w] + k, sizeof x);
        std::memcpy(&y, b[w] + k, sizeof y);
        const V t = x - y;
        acc[w] += t * t;
      }
    }
    for (int w = 0; w < kDistBatch; ++w) {
      double s[kLanes];
      std::memcpy(s, &acc[w], sizeof s);
      for (int64_t j = 0; k + j < d_; ++j) {
        const double t = a[w][k + j] - b[w][k + j];
        s[j] += t * t;
      }
      out[w] = combine(s);
    }
  }

  // scan_group() with the dot products of 16 points at a time on AMX tiles (amx_scan.h),
  // from bfloat16 copies of the float32 copies: q'' and p'' round each coordinate of q'
  // and p' to 8 significant bits (relative error at most 2^-8; the instruction reads a
  // subnormal as zero, at most 2^-126 more), so each product is within (2^-7 + 2^-16)
  // |q'_k p'_k| plus subnormal terms of q'_k p'_k, and their float32 sum, one rounding per
  // product (fused; subnormal results flushed, at most 2^-126 each), is within
  // (2^-7 + 2^-16 + 1.01 gamma_d) S / 2 plus d 2^-125 and those terms of <q', p'>, all of
  // which (2^-7 + 2^-14 + (2d + 16) 2^-24) S + 2^-100 bounds, as twice the error of the
  // estimate. Only that bound differs from scan_points()'s test, so the visits and their
  // values are the same.
  template <typename F>
  void scan_group_amx(const double* const* qs, int g, double* r2, F& visit,
                      std::size_t start) const {
#if DCPE_HAVE_AMX
    const std::size_t n = ids_.size(), dp = dp_;
    const int nqb = (g + 15) / 16;
    const std::size_t block = dp / 2 * 16;
    std::vector<uint32_t> qv(static_cast<std::size_t>(nqb) * block, 0u);
    ScanQueries sq;
    copy_queries(qs, g, r2, sq, [&qv, block](int j, std::size_t k, float v) {
      if (v == 0.0f) return;  // the zero rows of queries j >= g, and zero coordinates
      uint32_t* b = &qv[static_cast<std::size_t>(j / 16) * block + j % 16];
      b[k / 2 * 16] |= uint32_t(amx::to_bf16(v)) << (16 * (k % 2));
    });
    alignas(64) float dots[16 * 64] = {};
    amx::Tiles tiles;
    const std::size_t s = start / 16 * 16;
    for (std::size_t b = 0; b < n; b += 16) {
      const std::size_t i0 = s + b < n ? s + b : s + b - (n + 15) / 16 * 16;
      amx::dots16(&pts16_[i0 * dp], dp, qv.data(), nqb, dots);
      const std::size_t m = std::min<std::size_t>(16, n - i0);
      test_points(i0, static_cast<int>(m), dots, 64, qs, sq, g, r2, visit);
    }
#else
    (void)qs, (void)g, (void)r2, (void)visit, (void)start;
#endif
  }

  // Squared distance from q to the node's bounding box (a lower bound of dist2 for every
  // point inside, also in floating point: each term and the sum round monotonically). A
  // term is lo - q below the box, q - hi above it, else 0 (at most one of the two
  // differences is positive, since lo <= hi).
  double box_dist2(int32_t node, const double* q) const {
    const double* lo = &box_[static_cast<std::size_t>(node) * 2 * d_];
    return box_dist2(lo, lo + d_, q);
  }
  // ... and to the box [lo, hi] (also a block's: block_beyond())
  double box_dist2(const double* lo, const double* hi, const double* q) const {
    return sum_squares([q, lo, hi](int64_t k) {
      return std::max(std::max(lo[k] - q[k], q[k] - hi[k]), 0.0);
    });
  }

  int32_t build_rec(int32_t lo, int32_t hi) {
    const int32_t node = static_cast<int32_t>(nodes_.size());
    nodes_.push_back({lo, hi, -1, -1});
    box_.resize(box_.size() + 2 * d_);
    double* blo = &box_[static_cast<std::size_t>(node) * 2 * d_];
    double* bhi = blo + d_;
    for (int64_t k = 0; k < d_; ++k) {
      blo[k] = kInf;
      bhi[k] = -kInf;
    }
    for (int32_t i = lo; i < hi; ++i) {
      const double* p = src_ + static_cast<std::size_t>(ids_[i]) * d_;
      for (int64_t k = 0; k < d_; ++k) {
        blo[k] = std::min(blo[k], p[k]);
        bhi[k] = std::max(bhi[k], p[k]);
      }
    }
    if (hi - lo <= kLeaf) return node;
    int64_t dim = 0;
    double spread = -1.0;
    for (int64_t k = 0; k < d_; ++k) {
      if (bhi[k] - blo[k] > spread) {
        spread = bhi[k] - blo[k];
        dim = k;
      }
    }
    if (!(spread > 0.0)) return node;  // all points equal: one leaf
    const int32_t mid = lo + (hi - lo) / 2;
    const double* src = src_;
    const int64_t d = d_;
    std::nth_element(ids_.begin() + lo, ids_.begin() + mid, ids_.begin() + hi,
                     [src, d, dim](int32_t a, int32_t b) {
                       const double va = src[static_cast<std::size_t>(a) * d + dim];
                       const double vb = src[static_cast<std::size_t>(b) * d + dim];
                       return va < vb || (va == vb && a < b);
                     });
    const int32_t left = build_rec(lo, mid);
    const int32_t right = build_rec(mid, hi);
    nodes_[node].left = left;
    nodes_[node].right = right;
    return node;
  }

  // The leaves' points, kBlock at a time: a leaf's points fill blocks of their own from
  // block Node::right on, coordinate k of the leaf's point kBlock b + l at
  // leaf_[((right + b) d + k) kBlock + l] (zero past its last point), so that a leaf's
  // squared distances are computed kBlock at a time as vector lanes, each lane summing
  // its terms as dist2() does (the same numbers). A leaf holds 12 to 24 points (kLeaf;
  // more where they are all equal), so the blocks hold at most 24 / 17 times the points.
  void build_leaf_blocks() {
    const std::size_t d = static_cast<std::size_t>(d_);
    int32_t blocks = 0;
    for (Node& nd : nodes_) {
      if (nd.left >= 0) continue;
      nd.right = blocks;
      blocks += (nd.hi - nd.lo + kBlock - 1) / kBlock;
    }
    leaf_.assign(static_cast<std::size_t>(blocks) * d * kBlock, 0.0);
    for (const Node& nd : nodes_) {
      if (nd.left >= 0) continue;
      for (int32_t i = nd.lo; i < nd.hi; ++i) {
        const std::size_t b = static_cast<std::size_t>(nd.right + (i - nd.lo) / kBlock);
        const std::size_t l = static_cast<std::size_t>((i - nd.lo) % kBlock);
        const double* p = src_ + static_cast<std::size_t>(ids_[i]) * d;
        for (std::size_t k = 0; k < d; ++k) leaf_[(b * d + k) * kBlock + l] = p[k];
      }
    }
  }

  template <typename F>
  void search_rec(int32_t node, const double* q, double& r2, F& visit,
                  int64_t& examined) const {
    const Node& nd = nodes_[node];
    if (nd.left < 0) {
      examined += nd.hi - nd.lo;
      // dist2(q, p) for the leaf's points, a block of kBlock at a time (build_leaf_blocks())
      typedef Lanes8<double>::type Block __attribute__((aligned(8)));
      static_assert(sizeof(Block) == kBlock * sizeof(double), "a point per lane");
      const std::size_t d = static_cast<std::size_t>(d_);
      int32_t b = nd.right;
      for (int32_t i0 = nd.lo; i0 < nd.hi; i0 += kBlock, ++b) {
        const Block* p =
            reinterpret_cast<const Block*>(&leaf_[static_cast<std::size_t>(b) * d * kBlock]);
        Block acc[kLanes] = {};
        std::size_t k = 0;
        for (; k + kLanes <= d; k += kLanes) {
#pragma GCC unroll 8
          for (int j = 0; j < kLanes; ++j) {
            const Block t = q[k + j] - p[k + j];
            acc[j] += t * t;
          }
        }
#pragma GCC unroll 8
        for (int j = 0; j < kLanes; ++j) {
          if (k + j < d) {
            const Block t = q[k + j] - p[k + j];
            acc[j] += t * t;
          }
        }
        const Block s = combine(acc);
        const int m = std::min<int32_t>(kBlock, nd.hi - i0);
        for (int l = 0; l < m; ++l) {
          const double v = s[l];
          if (v <= r2) visit(ids_[i0 + l], v, r2);
        }
      }
      return;
    }
    const double dl = box_dist2(nd.left, q), dr = box_dist2(nd.right, q);
    const bool left_first = dl <= dr;
    const int32_t first = left_first ? nd.left : nd.right;
    const int32_t second = left_first ? nd.right : nd.left;
    if ((left_first ? dl : dr) <= r2) search_rec(first, q, r2, visit, examined);
    if ((left_first ? dr : dl) <= r2) search_rec(second, q, r2, visit, examined);
  }

  int64_t d_ = 0;
  bool tree_ = true;
  const double* src_ = nullptr;
  std::vector<int32_t> ids_;
  std::vector<double> pts_;   // without a tree: the points in the order of ids_
  static constexpr int kBlock = 8;
  std::vector<double> leaf_;  // with a tree: the leaves' points (build_leaf_blocks())
  // without a tree: the float32 copy of the points (build_scan_copy()), its squared norms
  // and norms, the points' mean and the power of two it was scaled by
  std::vector<float> pts32_;
  bool amx_ = false;             // scan_group() on AMX tiles (amx_scan.h)
  std::size_t dp_ = 0;           // the bfloat16 copy's row length
  std::vector<uint16_t> pts16_;  // the float32 copy in bfloat16 (build_scan_copy())
  std::vector<double> center_;
  std::vector<float> point32_;  // each point's share of the test (build_scan_copy())
  double len32_max_ = 0.0;      // the largest ||p'|| of the copy
  double scale_ = 1.0;
  std::vector<Node> nodes_;
  std::vector<double> box_;
  std::vector<double> blk_box_;  // without a tree: each block's box (build_blocks())
  // the blocks that the scans with blocks have met and skipped since build_blocks(): once
  // kBlocksTrial were met, the scans test blocks only while at least one in
  // kBlocksMinShare was skipped (scan_group())
  static constexpr int64_t kBlocksTrial = 1 << 16;
  static constexpr int64_t kBlocksMinShare = 16;
  mutable std::atomic<int64_t> blk_seen_{0}, blk_skipped_{0};

 public:
  // ... their counts (the first search's statistics, linear_list_stats())
  int64_t blocks_tested() const { return blk_seen_.load(); }
  int64_t blocks_skipped() const { return blk_skipped_.load(); }
};

// Sum of the token distances between the tokens of two clusters stored as blocks
// [d][n] (coordinate k of token i at k * n + i). Each pair's distance is the matrix
// engine's (squares of direct differences summed in coordinate order in T, square root in
// T); the sum is float64, over the tokens of `a` in order and, for each, over those of `b`:
// runs of 16 tokens, each run's distances summed from 0 and added to the total, then the
// tokens past the last run one at a time. A distance is d dependent additions, each
// waiting on the last, so the (token of a, run of b) items run several at a time, their
// running sums apart (vector lanes across the run's tokens); the float64 sums then take
// them in that order. A run is 16 / W vectors of the build's widest registers (W lanes of
// T: BlockLanes), and min(kBlockSumItems, 8 / (16 / W)) items run together, so that their
// running sums take eight registers: with 512-bit vectors two per run and four items;
// with AVX2 two (float) or four (double) per run, four or two items. (A vector of eight
// doubles, two AVX2 registers, had made four items sixteen registers, spilled to memory
// at every coordinate: a whole tree of 1,500 x 256 in float64 without a cache took 10.1 s,
// 8.8 times the float32 run, on two cores of an AMD EPYC with AVX2; now 2.1 to 2.5 s.)
constexpr int64_t kBlockSumLanes = 16;  // block_sum()'s tokens of b at a time
constexpr int kBlockSumItems = 4;

template <typename T>
struct BlockLanes {
#if defined(__AVX512F__)
  static constexpr int kBytes = 64;
#elif defined(__AVX__)
  static constexpr int kBytes = 32;
#else
  static constexpr int kBytes = 16;
#endif
  static constexpr int W = kBytes / static_cast<int>(sizeof(T));
  typedef T type __attribute__((vector_size(kBytes)));
};

template <typename T>
double block_sum(const T* __restrict a, int64_t na, const T* __restrict b, int64_t nb,
                 int64_t d) {
  constexpr int L = kBlockSumLanes, W = BlockLanes<T>::W, H = L / W;  // H vectors a run
  constexpr int U = std::max(1, std::min(kBlockSumItems, 8 / H));
  using V = typename BlockLanes<T>::type;
  static_assert(L % W == 0 && sizeof(V) == W * sizeof(T), "a run is whole vectors");
  const int64_t runs = nb / L, items = na * runs;
  double total = 0.0;
  auto rest = [&](int64_t i) {  // row i's tokens past its last run
    for (int64_t j = runs * L; j < nb; ++j) {
      T acc;
      {
        const T t = b[j] - a[i];
        acc = t * t;
      }
      for (int64_t k = 1; k < d; ++k) {
        const T t = b[k * nb + j] - a[k * na + i];
        acc += t * t;
      }
      total += static_cast<double>(std::sqrt(acc));
    }
  };
  if (runs == 0) {
    for (int64_t i = 0; i < na; ++i) rest(i);
    return total;
  }
  for (int64_t it0 = 0; it0 < items; it0 += U) {
    const int m = static_cast<int>(std::min<int64_t>(U, items - it0));
    const T* ai[U];
    const T* bj[U];
    for (int u = 0; u < U; ++u) {
      const int64_t it = it0 + std::min(u, m - 1);  // a short group repeats its last item
      ai[u] = a + it / runs;
      bj[u] = b + it % runs * L;
    }
    V acc[U][H];
    for (int u = 0; u < U; ++u) {
      for (int h = 0; h < H; ++h) {
        V c;
        std::memcpy(&c, bj[u] + W * h, sizeof c);
        const V t = c - ai[u][0];
        acc[u][h] = t * t;
      }
    }
    for (int64_t k = 1; k < d; ++k) {
      for (int u = 0; u < U; ++u) {
        const T xa = ai[u][k * na];
        const T* col = bj[u] + k * nb;
        for (int h = 0; h < H; ++h) {
          V c;
          std::memcpy(&c, col + W * h, sizeof c);
          const V t = c - xa;
          acc[u][h] += t * t;
        }
      }
    }
    for (int u = 0; u < m; ++u) {
      T sq[L];
      std::memcpy(sq, acc[u], sizeof sq);
      double sum = 0.0;
      for (int l = 0; l < L; ++l) sum += static_cast<double>(std::sqrt(sq[l]));
      total += sum;
      if ((it0 + u) % runs == runs - 1) rest((it0 + u) / runs);
    }
  }
  return total;
}

#if defined(__AVX512F__)
// block_sum() for float32 in 512-bit vectors: the same distances and the same float64 sums
// in the same order. Each (token i of a, run of 16 tokens of b) is an item, the last run of
// a row masked to the tokens left (lanes past them are computed and dropped). A distance
// is d dependent additions, each waiting on the last, so kBlockSumItems items run together
// (their running sums in separate registers); every lane still adds its coordinates in
// order (no fused multiply-add: the file is built with -ffp-contract=off), and the float64
// sums then take the items in block_sum()'s order: a full run's 16 distances summed from
// 0 and added to the total, a masked run's added one at a time.
template <>
inline double block_sum<float>(const float* __restrict a, int64_t na,
                               const float* __restrict b, int64_t nb, int64_t d) {
  constexpr int U = kBlockSumItems;
  const int64_t runs = (nb + 15) / 16, items = na * runs;
  const int left = static_cast<int>(nb % 16);
  const __mmask16 last = left == 0 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  alignas(64) float dist[U][16];
  double total = 0.0;
  for (int64_t it0 = 0; it0 < items; it0 += U) {
    const int m = static_cast<int>(std::min<int64_t>(U, items - it0));
    const float* ai[U];
    const float* bj[U];
    __mmask16 mask[U];
    for (int u = 0; u < U; ++u) {
      const int64_t it = it0 + std::min(u, m - 1);  // a short group repeats its last item
      const int64_t i = it / runs, r = it % runs;
      ai[u] = a + i;
      bj[u] = b + r * 16;
      mask[u] = r == runs - 1 ? last : __mmask16(0xFFFF);
    }
    __m512 acc[U];
    for (int u = 0; u < U; ++u) {
      const __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask[u], bj[u]),
                                     _mm512_set1_ps(ai[u][0]));
      acc[u] = _mm512_mul_ps(t, t);
    }
    for (int64_t k = 1; k < d; ++k) {
      for (int u = 0; u < U; ++u) {
        const __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask[u], bj[u] + k * nb),
                                       _mm512_set1_ps(ai[u][k * na]));
        acc[u] = _mm512_add_ps(acc[u], _mm512_mul_ps(t, t));
      }
    }
    for (int u = 0; u < m; ++u) _mm512_store_ps(dist[u], _mm512_sqrt_ps(acc[u]));
    for (int u = 0; u < m; ++u) {
      if (mask[u] == __mmask16(0xFFFF)) {
        double sum = 0.0;
        for (int l = 0; l < 16; ++l) sum += static_cast<double>(dist[u][l]);
        total += sum;
      } else {
        for (int l = 0; l < left; ++l) total += static_cast<double>(dist[u][l]);
      }
    }
  }
  return total;
}
#endif

// One token pair of block_sum()'s scalar path: the rows of its two tokens (d contiguous
// coordinates each; block_sum()'s a and b).
template <typename T>
struct Chain {
  const T* a;
  const T* b;
};

// r[i][k] becomes r[k][i] (8 x 8).
template <typename V>
inline void transpose8(V* r) {
  V t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 2, 10, 4, 12, 6, 14);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int h = 0; h < 2; ++h) {
      u[i + h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + h + 2] = __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14,
                                             15);
    }
  }
  for (int h = 0; h < 4; ++h) {
    r[h] = __builtin_shufflevector(u[h], u[h + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[h + 4] = __builtin_shufflevector(u[h], u[h + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// The end of chain_sums8() and chain_sums16(): the L running sums (acc, a vector of L
// lanes, lane i chain i) take each chain's coordinates k .. d - 1 in order, into out.
template <typename T, int L, typename V>
inline void chain_tails(const Chain<T>* c, int64_t k, int64_t d, const V* acc, T* out) {
  static_assert(sizeof(V) == L * sizeof(T), "a lane per chain");
  T s[L];
  std::memcpy(s, acc, sizeof s);
  for (int i = 0; i < L; ++i) {
    for (int64_t j = k; j < d; ++j) {
      const T t = c[i].b[j] - c[i].a[j];
      s[i] += t * t;
    }
    out[i] = s[i];
  }
}

// chain_sums() for eight chains: eight coordinates of each chain at a time, squared as
// rows and transposed, so that lane i of the running sum is chain i, adding its
// coordinates in order.
template <typename T>
void chain_sums8(const Chain<T>* c, int64_t d, T* out) {
  using V = typename Lanes8<T>::type;
  V acc = V{};
  int64_t k = 0;
  for (; k + 8 <= d; k += 8) {
    V r[8];
    for (int i = 0; i < 8; ++i) {
      V a, b;
      std::memcpy(&a, c[i].a + k, sizeof a);
      std::memcpy(&b, c[i].b + k, sizeof b);
      const V t = b - a;
      r[i] = t * t;
    }
    transpose8(r);
    for (int j = 0; j < 8; ++j) acc += r[j];  // coordinate k + j of every chain
  }
  chain_tails<T, 8>(c, k, d, &acc, out);
}

#if defined(__AVX512F__)
// chain_sums8() for sixteen float chains in 512-bit vectors: chains i and i + 8 share a
// register, one in each 256-bit half, and each half is transposed as transpose8() does
// (the same shuffles on both halves at once), so that lane i of the running sum is chain
// i (i < 8) and lane 8 + i chain 8 + i, each adding its coordinates in order: the same
// sums as chain_sums8()'s, with a third fewer instructions per chain.
typedef float Half8 __attribute__((vector_size(8 * sizeof(float))));
typedef float Pair8 __attribute__((vector_size(16 * sizeof(float))));

inline void transpose8_halves(Pair8* r) {
  Pair8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 16, 2, 18, 4, 20, 6, 22,
                                   8, 24, 10, 26, 12, 28, 14, 30);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 1, 17, 3, 19, 5, 21, 7, 23,
                                       9, 25, 11, 27, 13, 29, 15, 31);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int h = 0; h < 2; ++h) {
      u[i + h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 16, 17, 4, 5, 20, 21,
                                         8, 9, 24, 25, 12, 13, 28, 29);
      u[i + h + 2] = __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 18, 19, 6, 7, 22,
                                             23, 10, 11, 26, 27, 14, 15, 30, 31);
    }
  }
  for (int h = 0; h < 4; ++h) {
    r[h] = __builtin_shufflevector(u[h], u[h + 4], 0, 1, 2, 3, 16, 17, 18, 19,
                                   8, 9, 10, 11, 24, 25, 26, 27);
    r[h + 4] = __builtin_shufflevector(u[h], u[h + 4], 4, 5, 6, 7, 20, 21, 22, 23,
                                       12, 13, 14, 15, 28, 29, 30, 31);
  }
}

inline Pair8 load_pair8(const float* lo, const float* hi) {
  Half8 a, b;
  std::memcpy(&a, lo, sizeof a);
  std::memcpy(&b, hi, sizeof b);
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

inline void chain_sums16(const Chain<float>* c, int64_t d, float* out) {
  Pair8 acc = Pair8{};
  int64_t k = 0;
  for (; k + 8 <= d; k += 8) {
    Pair8 r[8];
    for (int i = 0; i < 8; ++i) {
      const Pair8 t = load_pair8(c[i].b + k, c[i + 8].b + k) -
                      load_pair8(c[i].a + k, c[i + 8].a + k);
      r[i] = t * t;
    }
    transpose8_halves(r);
    for (int j = 0; j < 8; ++j) acc += r[j];  // coordinate k + j of every chain
  }
  chain_tails<float, 16>(c, k, d, &acc, out);
}
#endif

// out[c] = the squared distance of chain c (the sum of block_sum()'s scalar path, before
// its square root), c < n: the same operations in the same order, eight chains at once as
// the lanes of vectors (one chain is d dependent additions, each waiting on the last; a
// last run of fewer than eight repeats its last chain). The chains read the tokens' rows,
// where the coordinates of a token are contiguous (in a cluster's block they are
// strided). (A first term t * t is 0 + t * t exactly.)
template <typename T>
void chain_sums(const Chain<T>* c, int n, int64_t d, T* out) {
  int i = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    for (; i + 16 <= n; i += 16) chain_sums16(c + i, d, out + i);
  }
#endif
  for (; i + 8 <= n; i += 8) chain_sums8(c + i, d, out + i);
  if (i < n) {
    Chain<T> last[8];
    T s[8];
    for (int j = 0; j < 8; ++j) last[j] = c[std::min(i + j, n - 1)];
    chain_sums8(last, d, s);
    for (int j = i; j < n; ++j) out[j] = s[j - i];
  }
}

// out[i * ldo + q] = the distance of token i (row xs[i], d coordinates), i < n, to token
// q of the transposed array xt (stride `stride`), q < len: block_sum()'s expression, so
// the same number in T (the dense searches, LinearEngine::dense_search(); span_sums()).
// The float32 version with AVX-512 and the AVX2 versions compute whole blocks of 16: ldo
// and xt's rows must then hold len rounded up to 16.
template <typename T>
void span_dists(const T* __restrict xt, int64_t stride, int64_t d, const T* const* xs,
                int64_t n, int64_t len, T* __restrict out, int64_t ldo) {
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = xs[i];
    T* o = out + i * ldo;
    {
      const T xv = xi[0];
      for (int64_t q = 0; q < len; ++q) {
        const T t = xt[q] - xv;
        o[q] = t * t;
      }
    }
    for (int64_t k = 1; k < d; ++k) {
      const T* col = xt + k * stride;
      const T xv = xi[k];
      for (int64_t q = 0; q < len; ++q) {
        const T t = col[q] - xv;
        o[q] += t * t;
      }
    }
    for (int64_t q = 0; q < len; ++q) o[q] = std::sqrt(o[q]);
  }
}

// racc[q] = sum over the n tokens x (row-major, d coordinates each) of their distance to
// token q of the transposed array xt (stride `stride`), q < len, in float64; buf: len
// scratch entries of T. Each distance from span_dists() (block_sum()'s expression),
// computed for a chunk of tokens at a time (the loops run over contiguous coordinates and
// vectorise).
template <typename T>
void span_sums(const T* __restrict xt, int64_t stride, int64_t d, const T* __restrict x,
               int64_t n, int64_t len, T* __restrict buf, double* __restrict racc) {
  constexpr int64_t kChunk = 2048;
  std::fill(racc, racc + len, 0.0);
  for (int64_t b = 0; b < n; ++b) {
    const T* xb = x + b * d;
    for (int64_t c = 0; c < len; c += kChunk) {
      const int64_t e = std::min(len, c + kChunk);
      span_dists<T>(xt + c, stride, d, &xb, 1, e - c, buf + c, 0);
      for (int64_t j = c; j < e; ++j) racc[j] += static_cast<double>(buf[j]);
    }
  }
}

// At most this many tokens in a group of the hand-over's span_sums_group()
constexpr int64_t kGroupTokens = 16;

// The vectorised span_sums_group()s' sums, zeroed: out[b] = racc + c * lenp for each token b
// of cluster c (b counted from seg[0]), so that each token's roots go to its own cluster's.
inline void group_sums(const int64_t* seg, int g, int64_t lenp, double* racc, double** out) {
  for (int c = 0; c < g; ++c) {
    for (int64_t b = seg[c]; b < seg[c + 1]; ++b) out[b - seg[0]] = racc + c * lenp;
  }
  std::fill(racc, racc + g * lenp, 0.0);
}

// The sums of span_sums() for g consecutive clusters of the row-major tokens x (cluster c's
// tokens are rows seg[c] - seg[0] .. seg[c + 1] - seg[0] of x) against the same len tokens
// of xt: cluster c's in racc[c * lenp ...], lenp >= len a multiple of 16, each the same
// float64 sum in the same order as span_sums() on its own (racc[c * lenp + q] is 0, then
// the distance of each of the cluster's tokens to token q added in their order).
// span_sums() of each cluster on its own: the sums span_sums_group() is defined by.
template <typename T>
void span_sums_each(const T* __restrict xt, int64_t stride, int64_t d, const T* __restrict x,
                    const int64_t* seg, int g, int64_t len, int64_t lenp, T* __restrict buf,
                    double* __restrict racc) {
  for (int c = 0; c < g; ++c) {
    span_sums<T>(xt, stride, d, x + (seg[c] - seg[0]) * d, seg[c + 1] - seg[c], len, buf,
                 racc + c * lenp);
  }
}

template <typename T>
void span_sums_group(const T* __restrict xt, int64_t stride, int64_t d, const T* __restrict x,
                     const int64_t* seg, int g, int64_t len, int64_t lenp, T* __restrict buf,
                     double* __restrict racc) {
  span_sums_each<T>(xt, stride, d, x, seg, g, len, lenp, buf, racc);
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// The roots of sixteen float32 squared distances, widened and added to the float64 sums
// lo (lanes 0-7) and hi (8-15).
inline void span_add(__m512 v, __m512d& lo, __m512d& hi) {
  v = _mm512_sqrt_ps(v);
  lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
  hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
}

// The squared distances of B tokens (rows xs[0], xs[1], ..., d coordinates each) to Q
// blocks of 16 tokens of xt (columns q, q + 16, ...), each a running sum over the
// coordinates in order: B * Q independent sums, so that the additions of one do not wait
// on each other's.
template <int B, int Q>
inline void span_squares(const float* __restrict xt, int64_t stride, int64_t d,
                         const float* const* xs, int64_t q, __m512 (&a)[B][Q]) {
  // coordinate 0 apart (a first term is 0 + t * t), so that the sums stay in registers
  {
    __m512 c[Q];
#pragma GCC unroll 4
    for (int v = 0; v < Q; ++v) c[v] = _mm512_loadu_ps(xt + q + 16 * v);
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) {
      const __m512 xv = _mm512_set1_ps(xs[b][0]);
#pragma GCC unroll 4
      for (int v = 0; v < Q; ++v) {
        const __m512 t = _mm512_sub_ps(c[v], xv);
        a[b][v] = _mm512_mul_ps(t, t);
      }
    }
  }
  for (int64_t k = 1; k < d; ++k) {
    __m512 c[Q];
#pragma GCC unroll 4
    for (int v = 0; v < Q; ++v) c[v] = _mm512_loadu_ps(xt + k * stride + q + 16 * v);
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) {
      const __m512 xv = _mm512_set1_ps(xs[b][k]);
#pragma GCC unroll 4
      for (int v = 0; v < Q; ++v) {
        const __m512 t = _mm512_sub_ps(c[v], xv);
        a[b][v] = _mm512_add_ps(a[b][v], _mm512_mul_ps(t, t));
      }
    }
  }
}

// ... of B consecutive rows x0, x0 + d, ...
template <int B, int Q>
inline void span_squares(const float* __restrict xt, int64_t stride, int64_t d,
                         const float* __restrict x0, int64_t q, __m512 (&a)[B][Q]) {
  const float* xs[B];
  for (int b = 0; b < B; ++b) xs[b] = x0 + b * d;
  span_squares<B, Q>(xt, stride, d, xs, q, a);
}

// span_squares(), each sum's root added (span_add()) to its block's sums token after token.
template <int B, int Q>
inline void span_kernel(const float* __restrict xt, int64_t stride, int64_t d,
                        const float* __restrict x0, int64_t q, __m512d* lo, __m512d* hi) {
  __m512 a[B][Q];
  span_squares<B, Q>(xt, stride, d, x0, q, a);
  for (int v = 0; v < Q; ++v) {
    for (int b = 0; b < B; ++b) span_add(a[b][v], lo[v], hi[v]);
  }
}

// AVX-512 version for float32: blocks of 16 tokens of xt, against 4 tokens of x at a time,
// and the last 1 to 3 tokens of x against 4 blocks at a time (at a flat cut's hand-over
// most clusters have fewer than 4 tokens; one block at a time, their sums waited on the
// adder, and the scalar last block cost as much), every sum in registers; the
// same arithmetic per pair (no fused multiply-add: the file is built with
// -ffp-contract=off, and each square and sum is its own instruction) and the same float64
// sums, in the same order (over the tokens of x, for each token q). A last block of fewer
// than 16 tokens is computed in full and stored in part: xt's rows must be readable up to
// len rounded up to 16 (finish_on_matrix() pads its tiles so).
template <>
inline void span_sums<float>(const float* __restrict xt, int64_t stride, int64_t d,
                             const float* __restrict x, int64_t n, int64_t len,
                             float* __restrict buf, double* __restrict racc) {
  constexpr int Q = 4;
  const int64_t blocks = (len + 15) / 16;
  for (int64_t b0 = 0; b0 < blocks; b0 += Q) {
    const int nb = static_cast<int>(std::min<int64_t>(Q, blocks - b0));
    __m512d lo[Q], hi[Q];
    for (int v = 0; v < Q; ++v) lo[v] = hi[v] = _mm512_setzero_pd();
    const int64_t q = b0 * 16;
    int64_t b = 0;
    for (; b + 4 <= n; b += 4) {
      for (int v = 0; v < nb; ++v) {
        span_kernel<4, 1>(xt, stride, d, x + b * d, q + 16 * v, lo + v, hi + v);
      }
    }
    for (; b < n; ++b) {
      if (nb == Q) {
        span_kernel<1, Q>(xt, stride, d, x + b * d, q, lo, hi);
      } else {
        for (int v = 0; v < nb; ++v) {
          span_kernel<1, 1>(xt, stride, d, x + b * d, q + 16 * v, lo + v, hi + v);
        }
      }
    }
    for (int v = 0; v < nb; ++v) {
      const int64_t at = q + 16 * v, left = len - at;
      if (left >= 16) {
        _mm512_storeu_pd(racc + at, lo[v]);
        _mm512_storeu_pd(racc + at + 8, hi[v]);
      } else {
        const __mmask8 mlo = static_cast<__mmask8>((1u << std::min<int64_t>(left, 8)) - 1);
        const __mmask8 mhi = static_cast<__mmask8>((1u << std::max<int64_t>(left - 8, 0)) - 1);
        _mm512_mask_storeu_pd(racc + at, mlo, lo[v]);
        _mm512_mask_storeu_pd(racc + at + 8, mhi, hi[v]);
      }
    }
  }
  (void)buf;
}

// One step of span_sums_group<float>(): the group's n tokens (x, row-major) against the Q
// blocks of 16 tokens of xt from column q, four tokens at a time, each root added to the
// sums of its token's cluster (out[b]) in memory, in the tokens' order.
template <int Q>
inline void span_group_step(const float* __restrict xt, int64_t stride, int64_t d,
                            const float* __restrict x, int64_t n, double* const* out,
                            int64_t q) {
  const auto add = [](double* p, __m512 v) {
    __m512d lo = _mm512_loadu_pd(p), hi = _mm512_loadu_pd(p + 8);
    span_add(v, lo, hi);
    _mm512_storeu_pd(p, lo);
    _mm512_storeu_pd(p + 8, hi);
  };
  int64_t b = 0;
  for (; b + 4 <= n; b += 4) {
    __m512 a[4][Q];
    span_squares<4, Q>(xt, stride, d, x + b * d, q, a);
    for (int t = 0; t < 4; ++t) {
      for (int v = 0; v < Q; ++v) add(out[b + t] + q + 16 * v, a[t][v]);
    }
  }
  for (; b < n; ++b) {
    __m512 a[1][Q];
    span_squares<1, Q>(xt, stride, d, x + b * d, q, a);
    for (int v = 0; v < Q; ++v) add(out[b] + q + 16 * v, a[0][v]);
  }
}

// span_sums_group() for float32 with AVX-512: the clusters' tokens together, four at a time
// against Q = 2 blocks of xt (whichever clusters they belong to), each root added to its own
// cluster's sums in memory in the tokens' order (span_group_step()). At a flat cut's
// hand-over most clusters have 1 to 3 tokens: on their own, each pass over the column tile
// (256 tokens x 256 coordinates at d = 256, from the L2 cache) served 1 to 3 rows; grouped,
// the 32 columns of a step stay in the L1 cache for up to kGroupTokens rows. The squares
// and float64 sums are those of span_sums<float>(), in the same order.
template <>
inline void span_sums_group<float>(const float* __restrict xt, int64_t stride, int64_t d,
                                   const float* __restrict x, const int64_t* seg, int g,
                                   int64_t len, int64_t lenp, float* __restrict buf,
                                   double* __restrict racc) {
  constexpr int Q = 2;
  const int64_t n = seg[g] - seg[0];
  if (n > kGroupTokens) {  // not a group this kernel was made for
    span_sums_each<float>(xt, stride, d, x, seg, g, len, lenp, buf, racc);
    return;
  }
  double* out[kGroupTokens];  // each token's cluster's sums
  group_sums(seg, g, lenp, racc, out);
  const int64_t blocks = (len + 15) / 16;  // the last one in full: xt and racc are padded
  int64_t b0 = 0;
  for (; b0 + Q <= blocks; b0 += Q) span_group_step<Q>(xt, stride, d, x, n, out, b0 * 16);
  for (; b0 < blocks; ++b0) span_group_step<1>(xt, stride, d, x, n, out, b0 * 16);
}
#endif

#if defined(__AVX512F__)
// span_dists() for float32: four tokens of x against two blocks of 16 tokens of xt at a
// time, every sum in registers (span_squares()), the last block in full (padded).
template <int B, int Q>
inline void span_dists_step(const float* __restrict xt, int64_t stride, int64_t d,
                            const float* const* xs, int64_t q, float* __restrict out,
                            int64_t ldo) {
  __m512 a[B][Q];
  span_squares<B, Q>(xt, stride, d, xs, q, a);
  for (int b = 0; b < B; ++b) {
    for (int v = 0; v < Q; ++v) {
      _mm512_storeu_ps(out + b * ldo + q + 16 * v, _mm512_sqrt_ps(a[b][v]));
    }
  }
}

template <>
inline void span_dists<float>(const float* __restrict xt, int64_t stride, int64_t d,
                              const float* const* xs, int64_t n, int64_t len,
                              float* __restrict out, int64_t ldo) {
  const int64_t blocks = (len + 15) / 16;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
      span_dists_step<4, 2>(xt, stride, d, xs + i, b * 16, out + i * ldo, ldo);
    }
    if (b < blocks) span_dists_step<4, 1>(xt, stride, d, xs + i, b * 16, out + i * ldo, ldo);
  }
  for (; i < n; ++i) {
    int64_t b = 0;
    for (; b + 4 <= blocks; b += 4) {
      span_dists_step<1, 4>(xt, stride, d, xs + i, b * 16, out + i * ldo, ldo);
    }
    for (; b < blocks; ++b) {
      span_dists_step<1, 1>(xt, stride, d, xs + i, b * 16, out + i * ldo, ldo);
    }
  }
}
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// AVX2 versions of span_sums(), span_sums_group() and span_dists(), for float32 and float64
// (builds without AVX-512): a block of 16 tokens of xt is 16 / W vectors of W lanes (two of
// eight floats, four of four doubles). Without them each token of x read the whole column
// tile (from the L2 cache) and kept its sums in memory, coordinate after coordinate; here
// four tokens share each load of xt and every sum stays in a register, as in the AVX-512
// versions above. The arithmetic per pair is the same (the squares and sums in coordinate
// order, each its own instruction, no fused multiply-add; the root; the float64 sums over
// the tokens of x in their order), so are the bits.

// One AVX2 register of T and the operations of the kernels below, lane by lane.
template <typename T>
struct Avx2;

template <>
struct Avx2<float> {
  using V = __m256;
  static constexpr int W = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sqrt(V a) { return _mm256_sqrt_ps(a); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  // p[0 .. 7] += the lanes, widened to float64
  static void add_to(double* p, V v) {
    _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p),
                                      _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
    _mm256_storeu_pd(p + 4, _mm256_add_pd(_mm256_loadu_pd(p + 4),
                                          _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
  }
};

template <>
struct Avx2<double> {
  using V = __m256d;
  static constexpr int W = 4;
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V sqrt(V a) { return _mm256_sqrt_pd(a); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static void add_to(double* p, V v) {
    _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), v));
  }
};

// The squared distances of B tokens (rows xs[0], xs[1], ...) to V vectors of W tokens of
// xt (columns q, q + W, ...): span_squares() in AVX2 registers.
template <typename T, int B, int V>
inline void avx2_squares(const T* __restrict xt, int64_t stride, int64_t d,
                         const T* const* xs, int64_t q, typename Avx2<T>::V (&a)[B][V]) {
  using A = Avx2<T>;
  {
    typename A::V c[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) c[v] = A::load(xt + q + A::W * v);
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) {
      const typename A::V xv = A::set1(xs[b][0]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        const typename A::V t = A::sub(c[v], xv);
        a[b][v] = A::mul(t, t);
      }
    }
  }
  for (int64_t k = 1; k < d; ++k) {
    typename A::V c[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) c[v] = A::load(xt + k * stride + q + A::W * v);
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) {
      const typename A::V xv = A::set1(xs[b][k]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        const typename A::V t = A::sub(c[v], xv);
        a[b][v] = A::add(a[b][v], A::mul(t, t));
      }
    }
  }
}

// The B tokens of consecutive rows x0, x0 + d, ... against V vectors of xt from column q,
// each root added to the float64 sums out[b] + at + W v (out[b]: the sums of token b's
// cluster), in the tokens' order.
template <typename T, int B, int V>
inline void avx2_add_step(const T* __restrict xt, int64_t stride, int64_t d,
                          const T* __restrict x0, int64_t q, double* const* out, int64_t at) {
  using A = Avx2<T>;
  const T* xs[B];
  for (int b = 0; b < B; ++b) xs[b] = x0 + b * d;
  typename A::V a[B][V];
  avx2_squares<T, B, V>(xt, stride, d, xs, q, a);
  for (int b = 0; b < B; ++b) {
    for (int v = 0; v < V; ++v) A::add_to(out[b] + at + A::W * v, A::sqrt(a[b][v]));
  }
}

// span_sums(): 32 tokens of xt at a time (16 in the last block of an odd count), against
// four tokens of x (2 W columns at a time) and then the last 1 to 3 tokens of x (4 W
// columns at a time, 2 W for what is left, as span_dists()), the float64 sums on the stack,
// then stored up to len. xt's rows must be readable up to len rounded up to 16
// (finish_on_matrix() pads its tiles so); racc need not be.
template <typename T>
inline void avx2_span_sums(const T* __restrict xt, int64_t stride, int64_t d,
                           const T* __restrict x, int64_t n, int64_t len,
                           double* __restrict racc) {
  constexpr int64_t W = Avx2<T>::W;
  const int64_t blocks = (len + 15) / 16;
  alignas(32) double sums[32];
  double* out[4] = {sums, sums, sums, sums};
  for (int64_t b0 = 0; b0 < blocks; b0 += 2) {
    const int64_t cols = b0 + 2 <= blocks ? 32 : 16;
    const int64_t q = b0 * 16;
    std::fill(sums, sums + 32, 0.0);
    int64_t b = 0;
    for (; b + 4 <= n; b += 4) {
      for (int64_t o = 0; o < cols; o += 2 * W) {
        avx2_add_step<T, 4, 2>(xt, stride, d, x + b * d, q + o, out, o);
      }
    }
    for (; b < n; ++b) {
      int64_t o = 0;
      for (; o + 4 * W <= cols; o += 4 * W) {
        avx2_add_step<T, 1, 4>(xt, stride, d, x + b * d, q + o, out, o);
      }
      for (; o < cols; o += 2 * W) avx2_add_step<T, 1, 2>(xt, stride, d, x + b * d, q + o, out, o);
    }
    std::copy(sums, sums + std::min<int64_t>(32, len - q), racc + q);
  }
}

template <>
inline void span_sums<float>(const float* __restrict xt, int64_t stride, int64_t d,
                             const float* __restrict x, int64_t n, int64_t len,
                             float* __restrict buf, double* __restrict racc) {
  avx2_span_sums<float>(xt, stride, d, x, n, len, racc);
  (void)buf;
}

template <>
inline void span_sums<double>(const double* __restrict xt, int64_t stride, int64_t d,
                              const double* __restrict x, int64_t n, int64_t len,
                              double* __restrict buf, double* __restrict racc) {
  avx2_span_sums<double>(xt, stride, d, x, n, len, racc);
  (void)buf;
}

// span_sums_group(): the group's tokens four at a time against each block of 16 tokens of
// xt (whichever clusters they belong to), each root added to its own cluster's sums in
// memory in the tokens' order, as in the AVX-512 version.
template <typename T>
inline void avx2_span_sums_group(const T* __restrict xt, int64_t stride, int64_t d,
                                 const T* __restrict x, const int64_t* seg, int g,
                                 int64_t len, int64_t lenp, T* __restrict buf,
                                 double* __restrict racc) {
  constexpr int64_t W = Avx2<T>::W;
  const int64_t n = seg[g] - seg[0];
  if (n > kGroupTokens) {  // not a group this kernel was made for
    span_sums_each<T>(xt, stride, d, x, seg, g, len, lenp, buf, racc);
    return;
  }
  double* out[kGroupTokens];  // each token's cluster's sums
  group_sums(seg, g, lenp, racc, out);
  const int64_t blocks = (len + 15) / 16;  // the last one in full: xt and racc are padded
  for (int64_t q = 0; q < blocks * 16; q += 16) {
    int64_t b = 0;
    for (; b + 4 <= n; b += 4) {
      for (int64_t o = 0; o < 16; o += 2 * W) {
        avx2_add_step<T, 4, 2>(xt, stride, d, x + b * d, q + o, out + b, q + o);
      }
    }
    for (; b < n; ++b) avx2_add_step<T, 1, 16 / W>(xt, stride, d, x + b * d, q, out + b, q);
  }
}

template <>
inline void span_sums_group<float>(const float* __restrict xt, int64_t stride, int64_t d,
                                   const float* __restrict x, const int64_t* seg, int g,
                                   int64_t len, int64_t lenp, float* __restrict buf,
                                   double* __restrict racc) {
  avx2_span_sums_group<float>(xt, stride, d, x, seg, g, len, lenp, buf, racc);
}

template <>
inline void span_sums_group<double>(const double* __restrict xt, int64_t stride, int64_t d,
                                    const double* __restrict x, const int64_t* seg, int g,
                                    int64_t len, int64_t lenp, double* __restrict buf,
                                    double* __restrict racc) {
  avx2_span_sums_group<double>(xt, stride, d, x, seg, g, len, lenp, buf, racc);
}

// span_dists(): four tokens of x against 2 W tokens of xt at a time, then the last 1 to 3
// tokens against 4 W at a time (2 W for what is left), every sum in registers, the last
// block of 16 in full (padded).
template <typename T, int B, int V>
inline void avx2_dists_step(const T* __restrict xt, int64_t stride, int64_t d,
                            const T* const* xs, int64_t q, T* __restrict out, int64_t ldo) {
  using A = Avx2<T>;
  typename A::V a[B][V];
  avx2_squares<T, B, V>(xt, stride, d, xs, q, a);
  for (int b = 0; b < B; ++b) {
    for (int v = 0; v < V; ++v) A::store(out + b * ldo + q + A::W * v, A::sqrt(a[b][v]));
  }
}

template <typename T>
inline void avx2_span_dists(const T* __restrict xt, int64_t stride, int64_t d,
                            const T* const* xs, int64_t n, int64_t len, T* __restrict out,
                            int64_t ldo) {
  constexpr int64_t W = Avx2<T>::W;
  const int64_t cols = (len + 15) / 16 * 16;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int64_t c = 0; c < cols; c += 2 * W) {
      avx2_dists_step<T, 4, 2>(xt, stride, d, xs + i, c, out + i * ldo, ldo);
    }
  }
  for (; i < n; ++i) {
    int64_t c = 0;
    for (; c + 4 * W <= cols; c += 4 * W) {
      avx2_dists_step<T, 1, 4>(xt, stride, d, xs + i, c, out + i * ldo, ldo);
    }
    for (; c < cols; c += 2 * W) {
      avx2_dists_step<T, 1, 2>(xt, stride, d, xs + i, c, out + i * ldo, ldo);
    }
  }
}

template <>
inline void span_dists<float>(const float* __restrict xt, int64_t stride, int64_t d,
                              const float* const* xs, int64_t n, int64_t len,
                              float* __restrict out, int64_t ldo) {
  avx2_span_dists<float>(xt, stride, d, xs, n, len, out, ldo);
}

template <>
inline void span_dists<double>(const double* __restrict xt, int64_t stride, int64_t d,
                               const double* const* xs, int64_t n, int64_t len,
                               double* __restrict out, int64_t ldo) {
  avx2_span_dists<double>(xt, stride, d, xs, n, len, out, ldo);
}
#endif

// exact()'s float64 sum over the token pairs of two clusters from their distances
// dist(i, j), i < nx over the tokens of the outer cluster (sum_order()), j < ny: for each
// i in order, each run of 16 of the inner tokens summed from 0 and added to the total,
// then the inner tokens past the last run one at a time (block_sum(); exact_many()'s
// chains, whose inner cluster has fewer than 16 tokens, are the latter alone).
template <typename F>
inline double ordered_total(int64_t nx, int64_t ny, F&& dist) {
  const int64_t full = ny / kBlockSumLanes * kBlockSumLanes;
  double total = 0.0;
  for (int64_t i = 0; i < nx; ++i) {
    for (int64_t j0 = 0; j0 < full; j0 += kBlockSumLanes) {
      double sum = 0.0;
      for (int64_t l = 0; l < kBlockSumLanes; ++l) sum += static_cast<double>(dist(i, j0 + l));
      total += sum;
    }
    for (int64_t j = full; j < ny; ++j) total += static_cast<double>(dist(i, j));
  }
  return total;
}

// Whether the hand-over sums the rows past a column tile in groups of clusters
// (span_sums_group()); DCPE_CPU_HANDOVER_GROUPS=0 sums each cluster on its own (the same
// bits).
inline bool handover_groups() { return switched_on("DCPE_CPU_HANDOVER_GROUPS"); }

template <typename T>
class LinearEngine {
 public:
  LinearEngine(const T* x, int64_t n, int64_t d, const RunOptions& opt, int threads,
               bool closed)
      : x_(x), n_(n), d_(d), opt_(opt), threads_(threads), closed_(closed),
        tree_dims_(uses_tree(d, closed)), walk_tree_(tree_dims_) {
    mu_.resize(static_cast<std::size_t>(n) * d);
    size_.assign(n, 1);
    s2_.assign(n, 0.0);
    rad_.assign(n, 0.0);
    adj_.assign(n, -kInf);
    nn_.assign(n, -1);
    nnd_.assign(n, kInf);
    state_.assign(n, kActive);
    const bool cosine = opt.metric == Metric::Cosine;
    // Centroids of the singletons (unit rows for cosine), and the token arena.
    if (!closed_) {
      cap_ = 2 * n;
      ar_.resize(static_cast<std::size_t>(d) * cap_);
      tok_.resize(cap_);
      pos_.resize(n);
    }
    double big = 0.0;  // the largest |x| (Euclidean: slack_)
    for (int64_t i = 0; i < n; ++i) {
      double scale = 1.0;
      if (cosine) {
        double s = 0.0;
        for (int64_t k = 0; k < d; ++k) s += double(x[i * d + k]) * double(x[i * d + k]);
        DCPE_CHECK(s > 0.0, "cosine distance is undefined for the zero vector in row ", i);
        scale = 1.0 / std::sqrt(s);
      }
      for (int64_t k = 0; k < d; ++k) {
        mu_[i * d + k] = double(x[i * d + k]) * scale;
        big = std::max(big, std::abs(mu_[i * d + k]));
        if (!closed_) ar_[i * d + k] = x[i * d + k];
      }
      if (!closed_) {
        pos_[i] = i;
        tok_[i] = static_cast<int32_t>(i);
      }
    }
    used_ = n;
    // Relative margin of the bound tests: a few roundings of T per coordinate.
    margin_ = closed_ ? 1e-12
                      : 8.0 * double(d + 4) * double(std::numeric_limits<T>::epsilon());
    // ... and an absolute one (Euclidean): the bounds come from centroids in float64,
    // each coordinate off by a few roundings of the largest |x| per merge it went through
    // (at most n), so a bound may be off by sqrt(d) times that, whatever the distances.
    // Rows a few float64 roundings apart (near-duplicate float64 rows) have distances of
    // that size, and without it a search could miss its nearest neighbour.
    if (!closed_) {
      slack_ = 8.0 * std::sqrt(double(d)) * double(n) * big *
               std::numeric_limits<double>::epsilon();
    }
    cut_handover_ = env_switch("DCPE_CPU_CUT_HANDOVER");
    can_leave_tree_ = closed_ && tree_dims_ && leave_tree_enabled();
    active_.resize(n);
    std::iota(active_.begin(), active_.end(), 0);
  }

  std::vector<Merge> run() {
    std::vector<Merge> merges;
    merges.reserve(n_ > 0 ? n_ - 1 : 0);
    g_list_searches = 0;
    g_list_tried = 0;
    g_list_settled = 0;
    g_handover = 0;
    g_rounds = 0;
    g_tree_rounds = 0;
    g_refreshes = 0;
    g_copies = 0;
    g_dense = 0;
    g_unscanned = 0;
    g_blocks = 0;
    g_blocks_tested = 0;
    g_pair_rescans = 0;
    g_lists_digest = 0;
    if (n_ < 2) return merges;
    if (!closed_ && !tree_dims_ && tri(n_) * sizeof(T) <= opt_.cache_bytes) {
      finish_on_matrix(merges);  // the tokens fit already, and a kd-tree would prune little
      return merges;
    }
    std::vector<int32_t> todo(active_);
    const int k_list = lists_enabled() ? list_length(n_, d_) : 0;
    if (!closed_ && !tree_dims_ && k_list > 0 && n_ > 2 * k_list) {
      kList_ = k_list;
      const std::size_t un = static_cast<std::size_t>(n_);
      list_id_.assign(un * kList_, 0);
      list_d_.assign(un * kList_, 0.0f);
      list_r_.assign(un, 0.0);
      owner_.resize(un);
      std::iota(owner_.begin(), owner_.end(), 0);
    }
    listing_ = kList_ > 0;
    if (listing_ && scan_order_enabled()) {
      // the first search scans the tokens cell by cell, each group from its own cell
      // (scan_order.h): the same lists and neighbours, fewer exact distances
      const bool blocks = d_ <= kLowDimListMaxDim && blocks_enabled();
      ScanOrder so = scan_order(x_, n_, d_, threads_, blocks, [this] { poll(opt_); });
      tree_.build(mu_.data(), so.order, d_, walk_tree_, blocks);
      scan_rank_.resize(so.order.size());
      for (std::size_t p = 0; p < so.order.size(); ++p) {
        scan_rank_[so.order[p]] = static_cast<int32_t>(p);
      }
      todo = std::move(so.order);
      scan_start_ = std::move(so.start);
    } else {
      tree_.build(mu_.data(), active_, d_, walk_tree_);
      if (!tree_.flat()) todo = tree_.order();
    }
    if (copies_enabled()) skip_copies(todo);
    if (pairs_usable()) {
      pairs_first_search(todo);
    } else {
      search(todo);
    }
    g_blocks_tested = tree_.blocks_tested();
    g_lists_digest = lists_digest();
    g_blocks = tree_.blocks_skipped();
    leave_tree(todo.size());
    listing_ = false;
    scan_start_.clear();
    scan_start_.shrink_to_fit();
    if (copies_enabled() && merge_copies(merges)) {
      todo = searches_due();
      search_round(todo);
      leave_tree(todo.size());
    }
    while (active_.size() >= 2) {
      set_aside();
      if (active_.size() < 2) break;
      std::vector<std::pair<int32_t, int32_t>> pairs = reciprocal_pairs();
      if (pairs.empty()) {
        // A unit of rounding can break reducibility: a merged cluster nearer to some C than
        // both of its parts were, which C's kept nearest neighbour does not know (merged
        // centroids of near-duplicate rows, the closed forms). Every cluster then searches
        // again; with every nearest neighbour current, the nearest pair (ties: the smallest
        // identities) is reciprocal.
        ++g_refreshes;
        std::vector<int32_t> all(active_);
        search_round(all);
        set_aside();
        if (active_.size() < 2) break;
        pairs = reciprocal_pairs();
      }
      DCPE_CHECK(!pairs.empty(), "internal error: no reciprocal pair");
      merge_pairs(pairs, merges);
      update_cut(merges);
      report(merges.size());
      poll(opt_);
      if (active_.size() < 2) break;
      if (!closed_ && tri(static_cast<int64_t>(active_.size())) * sizeof(T) <=
                          opt_.cache_bytes &&
          handover_now(merges.size())) {
        finish_on_matrix(merges);
        break;
      }
      todo = searches_due();
      search_round(todo);
      leave_tree(todo.size());
    }
    return merges;
  }

 private:
  // Who searches again after merges: the new clusters, and the clusters whose neighbour
  // changed or left; in the first search's order where there is one (by the slot's token:
  // a group of searches and the groups after it sum the rows of nearby tokens, which the
  // caches still hold). The new clusters are active again.
  std::vector<int32_t> searches_due() {
    std::vector<int32_t> todo;
    for (const int32_t a : active_) {
      const int32_t b = nn_[a];
      if (state_[a] == kChanged || b < 0 || state_[b] != kActive) todo.push_back(a);
    }
    if (!scan_rank_.empty()) {
      std::sort(todo.begin(), todo.end(), [this](int32_t u, int32_t v) {
        return scan_rank_[u] < scan_rank_[v];
      });
    }
    for (const int32_t a : active_) {
      if (state_[a] == kChanged) state_[a] = kActive;
    }
    return todo;
  }

  // The searches of `todo` after the first round: the tree (or the scan's copy) on the
  // active centroids, the searches in its order, their work counted afresh (leave_tree()).
  void search_round(std::vector<int32_t>& todo) {
    tree_.build(mu_.data(), active_, d_, walk_tree_);
    if (!tree_.flat()) in_tree_order(todo);
    work_ = 0.0;
    visited_ = 0;
    search(todo);
  }

  // Reciprocal pairs, in slot order (slot = smallest token index of the cluster).
  std::vector<std::pair<int32_t, int32_t>> reciprocal_pairs() const {
    std::vector<std::pair<int32_t, int32_t>> pairs;
    for (const int32_t a : active_) {
      const int32_t b = nn_[a];
      if (b > a && nn_[b] == a) pairs.emplace_back(a, b);
    }
    return pairs;
  }

  // The closed forms' searches leave the kd-tree for the scan, for good, after a round on
  // the tree whose s searches computed, in all, the distances of more than
  // s m d / kLeaveTreeDiv of the m centroids (work_), of which at most one in
  // kLeaveTreeVisits lay within their radius (visited_). Early, a search enters a few
  // leaves; as the clusters grow, their centroids spread and their spreads s2 differ, the
  // radius that a candidate allows widens, and a search enters many leaves whose points
  // are nearly all beyond it. The scan (scan_group(): kGroup searches a pass, in
  // parallel) rejects such points by a float32 bound, for less than the tree spends on
  // each. On the sample codebook's generator (cosine, 2 cores of an AMD EPYC without AMX
  // tiles) the rounds' times crossed where a search computed 1.5% (d = 8), 2.3% (d = 12)
  // and 2.5 to 2.9% (d = 13 to 16) of the centroids' distances, with about 1% of those
  // within the radius; the whole tree took 0.70x to 0.99x the time of staying on the tree
  // at 65,536 to 1,048,576 tokens, d = 8 to 16 (benchmarks/README.md, "The closed forms
  // leave the kd-tree"). Points within the radius cost the scan more than the tree: among duplicate
  // rows left to the rounds (a distance of 0, one merge a round; DCPE_CPU_COPIES=0) every
  // point examined is within it, and on
  // 2,048 x 1 (two distinct rows) the scan had taken 6.1 s to the tree's 2.5 s.
  static constexpr double kLeaveTreeDiv = 512.0;
  static constexpr int64_t kLeaveTreeVisits = 8;
  void leave_tree(std::size_t searches) {
    ++g_rounds;
    if (!tree_.flat()) ++g_tree_rounds;
    if (!can_leave_tree_ || !walk_tree_ || searches == 0) return;
    const double m = static_cast<double>(active_.size());
    if (work_ * kLeaveTreeDiv > double(searches) * m * double(d_) &&
        double(visited_) * kLeaveTreeVisits < work_) {
      walk_tree_ = false;
    }
  }

  // The hand-over to the matrix of the clusters left sums all token pairs among their
  // tokens once; it is taken when that matrix fits the cache and, with the kd-tree
  // (uses_tree()), the last search summed at least this share of those pairs exactly (the
  // searches cost more as the clusters grow). Without it every search that the lists do
  // not settle costs a scan of the centroids: the matrix takes over at the start if the
  // tokens' matrix fits; later, above 16 dimensions as soon as it fits, unless a flat cut's
  // merges are known and its searches have become cheap, and from 13 to 16 once they have
  // become costly (handover_now()). On the sample codebook's
  // generator (d = 8, 2 cores, default cache) this took the whole tree of 16,384 tokens
  // from 0.53 s (hand-over as soon as the matrix fit) to 0.21 s, of 65,536 from 1.59 s to
  // 1.35 s, and a flat cut at k = N/16 of 262,144 tokens from 13.5 s to 8.0 s, the other
  // cases within noise; a share of 1/1024 gained less, 1/100 slowed the whole tree.
  static constexpr double kHandoverShare = 1.0 / 256;

  // `todo` (a subset of the tree's points) in the kd-tree's order: searches one after the
  // other then start from nearby centroids and walk much the same nodes and leaves, which
  // the caches still hold (the searches do not depend on their order). On 262,144 x 16
  // (the sample codebook's generator, a flat cut at N/2, 2 cores) the searches had been
  // bound by reading the tree's boxes and leaves from memory in the slots' order.
  void in_tree_order(std::vector<int32_t>& todo) {
    marked_.assign(static_cast<std::size_t>(n_), 0);
    for (const int32_t a : todo) marked_[a] = 1;
    todo.clear();
    for (const int32_t a : tree_.order()) {
      if (marked_[a]) todo.push_back(a);
    }
  }

  static constexpr double kHandoverCutShare = 1.0 / 64;  // handover_now()
  // searches that share a scan of the centroids without a tree (search_euclidean_group())
  static constexpr int kGroup = KdTree::kScanGroup;
  // exact sums of one cluster evaluated together (finish_euclidean()), the most token pairs
  // of a pair whose chains exact_many() runs together, and the most chains at once
  static constexpr int kSums = 8;
  static constexpr int64_t kChainPairs = 256;
  static constexpr int kChains = 256;

  // Whether the matrix of the clusters left, which fits the cache, takes over now (the
  // hand-over sums every token pair among their tokens once, live_pairs()). With the
  // kd-tree: once the last search summed at least kHandoverShare of those pairs exactly.
  // With the scan: a flat cut whose merges are all known unless the last search summed
  // less than kHandoverCutShare of them; above 16 dimensions a whole tree and a cut whose
  // merges are not known yet at once, from 13 to 16 once the last search summed
  // kHandoverListShare of them. A cut
  // whose merges are known only finishes the clusters that still have a neighbour within its bound; as they
  // are set aside, fewer pairs are left to hand over, and the searches of the rounds left
  // summed about 10 to 50 times the last one's pairs, each pair (and its share of the
  // scans) about six times the cost of a pair of the hand-over (131,072 and 65,536 x 256,
  // the sample codebook's generator, 2 cores). A flat cut at N/2 of 131,072 x 256 under the
  // default budget (a cache that fit 55,000 clusters, reached after the cut's merges were
  // known, when the last search had summed 1% of the pairs) took 94.5 s handing over as
  // soon as the clusters fit, 70.9 s with a share of 1/16 and 69.2 s with 1/64; under
  // 1 GiB, 65,536 x 256 took 20.7 s, 23.4 s and 21.2 s; under 2 GiB, 131,072 x 256 65.1 s,
  // 70.2 s and 65.0 s. A cut at N/4 of 65,536 x 256 under 2 GiB reached its merges as the
  // clusters fit, with 17% of the pairs in the last search: 132 s without the hand-over.
  // From 13 to 16 dimensions, where the short lists settle most searches, a whole tree and
  // a flat cut whose merges are not known yet hand over only once the last search summed
  // kHandoverListShare of the pairs: handing over as soon as the clusters fit summed every
  // token pair while the cut was a few rounds from its merges, and held a whole tree's
  // clusters in a matrix that the cheap rounds left would have shrunk. On the whole tree
  // (the sample codebook's generator, 2 cores, the default cache; by hand, one run each)
  // this took 16,384 x 16 from 0.60 s and 290 MiB to 0.31 s and 72 MiB, 65,536 x 16 from
  // 3.5 s and 348 MiB to 3.4 s and 144 MiB, and 262,144 x 16 from 39.3 s and 1.16 GiB to
  // 36.7 s and 453 MiB (13 dimensions: 29.9 s and 1.04 GiB to 29.7 s and 359 MiB);
  // at 262,144 x 16 a share of 1/256 handed 1.6 times the clusters over (792 MiB) in
  // 39.9 s, and 1/64 took 42.2 s. On isotropic Gaussian points and a grid (65,536 x 16),
  // whose searches are costly from the start, both rules hand over to the same clusters.
  // For flat cuts: on 262,144 x 16 (the sample codebook's generator, 2 cores, the default
  // cache of 1 GiB, which fits 23,000 clusters) a cut at
  // N/16 took 27.3 s instead of 34.9 s and 298 MiB instead of 1.16 GiB, at 13 dimensions
  // 20.0 s instead of 29.1 s (benchmarks/README.md, "Flat cuts at 13 to 16 dimensions"); by
  // hand, a cut at N/1024 took 43.8 s with a share of 1/64 and 3.8 min waiting for the
  // merges, against 37.7 s handing over at once and 37.6 s with 1/128.
  // DCPE_CPU_CUT_HANDOVER=0 never hands over once the cut's merges are known (from 13 to 16
  // dimensions: nor before), =1 at once (the same merges either way); it leaves whole trees
  // alone.
  static constexpr double kHandoverListShare = 1.0 / 128;
  bool handover_now(std::size_t merged) const {
    if (tree_dims_) return work_ >= kHandoverShare * live_pairs();
    const bool cut = opt_.max_merges > 0;
    const bool known = cut && static_cast<int64_t>(merged) >= opt_.max_merges;
    if (!known && d_ > kLowDimListMaxDim) return true;
    if (cut && cut_handover_ >= 0) return cut_handover_ == 1;
    return work_ >= (known ? kHandoverCutShare : kHandoverListShare) * live_pairs();
  }

  // Token pairs among the tokens of the active clusters (what the hand-over sums).
  double live_pairs() const {
    double t = 0.0;
    for (const int32_t a : active_) t += double(size_[a]);
    return 0.5 * t * (t - 1.0);
  }

  // kAside: set aside by a flat cut (set_aside()); it never merges again.
  enum : uint8_t { kActive = 0, kChanged = 1, kGone = 2, kFrozen = 3, kAside = 4 };

  // A flat cut (opt.max_merges = N - k > 0) needs only the first N - k merges of the greedy
  // order: their bound U (cut_bound()), widened by a few roundings of T (the hand-over
  // stores averages in T), is cut_; +inf before and for a whole tree.
  void update_cut(const std::vector<Merge>& merges) {
    cut_ = std::min(cut_, cut_bound(merges, opt_.max_merges, kCutBoundUlps,
                                    double(std::numeric_limits<T>::epsilon()), keys_));
  }

  // Every active cluster whose nearest distance exceeds U leaves for good. Average linkage
  // is reducible: each later distance of such a cluster C, to any cluster or union of
  // clusters, is at least its nearest distance (> U; up to the rounding of the float64
  // averages), so all of its later merges sort after the cut. No other cluster loses its
  // nearest neighbour: one whose nearest distance is at most U has a neighbour within U,
  // which stays. So the searches stop at U too (search_*: a cluster with a neighbour
  // within U finds it; one with none finds none or one beyond U and leaves here), and the
  // merges below U, which make the cut, are those of the full run.
  void set_aside() {
    if (!(cut_ < kInf)) return;
    std::size_t keep = 0;
    for (const int32_t a : active_) {
      if (nnd_[a] > cut_) state_[a] = kAside;
      else active_[keep++] = a;
    }
    active_.resize(keep);
  }

  void report(std::size_t done) const {
    if (opt_.progress) opt_.progress(static_cast<int64_t>(done));
  }

  const double* mu(int32_t a) const { return &mu_[static_cast<std::size_t>(a) * d_]; }
  const T* block(int32_t a) const { return &ar_[static_cast<std::size_t>(pos_[a]) * d_]; }
  // Cluster a's tokens, as indices of the input rows, in the order of its block.
  const int32_t* tokens(int32_t a) const { return &tok_[static_cast<std::size_t>(pos_[a])]; }
  const T* row(int32_t token) const { return x_ + static_cast<std::size_t>(token) * d_; }

  double centroid_dist2(int32_t a, int32_t b) const {
    const double* p = mu(a);
    const double* q = mu(b);
    double s = 0.0;
    for (int64_t k = 0; k < d_; ++k) {
      const double t = p[k] - q[k];
      s += t * t;
    }
    return s;
  }

  // Exact linkage value of clusters a != b (computed from the one of smaller identity).
  double exact(int32_t a, int32_t b) const {
    if (a > b) std::swap(a, b);
    if (closed_) {
      const double v = centroid_dist2(a, b) + s2_[a] + s2_[b];
      return opt_.metric == Metric::Cosine ? 0.5 * v : v;
    }
    const auto [x, y] = sum_order(a, b);
    const double s = block_sum<T>(block(x), size_[x], block(y), size_[y], d_);
    return s / (double(size_[x]) * double(size_[y]));
  }

  // The clusters a != b as their exact sum takes them: the smaller cluster outside (the
  // smaller identity on equal sizes), one order per pair.
  std::pair<int32_t, int32_t> sum_order(int32_t a, int32_t b) const {
    if (a > b) std::swap(a, b);
    if (size_[b] < size_[a]) std::swap(a, b);
    return {a, b};
  }

  // out[t] = exact(as[t], bs[t]) for t < m (Euclidean), the same numbers. A pair of at
  // most kChainPairs token pairs whose inner cluster has fewer than block_sum()'s 16
  // tokens is that function's scalar path alone: one chain of d dependent additions per
  // token pair. The chains of all such pairs, kChains at a time, run together
  // (chain_sums()), and each pair's total is then summed as block_sum() sums it.
  void exact_many(const int32_t* as, const int32_t* bs, int m, double* out) const {
    Chain<T> chains[kChains];
    T sq[kChains];
    int first[kChains + 1];  // a pair's first chain; as many as the next one's: exact()
    for (int t0 = 0; t0 < m;) {
      int n = 0, t = t0;
      for (; t < m && t - t0 < kChains; ++t) {
        first[t - t0] = n;
        const auto [x, y] = sum_order(as[t], bs[t]);
        const int64_t nx = size_[x], ny = size_[y];
        if (ny >= kBlockSumLanes || nx * ny > kChainPairs) continue;
        if (n + nx * ny > kChains) break;
        const int32_t* tx = tokens(x);
        const int32_t* ty = tokens(y);
        for (int64_t i = 0; i < nx; ++i) {
          for (int64_t j = 0; j < ny; ++j) chains[n++] = {row(tx[i]), row(ty[j])};
        }
      }
      first[t - t0] = n;
      chain_sums(chains, n, d_, sq);
      for (int u = t0; u < t; ++u) {
        const int c0 = first[u - t0], c1 = first[u - t0 + 1];
        if (c0 == c1) {
          out[u] = exact(as[u], bs[u]);
          continue;
        }
        double total = 0.0;
        for (int c = c0; c < c1; ++c) total += static_cast<double>(std::sqrt(sq[c]));
        out[u] = total / (double(size_[as[u]]) * double(size_[bs[u]]));
      }
      t0 = t;
    }
  }

  // Nearest neighbour of every cluster in `todo` (exact, ties to the smaller identity).
  //
  // After the first round (above 16 dimensions, with the neighbour lists) a batch's
  // searches first try the lists (settle_from_lists()), and those they do not settle scan
  // the centroids in groups of their own, in todo's order, once at least 2 kGroup a thread
  // have gathered (and at the end): a scan reads every centroid once for up to kGroup searches,
  // and the few that each group of todo leaves (3% of them at 262,144 x 256) had each
  // scanned all centroids for a group of one to a few searches.
  void search(const std::vector<int32_t>& todo) {
    const int64_t m = static_cast<int64_t>(todo.size());
    dense_on_ = !closed_ && tree_.flat() && !listing_ && dense_enabled();
    dense_skip_ = dense_on_ && dense_skip_enabled();
    if (dense_skip_ && dense_skips_.empty()) dense_skips_.assign(static_cast<std::size_t>(n_), 0);
    live_tokens_ = 0;
    for (const int32_t a : active_) live_tokens_ += size_[a];
    constexpr int64_t kBatch = 2048;
    const bool grouped = tree_.flat();
    const int64_t step = grouped ? kGroup : 1;
    const bool lists = !closed_ && grouped && kList_ > 0 && !listing_;
    const std::size_t open_scans = static_cast<std::size_t>(2 * kGroup * threads_);
    std::vector<int32_t> open;  // searches that the lists left, to scan
    std::vector<uint8_t> left;
    for (int64_t lo = 0; lo < m; lo += kBatch) {
      const int64_t hi = std::min(m, lo + kBatch);
      const int32_t* batch = &todo[lo];
      // small batches (closed forms with a tree, late rounds) run on this thread: a
      // parallel region costs more than they do, and far more when the cores are busy with
      // other work; without a tree (many dimensions) a task is a group of kGroup searches,
      // which share one scan of the centroids (search_*_group())
      const bool parallel = closed_ && !grouped ? hi - lo >= 1024 : hi - lo >= 16;
      if (lists) {
        left.assign(static_cast<std::size_t>(hi - lo), 0);
        for_groups(batch, hi - lo, step, parallel, [&](const int32_t* as, int g, Cands* cand,
                                                       double& pairs) {
          settle_from_lists(as, g, cand, pairs, &left[as - batch]);
        });
        for (int64_t t = lo; t < hi; ++t) {
          if (left[t - lo]) open.push_back(todo[t]);
        }
        if (hi == m || open.size() >= open_scans) {
          const int64_t o = static_cast<int64_t>(open.size());
          for_groups(open.data(), o, step, o >= 16, [&](const int32_t* as, int g,
                                                        Cands* cand, double& pairs) {
            search_euclidean_group(as, g, cand, pairs);
          });
          open.clear();
        }
      } else {
        for_groups(batch, hi - lo, step, parallel, [&](const int32_t* as, int g, Cands* cand,
                                                       double& pairs) {
          if (closed_ && grouped) search_closed_group(as, g);
          else if (closed_) search_closed(as[0], pairs);
          else if (grouped) search_euclidean_group(as, g, cand, pairs);
          else search_euclidean(as[0], cand[0], pairs);
        });
      }
      poll(opt_);
    }
    dense_ = DenseLayout();  // (its memory is free before the merges)
  }

  // body(ids + t, g, cand, pairs) for t = 0, step, 2 step, ... < m, g = min(step, m - t),
  // on the threads if `parallel`; cand: kGroup candidate lists of the thread, pairs its
  // count of the token pairs summed exactly, added to work_ at the end.
  using Cands = std::vector<std::pair<double, int32_t>>;
  template <typename F>
  void for_groups(const int32_t* ids, int64_t m, int64_t step, bool parallel, F&& body) {
#pragma omp parallel num_threads(threads_) if (parallel)
    {
      Cands cand[kGroup];
      double pairs = 0.0;
#pragma omp for schedule(dynamic, step > 1 ? 1 : 4)
      for (int64_t t = 0; t < m; t += step) {
        body(ids + t, static_cast<int>(std::min(step, m - t)), cand, pairs);
      }
#pragma omp atomic
      work_ += pairs;
    }
  }

  // value(b) = scale * (||mu_a - mu_b||^2 + s_a + s_b) >= scale * (||.||^2 + s_a): the
  // squared centroid radius around mu_a within which a value of at most v can lie
  double closed_radius2(int32_t a, double v) const {
    const double scale = opt_.metric == Metric::Cosine ? 0.5 : 1.0;
    return std::max(0.0, v / scale - s2_[a]) * (1.0 + margin_) + 1e-300;
  }

  // b, visited by a's search: the best value (ties to the smaller identity) and the
  // search radius that follows it.
  void consider_closed(int32_t a, int32_t b, double& best, int32_t& bi,
                       double& radius2) const {
    if (b == a) return;
    const double v = exact(a, b);
    if (v < best || (v == best && b < bi)) {
      best = v;
      bi = b;
      radius2 = closed_radius2(a, v);
    }
  }

  // The search radius follows the best value found so far, within a flat cut's bound U
  // (set_aside()) from the start.
  // `examined` counts the centroids whose distance the search computed, visited_ those
  // within its radius (leave_tree()).
  void search_closed(int32_t a, double& examined) {
    double best = kInf;
    int32_t bi = -1;
    double r2 = cut_ < kInf ? closed_radius2(a, cut_) : kInf;
    int64_t visits = 0;
    examined += double(tree_.search(mu(a), r2, [&](int32_t b, double, double& radius2) {
      ++visits;
      consider_closed(a, b, best, bi, radius2);
    }));
#pragma omp atomic
    visited_ += visits;
    nn_[a] = bi;
    nnd_[a] = best;
  }

  // search_closed() for the clusters as[0 .. g-1] at once, without a tree: one scan of the
  // centroids for the group (KdTree::scan_group()), in the order search() visits them.
  void search_closed_group(const int32_t* as, int g) {
    double best[kGroup], r2[kGroup];
    int32_t bi[kGroup];
    const double* qs[kGroup];
    for (int j = 0; j < g; ++j) {
      best[j] = kInf;
      bi[j] = -1;
      r2[j] = cut_ < kInf ? closed_radius2(as[j], cut_) : kInf;
      qs[j] = mu(as[j]);
    }
    tree_.scan_group(qs, g, r2, [&](int j, int32_t b, double, double& radius2) {
      consider_closed(as[j], b, best[j], bi[j], radius2);
    });
    for (int j = 0; j < g; ++j) {
      nn_[as[j]] = bi[j];
      nnd_[as[j]] = best[j];
    }
  }

  // An upper bound r of an average, widened by the margins (relative and absolute), and a
  // lower bound b narrowed by them; and the squared search radius around a centroid for r.
  double widen(double r) const { return r * (1.0 + margin_) + slack_; }
  double narrow(double b) const { return b * (1.0 - margin_) - slack_; }
  double radius2_of(double r) const {
    const double t = widen(r);
    return t * t;
  }

  // Bounds of avg(a, b) from the squared centroid distance dm2 (the header's).
  double upper_bound(int32_t a, int32_t b, double dm2) const {
    return std::sqrt(dm2 + s2_[a] + s2_[b]);
  }
  double lower_bound(int32_t a, int32_t b, double dm2) const {
    const double dm = std::sqrt(dm2);
    const double den = dm + rad_[a] + rad_[b];
    const double l2 = den > 0.0 ? (dm2 + s2_[a] + s2_[b]) / den : 0.0;
    return std::max(dm, l2);
  }

  void search_euclidean(int32_t a, std::vector<std::pair<double, int32_t>>& cand,
                        double& pairs) {
    // Candidates: every centroid within the smallest upper bound seen so far (the radius
    // shrinks during the search), and within a flat cut's bound U (set_aside()); each with
    // its lower bound.
    double r = cut_, r2 = cut_ < kInf ? radius2_of(r) : kInf;
    cand.clear();
    tree_.search(mu(a), r2, [&](int32_t b, double dm2, double& radius2) {
      if (b == a) return;
      const double ub = upper_bound(a, b, dm2);
      if (ub < r) {
        r = ub;
        radius2 = radius2_of(r);
      }
      cand.emplace_back(lower_bound(a, b, dm2), b);
    });
    finish_euclidean(&a, 1, &cand, &r, pairs);
  }

  // search_euclidean() for the clusters as[0 .. g-1] at once, without a tree: one scan of
  // the centroids for the group (KdTree::scan_group()), the same candidates for each.
  // After the first round the neighbour lists settle most searches without a scan, and
  // only the others come here (search()); the first round's scan fills them (listing_).
  // A search whose candidates hold many tokens sums densely (dense_search()); so do,
  // without the scan, a cluster's next kDenseSkips searches after one that did (a
  // cluster's searches that scan and sum densely are followed by a search that scans and
  // sums one by one in 4 of 43,266 cases, Gaussian 16,384 x 64 under a cache of 4 MB; the
  // dense sums give the same numbers either way, so this choice is one of time only).
  void search_euclidean_group(const int32_t* as, int g,
                              std::vector<std::pair<double, int32_t>>* cands, double& pairs) {
    int32_t dense[kGroup], scanned[kGroup];
    int nd = 0;
    if (dense_skip_) {
      int ns = 0;
      for (int j = 0; j < g; ++j) {
        const int32_t a = as[j];
        if (dense_skips_[a] > 0 && size_[a] <= kDenseMaxTokens) {
          --dense_skips_[a];
          dense[nd++] = a;
        } else {
          scanned[ns++] = a;
        }
      }
      if (nd > 0) {
        g_unscanned += nd;
        as = scanned;
        g = ns;
      }
    }
    double r[kGroup], r2[kGroup];
    const double* qs[kGroup];
    for (int j = 0; j < g; ++j) {
      r[j] = cut_;
      r2[j] = cut_ < kInf ? radius2_of(r[j]) : kInf;
      qs[j] = mu(as[j]);
      cands[j].clear();
    }
    if (listing_) {
      list_first_search(as, g, qs, cands, r, r2, pairs);
      return;
    }
    if (g > 0) {
      tree_.scan_group(qs, g, r2, [&](int j, int32_t b, double dm2, double& radius2) {
        const int32_t a = as[j];
        if (b == a) return;
        const double ub = upper_bound(a, b, dm2);
        if (ub < r[j]) {
          r[j] = ub;
          radius2 = radius2_of(r[j]);
        }
        cands[j].emplace_back(lower_bound(a, b, dm2), b);
      });
    }
    if (!dense_on_) {
      finish_euclidean(as, g, cands, r, pairs);
      return;
    }
    // the searches whose candidates hold at least 1 / kDenseDiv of the tokens sum densely
    int32_t sparse[kGroup];
    double rs[kGroup];
    int ns = 0;
    for (int j = 0; j < g; ++j) {
      const double cut = widen(r[j]);
      double toks = 0.0;
      for (const auto& c : cands[j]) {
        if (narrow(c.first) <= cut) toks += double(size_[c.second]);
      }
      if (size_[as[j]] <= kDenseMaxTokens && toks * kDenseDiv >= double(live_tokens_)) {
        if (dense_skip_) dense_skips_[as[j]] = kDenseSkips;
        dense[nd++] = as[j];
      } else {
        if (ns != j) std::swap(cands[ns], cands[j]);
        rs[ns] = r[j];
        sparse[ns++] = as[j];
      }
    }
    if (nd > 0) {
      g_dense += nd;
      dense_search(dense, nd, pairs);
    }
    finish_euclidean(sparse, ns, cands, rs, pairs);
  }

  // Runs of whole clusters (slot[i], whose tokens are seg[i] .. seg[i + 1] of the runs'
  // order) of at most column_tile(d) tokens each (a larger cluster alone), each stored
  // transposed in a block of its own: d rows of `stride` entries (the run's tokens, padded
  // with zeros to a multiple of 16 and by 16 more, so that the rows fall in different
  // cache sets), which stays in a core's cache while many tokens meet it
  // (finish_on_matrix(), dense_search()). xr, if not null, receives the tokens row-major.
  struct ColumnTiles {
    std::vector<int64_t> first{0};  // tile t: clusters first[t] .. first[t + 1] - 1
    std::vector<int64_t> stride, offset{0};
    std::vector<T> xt;
    std::size_t count() const { return first.size() - 1; }
  };

  // Dense searches. In data without clusters (isotropic Gaussian points at d = 64, say,
  // where every token is nearly as far from all others) the bounds of a cluster pair
  // prune little once the clusters have a few tokens each, and a search that the lists
  // do not settle had summed, one candidate at a time in the order of its bounds, a
  // quarter of all the token pairs it has, reading rows from all over memory (32,768 x 64:
  // 98% of its candidates, 4,700 on average, for 5,000 such searches a round). A search
  // whose candidates hold at least 1 / kDenseDiv of the live tokens instead sums all of
  // them: its tokens against every active cluster's, stored in column tiles
  // (column_tiles(), built once a round when first needed), their distances computed
  // sixteen columns at a time (span_dists()) and each cluster's total summed from them in
  // exact()'s order (ordered_total()), so each average is the number exact() gives and
  // the merges do not depend on which searches sum densely (DCPE_CPU_DENSE=0: none do).
  // Clusters of more than column_tile(d) tokens are left out of the tiles and summed by
  // exact(); a searching cluster of more than kDenseMaxTokens tokens sums one by one.
  struct DenseLayout {
    bool built = false;
    std::vector<int32_t> slot;  // the tiles' clusters
    std::vector<int64_t> seg;   // their tokens in the tiles' order
    ColumnTiles tiles;
    std::vector<int32_t> big;   // the larger clusters
  };

  void build_dense() {
    DenseLayout& L = dense_;
    const int64_t tile = column_tile(d_);
    L.slot.clear();
    L.big.clear();
    L.seg.assign(1, 0);
    for (const int32_t a : active_) {
      if (size_[a] > tile) {
        L.big.push_back(a);
      } else {
        L.slot.push_back(a);
        L.seg.push_back(L.seg.back() + size_[a]);
      }
    }
    L.tiles = column_tiles(L.slot, L.seg, nullptr, false);
    L.built = true;
  }

  void dense_search(const int32_t* as, int g, double& pairs) {
#pragma omp critical(dcpe_dense_layout)
    {
      if (!dense_.built) build_dense();
    }
    const DenseLayout& L = dense_;
    double best[kGroup];
    int32_t bi[kGroup];
    int64_t r0[kGroup + 1];  // search j's rows of the slab: r0[j] .. r0[j + 1] - 1
    std::vector<const T*> rows;
    r0[0] = 0;
    for (int j = 0; j < g; ++j) {
      best[j] = kInf;
      bi[j] = -1;
      const int32_t* tk = tokens(as[j]);
      for (int64_t i = 0; i < size_[as[j]]; ++i) rows.push_back(row(tk[i]));
      r0[j + 1] = static_cast<int64_t>(rows.size());
    }
    std::vector<T> slab;
    for (std::size_t t = 0; t < L.tiles.count(); ++t) {
      const int64_t c0 = L.tiles.first[t], c1 = L.tiles.first[t + 1];
      const int64_t p0 = L.seg[c0], len = L.seg[c1] - p0, lenp = (len + 15) / 16 * 16;
      const T* xt = L.tiles.xt.data() + L.tiles.offset[t];
      // the tokens of consecutive searches together, about kDenseRows at a time (a
      // search's tokens in one slab), kernel rows across the searches
      for (int j0 = 0; j0 < g;) {
        int j1 = j0 + 1;
        while (j1 < g && r0[j1 + 1] - r0[j0] <= kDenseRows) ++j1;
        const int64_t nr = r0[j1] - r0[j0];
        slab.resize(static_cast<std::size_t>(nr * lenp));
        span_dists<T>(xt, L.tiles.stride[t], d_, rows.data() + r0[j0], nr, len, slab.data(),
                      lenp);
        for (int j = j0; j < j1; ++j) {
          const int32_t a = as[j];
          const int64_t na = size_[a];
          const T* sl = slab.data() + (r0[j] - r0[j0]) * lenp;
          for (int64_t c = c0; c < c1; ++c) {
            const int32_t b = L.slot[c];
            if (b == a) continue;
            const int64_t nb = size_[b];
            const T* col = sl + (L.seg[c] - p0);
            const auto [x, y] = sum_order(a, b);
            const double total =
                x == a
                    ? ordered_total(na, nb, [&](int64_t i, int64_t k) { return col[i * lenp + k]; })
                    : ordered_total(nb, na, [&](int64_t i, int64_t k) { return col[k * lenp + i]; });
            const double v = total / (double(size_[x]) * double(size_[y]));
            if (v < best[j] || (v == best[j] && b < bi[j])) {
              best[j] = v;
              bi[j] = b;
            }
          }
        }
        j0 = j1;
      }
    }
    for (const int32_t b : L.big) {
      for (int j = 0; j < g; ++j) {
        if (b == as[j]) continue;
        const double v = exact(as[j], b);
        if (v < best[j] || (v == best[j] && b < bi[j])) {
          best[j] = v;
          bi[j] = b;
        }
      }
    }
    for (int j = 0; j < g; ++j) {
      nn_[as[j]] = bi[j];
      nnd_[as[j]] = best[j];
      pairs += double(size_[as[j]]) * double(live_tokens_);
    }
  }

  // The first search (every cluster one token, every token searching but the copies that
  // skip_copies() settles), which also fills the neighbour lists: the scan's radius of
  // token a is kept at least at the squared distance of the kList_-th nearest token
  // visited (+inf until kList_ are), so every token it does not visit is farther than
  // that; a's list is its kList_ nearest visited tokens (max-heap on (squared distance,
  // index)) and r(a) the largest of their distances. The visits are a superset of the
  // plain search's (its radius, the smallest upper bound within the margin, is never above
  // this one), so are its candidates within that radius, and finish_euclidean() gives the
  // same nearest neighbours.
  void list_first_search(const int32_t* as, int g, const double* const* qs,
                         std::vector<std::pair<double, int32_t>>* cands, double* r,
                         double* r2, double& pairs) {
    const std::size_t k_list = static_cast<std::size_t>(kList_);
    std::vector<std::pair<double, int32_t>> heap[kGroup];
    for (int j = 0; j < g; ++j) heap[j].reserve(k_list);
    const std::size_t start = scan_start_.empty() ? 0 : std::size_t(scan_start_[as[0]]);
    tree_.scan_group(qs, g, r2, [&](int j, int32_t b, double dm2, double& radius2) {
      const int32_t a = as[j];
      if (b == a) return;
      const double ub = upper_bound(a, b, dm2);
      if (ub < r[j]) r[j] = ub;
      cands[j].emplace_back(lower_bound(a, b, dm2), b);
      auto& h = heap[j];
      const std::pair<double, int32_t> e{dm2, b};
      if (h.size() < k_list) {
        h.push_back(e);
        std::push_heap(h.begin(), h.end());
      } else if (e < h.front()) {
        replace_top(h, e);
      }
      radius2 = h.size() < k_list ? kInf
                                  : std::max(radius2_of(r[j]), h.front().first);
    }, start);
    finish_euclidean(as, g, cands, r, pairs);
    for (int j = 0; j < g; ++j) {
      const int32_t t = as[j];  // a cluster of one token: its slot is the token's index
      auto& h = heap[j];
      std::sort_heap(h.begin(), h.end());
      write_list(t, h);
    }
  }

  // Token t's list from its nearest tokens h (squared distance, index), in increasing
  // order: their indices, lower bounds of their distances in float32, and r(t).
  void write_list(int32_t t, const std::vector<std::pair<double, int32_t>>& h) {
    const std::size_t k_list = static_cast<std::size_t>(kList_);
    const std::size_t o = static_cast<std::size_t>(t) * k_list;
    for (std::size_t k = 0; k < k_list; ++k) {
      if (k >= h.size()) {  // (not reached: every token visits kList_ others or more)
        list_id_[o + k] = t;
        list_d_[o + k] = 0.0f;
        continue;
      }
      const double dist = std::sqrt(h[k].first);
      float lo = static_cast<float>(dist);  // rounded down: a lower bound of dist
      if (double(lo) > dist) lo = std::nextafter(lo, 0.0f);
      list_id_[o + k] = h[k].second;
      list_d_[o + k] = lo;
    }
    // r(t) = 0, a bound of nothing, for a list that is short
    list_r_[t] = h.size() == k_list ? std::sqrt(h.back().first) : 0.0;
  }

  // Whether the first search tests each pair of tokens once (pairs_first_search()): on the
  // scan's float32 products (not the AMX tiles, nor the blocks up to 16 dimensions), in
  // the first search's order.
  bool pairs_usable() const {
    return listing_ && tree_.flat() && !tree_.amx() && d_ > kLowDimListMaxDim &&
           !scan_rank_.empty() && pairs_enabled();
  }

  // The first search of `todo` (in the first search's order) with each pair of tokens
  // tested once for both (KdTree::scan_pairs()), where the scan runs on float32 products
  // above 16 dimensions (pairs_usable()); the lists and nearest neighbours of
  // list_first_search(), the same numbers. A token's state while it lasts: the heap of its
  // kList_ nearest visited tokens by (squared distance, index), at its list's place
  // (list_id_, and list_d_ the squared distance rounded to float32: rounding to nearest is
  // monotone, so two keys that differ order their distances, and equal ones are ordered by
  // the distances computed again), its nearest distance so far (upper_bound()) and its
  // radius, which stays at least at the heap's largest distance (bounded by the float32
  // above its key) once the heap is full. At the end the heap is the kList_ nearest
  // tokens, which the list and r(t) come from as list_first_search()'s do; they are also
  // the search's candidates, unless a token off the list could pass finish_euclidean()'s
  // filter (its bound narrowed no more than the nearest widened: the K-th nearest within
  // the margins of the nearest), and then that token searches again as before. Otherwise
  // the candidates that pass the filter are those of list_first_search() (every token it
  // visits within the filter is on the list, and every token on the list is within its
  // final radius), so are the nearest neighbours and the pairs summed.
  void pairs_first_search(const std::vector<int32_t>& todo) {
    const std::size_t k_list = static_cast<std::size_t>(kList_);
    const std::vector<int32_t>& order = tree_.order();
    std::vector<double> r2(order.size(), -1.0);  // by position (-1: does not search)
    for (const int32_t a : todo) r2[static_cast<std::size_t>(scan_rank_[a])] = kInf;
    std::vector<double> near(static_cast<std::size_t>(n_), kInf);
    std::vector<int32_t> fill(static_cast<std::size_t>(n_), 0);
    std::vector<int32_t> start(order.size());
    for (std::size_t p = 0; p < order.size(); ++p) start[p] = scan_start_[order[p]];
    auto visit = [&](std::size_t q, std::size_t p, double v, double& radius2) {
      const int32_t a = order[q], b = order[p];
      const double ub = upper_bound(a, b, v);
      if (ub < near[a]) near[a] = ub;
      if (!heap_offer(a, b, v, fill[a])) return;
      if (fill[a] < kList_) return;  // (+inf until the heap is full)
      const float top = list_d_[static_cast<std::size_t>(a) * k_list];
      radius2 = std::max(radius2_of(near[a]),
                         double(std::nextafter(top, std::numeric_limits<float>::infinity())));
    };
    tree_.scan_pairs(r2, start, threads_, visit, [this] { poll(opt_); });
    std::vector<int32_t> again;  // the searches that run as list_first_search()
    for_groups(todo.data(), static_cast<int64_t>(todo.size()), kGroup, todo.size() >= 16,
               [&](const int32_t* as, int g, Cands* cands, double& pairs) {
      int32_t bs[kGroup];
      double r[kGroup];
      int gb = 0;
      std::vector<std::pair<double, int32_t>> e(k_list);
      for (int j = 0; j < g; ++j) {
        const int32_t a = as[j];
        const std::size_t o = static_cast<std::size_t>(a) * k_list;
        for (std::size_t k = 0; k < k_list; ++k) {
          e[k] = {tree_.distance2(mu(a), mu(list_id_[o + k])), list_id_[o + k]};
        }
        std::sort(e.begin(), e.end());
        write_list(a, e);
        if (narrow(std::sqrt(e.back().first)) <= widen(near[a])) {
#pragma omp critical(dcpe_pairs_again)
          again.push_back(a);
          continue;
        }
        auto& cand = cands[gb];
        cand.clear();
        for (const auto& [dm2, b] : e) cand.emplace_back(lower_bound(a, b, dm2), b);
        bs[gb] = a;
        r[gb++] = near[a];
      }
      finish_euclidean(bs, gb, cands, r, pairs);
    });
    g_pair_rescans = static_cast<int64_t>(again.size());
    if (!again.empty()) {
      std::sort(again.begin(), again.end(),
                [this](int32_t x, int32_t y) { return scan_rank_[x] < scan_rank_[y]; });
      search(again);
    }
  }

  // A digest of the lists (each entry's token and the bits of its bound, then the bits of
  // every r(t)), 64 bits at a time: 0 without lists.
  int64_t lists_digest() const {
    if (kList_ == 0) return 0;
    uint64_t h = 0xcbf29ce484222325ULL;
    auto eat = [&h](uint64_t w) {
      h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
      h ^= h >> 29;
    };
    for (std::size_t i = 0; i < list_id_.size(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &list_d_[i], sizeof bits);
      eat(uint64_t(uint32_t(list_id_[i])) << 32 | bits);
    }
    for (const double r : list_r_) {
      uint64_t bits;
      std::memcpy(&bits, &r, sizeof bits);
      eat(bits);
    }
    return static_cast<int64_t>(h >> 1) | 1;
  }

  // Offers token b at squared distance v to the heap of token a (pairs_first_search(); a
  // max-heap of `fill` entries, at most kList_): whether it took it.
  bool heap_offer(int32_t a, int32_t b, double v, int32_t& fill) {
    const std::size_t o = static_cast<std::size_t>(a) * static_cast<std::size_t>(kList_);
    int32_t* id = &list_id_[o];
    float* key = &list_d_[o];
    const float kb = static_cast<float>(v);
    // (b, v) before entry i in (squared distance, index)
    auto before = [&](std::size_t i) {
      if (kb != key[i]) return kb < key[i];
      const double w = tree_.distance2(mu(a), mu(id[i]));
      return v < w || (v == w && b < id[i]);
    };
    // entry i before entry i2
    auto ahead = [&](std::size_t i, std::size_t i2) {
      if (key[i] != key[i2]) return key[i] < key[i2];
      const double w = tree_.distance2(mu(a), mu(id[i]));
      const double w2 = tree_.distance2(mu(a), mu(id[i2]));
      return w < w2 || (w == w2 && id[i] < id[i2]);
    };
    std::size_t i;
    if (fill < kList_) {  // up from the end
      i = static_cast<std::size_t>(fill++);
      while (i > 0) {
        const std::size_t up = (i - 1) / 2;
        if (before(up)) break;
        id[i] = id[up];
        key[i] = key[up];
        i = up;
      }
    } else {  // in place of the largest, down
      if (!before(0)) return false;
      const std::size_t n = static_cast<std::size_t>(kList_);
      i = 0;
      for (;;) {
        std::size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && ahead(c, c + 1)) ++c;
        if (!before(c)) break;
        id[i] = id[c];
        key[i] = key[c];
        i = c;
      }
    }
    id[i] = b;
    key[i] = kb;
    return true;
  }

  // h[0] (the largest of the max-heap h) replaced by e, and sifted down: the heap of
  // std::pop_heap() then std::push_heap() with e, in one pass down instead of two.
  static void replace_top(std::vector<std::pair<double, int32_t>>& h,
                          const std::pair<double, int32_t>& e) {
    const std::size_t n = h.size();
    std::size_t i = 0;
    for (;;) {
      std::size_t c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && h[c] < h[c + 1]) ++c;
      if (!(e < h[c])) break;
      h[i] = h[c];
      i = c;
    }
    h[i] = e;
  }

  // Settle the searches of as[0 .. g-1] from the neighbour lists where they can; left[j]
  // = 1 for each other one (left[j] is not written for a settled one).
  //
  // Every token t has a list of kList_ tokens and r(t), a lower bound of its distance to
  // every token off the list (list_first_search()). So for clusters A != B,
  //   avg(A, B) >= P(A, B) = (sum over t in A of [(|B| - c_t) r(t) + sum of the listed
  //                          distances of t to B's tokens]) / (|A| |B|),
  // c_t the number of B's tokens on t's list, and for every B that has none of the tokens
  // on the lists of A's tokens, P(A, B) = L(A) = mean of r(t) over A. The clusters that do
  // (at most |A| kList_ of them) are A's candidates, with P as their lower bound, and
  // finish_euclidean() finds the nearest of them (exact sums, in increasing order of P,
  // until P passes the best). If that best, or a flat cut's bound U if smaller, is below
  // L(A) (less the margin and the rounding of the sums of L and P), no other cluster is
  // as near: the nearest neighbour is found, ties included (the others are strictly
  // farther), with the scan's result. Otherwise A scans as before. A cluster whose old
  // nearest distance (a lower bound of its new one: reducibility; for a merged cluster,
  // the height of its merge) is already at least L(A) cannot be settled and does not try.
  //
  // Clusters of more than kListMaxSize tokens scan without trying. On the sample
  // codebook's generator (d = 256, a flat cut at N/2) the scans that remain are those of
  // clusters in the dense regions, whose tokens' r(t) are small.
  void settle_from_lists(const int32_t* as, int g,
                         std::vector<std::pair<double, int32_t>>* cands, double& pairs,
                         uint8_t* left) {
    const double down = 1.0 - margin_;
    const std::size_t k_list = static_cast<std::size_t>(kList_);
    int32_t tried[kGroup], at[kGroup];  // the clusters that try, and their places in as
    double thr[kGroup], settle[kGroup];
    int nt = 0;
    std::vector<std::pair<int32_t, std::pair<double, double>>> hits;
    for (int j = 0; j < g; ++j) {
      const int32_t a = as[j];
      const int64_t na = size_[a];
      if (na > kListMaxSize) {
        left[j] = 1;
        continue;
      }
      const int32_t* tk = tokens(a);
      double sr = 0.0;
      for (int64_t i = 0; i < na; ++i) sr += list_r_[tk[i]];
      const double la = sr / double(na);
      // the rounding of these float64 sums (of |A| + kList_ terms), far inside the margin
      const double slack = double(na + kList_ + d_ + 16) * 0x1p-50;
      const double lim = la * down * (1.0 - slack);
      if (!(lim > nnd_[a])) {
        left[j] = 1;
        continue;
      }
      // A's candidates: the clusters of the tokens on its tokens' lists, with the sums of
      // r(t) and of the listed distances over their listed tokens
      hits.clear();
      for (int64_t i = 0; i < na; ++i) {
        const int32_t t = tk[i];
        const std::size_t o = static_cast<std::size_t>(t) * k_list;
        const double rt = list_r_[t];
        for (std::size_t k = 0; k < k_list; ++k) {
          const int32_t b = owner_[list_id_[o + k]];
          if (b == a || (state_[b] != kActive && state_[b] != kChanged)) continue;
          hits.push_back({b, {rt, double(list_d_[o + k])}});
        }
      }
      std::sort(hits.begin(), hits.end(),
                [](const auto& u, const auto& v) { return u.first < v.first; });
      auto& cand = cands[nt];
      cand.clear();
      for (std::size_t u = 0; u < hits.size();) {
        const int32_t b = hits[u].first;
        double off = 0.0, on = 0.0;
        for (; u < hits.size() && hits[u].first == b; ++u) {
          off += hits[u].second.first;
          on += hits[u].second.second;
        }
        const double nb = double(size_[b]);
        // (|B| sum r(t) - sum of r(t) over the listed + their distances) / (|A| |B|),
        // less the absolute rounding of that difference
        const double p = ((nb * sr - off) + on) / (double(na) * nb) - la * slack;
        cand.emplace_back(std::max(0.0, p), b);
      }
      tried[nt] = a;
      at[nt] = j;
      thr[nt] = la;
      settle[nt++] = lim;
    }
    g_list_searches += g;
    g_list_tried += nt;
    if (nt == 0) return;
    finish_euclidean(tried, nt, cands, thr, pairs);
    int settled = 0;
    for (int t = 0; t < nt; ++t) {
      const int32_t a = tried[t];
      if (std::min(nnd_[a], cut_) < settle[t]) {
        ++settled;
      } else {
        left[at[t]] = 1;
      }
    }
    g_list_settled += settled;
  }

  // For each j < g: the candidates of as[j] within its final radius r[j], in increasing
  // order of their lower bound, summed exactly until the bound passes the best average:
  // as[j]'s nearest neighbour. The exact sums of the g clusters are computed together, a
  // round at a time (exact_many()): each cluster's first candidate alone, then its next
  // candidates within its best so far, up to kSums. A sum past a cluster's stop is
  // computed and unused, so each result is the one-at-a-time loop's.
  void finish_euclidean(const int32_t* as, int g, std::vector<std::pair<double, int32_t>>* cands,
                        const double* r, double& pairs) {
    double best[kGroup];
    int32_t bi[kGroup];
    std::size_t next[kGroup];
    for (int j = 0; j < g; ++j) {
      auto& cand = cands[j];
      const double cut = widen(r[j]);
      std::size_t keep = 0;
      for (const auto& c : cand) {
        if (narrow(c.first) <= cut) cand[keep++] = c;
      }
      cand.resize(keep);
      std::sort(cand.begin(), cand.end());
      best[j] = kInf;
      bi[j] = -1;
      next[j] = 0;
    }
    int32_t pa[kGroup * kSums], pb[kGroup * kSums];
    double v[kGroup * kSums];
    int start[kGroup + 1];
    for (;;) {
      int m = 0;
      for (int j = 0; j < g; ++j) {
        start[j] = m;
        const auto& cand = cands[j];
        const int most = next[j] == 0 ? 1 : kSums;
        for (std::size_t t = next[j]; t < cand.size() && m - start[j] < most; ++t) {
          if (narrow(cand[t].first) > best[j]) break;
          pa[m] = as[j];
          pb[m++] = cand[t].second;
        }
      }
      start[g] = m;
      if (m == 0) break;
      exact_many(pa, pb, m, v);
      for (int j = 0; j < g; ++j) {
        const auto& cand = cands[j];
        for (int u = start[j]; u < start[j + 1]; ++u) {
          if (narrow(cand[next[j]].first) > best[j]) {
            next[j] = cand.size();  // stop: the later bounds are larger still
            break;
          }
          ++next[j];
          pairs += double(size_[as[j]]) * double(size_[pb[u]]);
          if (v[u] < best[j] || (v[u] == best[j] && pb[u] < bi[j])) {
            best[j] = v[u];
            bi[j] = pb[u];
          }
        }
      }
    }
    for (int j = 0; j < g; ++j) {
      nn_[as[j]] = bi[j];
      nnd_[as[j]] = best[j];
    }
  }

  // body(copies) for each set of at least two equal rows among the singletons `keys`
  // holds (their indices; emptied): `copies` in increasing order. The rows are found by
  // sorting their hashes, each with its row's index in the low bits (8 bytes a row,
  // counted by linear_workspace_bytes()), and split by comparing the rows of one hash.
  template <typename F>
  void for_copies(std::vector<uint64_t>& keys, F&& body) {
    const uint64_t row_bits = (uint64_t(1) << 31) - 1;  // n < 2^31
    const int64_t nz = static_cast<int64_t>(keys.size());
    if (nz < 2) return;
#pragma omp parallel for num_threads(threads_) schedule(static) if (nz >= 4096)
    for (int64_t t = 0; t < nz; ++t) {
      const uint64_t i = keys[t];
      const double* p = mu(static_cast<int32_t>(i));
      uint64_t h = 0x9e3779b97f4a7c15ULL;
      for (int64_t k = 0; k < d_; ++k) {
        uint64_t u;
        const double v = p[k] + 0.0;  // -0.0 and 0.0: the same coordinate
        std::memcpy(&u, &v, sizeof(u));
        h = (h ^ u) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
      }
      keys[t] = (h & ~row_bits) | i;  // equal hashes: by row
    }
    std::sort(keys.begin(), keys.end());
    std::vector<int32_t> run, copies;
    for (std::size_t s = 0; s < keys.size();) {
      std::size_t e = s + 1;
      while (e < keys.size() && (keys[e] & ~row_bits) == (keys[s] & ~row_bits)) ++e;
      // rows of one hash, in increasing order, split into rows equal to each other
      run.clear();
      if (e - s >= 2) {
        for (std::size_t t = s; t < e; ++t) {
          run.push_back(static_cast<int32_t>(keys[t] & row_bits));
        }
      }
      while (run.size() >= 2) {
        const int32_t c1 = run.front();
        std::size_t keep = 0;
        copies.clear();
        for (const int32_t c : run) {
          if (c == c1 || std::equal(mu(c), mu(c) + d_, mu(c1))) copies.push_back(c);
          else run[keep++] = c;
        }
        run.resize(keep);
        if (copies.size() >= 2) body(copies);
      }
      s = e;
    }
    std::vector<uint64_t>().swap(keys);
  }

  // Before the first search: each row that has a copy takes the first other copy as its
  // nearest neighbour, at distance 0, and does not search; with the neighbour lists, each
  // row with at least kList_ copies besides itself, whose list is then the first kList_
  // of them, at distance 0, and r(t) = 0 (the list and bound its search would have given),
  // and the rows with fewer copies search. Searching, each of c copies of a row had found the
  // other c - 1 within its radius, all with bounds of 0, and sorted and summed them: c^2
  // pairs, 4 x 10^8 for 20,000 copies of a row in 65,536 x 8, which took the whole tree
  // from 1.1 s to 10.7 s (2 cores of an AMD EPYC). Its nearest neighbour would have been
  // at distance 0 too (a copy; ties to the smallest identity, unless a distinct row is
  // at a computed distance of 0), and merge_copies() merges every such row's copies right
  // after the first search, whose clusters then search: the merges are the same.
  // DCPE_CPU_COPIES=0 (the copies left to the rounds) searches every row.
  // (Before the first search every nearest distance is +inf: the rows it settles are
  // those at 0.)
  void skip_copies(std::vector<int32_t>& todo) {
    std::vector<uint64_t> keys(static_cast<std::size_t>(n_));
    std::iota(keys.begin(), keys.end(), uint64_t(0));
    bool any = false;
    const std::size_t k_list = static_cast<std::size_t>(kList_);
    for_copies(keys, [&](const std::vector<int32_t>& copies) {
      if (k_list > 0 && copies.size() <= k_list) return;
      for (const int32_t c : copies) {
        nn_[c] = c == copies[0] ? copies[1] : copies[0];
        nnd_[c] = 0.0;
        if (k_list == 0) continue;
        const std::size_t o = static_cast<std::size_t>(c) * k_list;
        std::size_t k = 0;
        for (std::size_t i = 0; k < k_list; ++i) {
          if (copies[i] == c) continue;
          list_id_[o + k] = copies[i];
          list_d_[o + k] = 0.0f;
          ++k;
        }
        list_r_[c] = 0.0;
      }
      any = true;
    });
    if (!any) return;
    std::size_t keep = 0;
    for (const int32_t a : todo) {
      if (nnd_[a] != 0.0) todo[keep++] = a;
    }
    todo.resize(keep);
  }

  // Copies of a row merged at once, after the first search, as the rounds would merge
  // them. Copies (rows equal coordinate by coordinate; unit rows for cosine) are at
  // distance exactly 0, and a cluster of copies keeps the row as its centroid, a spread
  // and radius of 0 (merge_pairs()) and, with Euclidean distance, the row's distances to
  // every token, so each copy has a copy as its nearest neighbour while one is left. Ties
  // go to the smallest identity, so the rounds merge one pair of a row's copies
  // c_1 < c_2 < ... a round: c_1 takes c_2, then c_3, ..., at height 0, and a cluster over
  // the size cap leaves, after which the next two copies start the next one. That was
  // n - 1 rounds for n copies: with 2,048 copies of a row in the sample codebook (16,384 x
  // 8) the whole tree took 18 s with metric "cosine", 0.09 s now, and with 5,243 in its
  // generator's 262,144 x 8, 5.8 min, 3.1 s now; a flat cut at N/2 with Euclidean distance
  // 16.3 s, 3.8 s now (2 cores of an AMD EPYC; benchmarks/README.md, "Copies of a row merge
  // at once").
  // Here the i-th merge of each row's copies is recorded as the i-th round's, the merges
  // of a round in slot order, as run() records them. All other merges are above 0, so
  // the merges sorted by height come in the rounds' order unless a pair of distinct rows
  // is at a computed distance of 0 (differences that underflow when squared), or merges
  // above 0 tie, which the rounds order by the round that found them (either way each
  // merge is one at the smallest distance). A merged cluster's tokens are its copies in
  // increasing order, as merge_pairs() would leave them. Only a row whose first search
  // found a neighbour at distance 0 can have a copy (the first search is every token's,
  // with no bound; or skip_copies() gave it a copy at 0); the copies among those are
  // found by for_copies(), freed before the searches, so an input without such rows
  // costs one pass over nnd_. Returns whether any were merged; their clusters then search.
  // DCPE_CPU_COPIES=0 leaves them to the rounds.
  bool merge_copies(std::vector<Merge>& merges) {
    const int64_t cap = opt_.max_cluster_size;
    std::vector<uint64_t> keys;
    for (int64_t i = 0; i < n_; ++i) {
      if (nnd_[i] == 0.0) keys.push_back(static_cast<uint64_t>(i));
    }
    if (keys.size() < 2) return false;
    const std::size_t first = merges.size();
    std::vector<int32_t> chunk;
    // the tokens of a cluster of copies that stays (not over the cap): its arena block
    // (Euclidean), after the singletons' (these blocks hold at most n tokens in all, and
    // the arena 2 n)
    auto place = [&](const std::vector<int32_t>& toks) {
      if (closed_) return;
      const int32_t a = toks.front();
      const int64_t nc = static_cast<int64_t>(toks.size());
      T* out = &ar_[static_cast<std::size_t>(used_) * d_];
      for (int64_t k = 0; k < d_; ++k) {
        for (int64_t i = 0; i < nc; ++i) out[k * nc + i] = row(toks[i])[k];
      }
      std::memcpy(&tok_[static_cast<std::size_t>(used_)], toks.data(), nc * sizeof(int32_t));
      if (kList_ > 0) {
        for (const int32_t t : toks) owner_[t] = a;
      }
      pos_[a] = used_;
      used_ += nc;
    };
    for_copies(keys, [&](const std::vector<int32_t>& copies) {
      // the i-th merge of these copies in round i (its height holds the round until the
      // merges are in the rounds' order)
      double round = 0.0;
      chunk.clear();
      for (const int32_t c : copies) {
        if (chunk.empty()) {
          chunk.push_back(c);
          continue;
        }
        const int32_t a = chunk.front();
        round += 1.0;
        size_[a] += 1;
        merges.push_back({a, c, round, 0.0, size_[a]});
        chunk.push_back(c);
        state_[c] = kGone;
        state_[a] = kChanged;
        adj_[a] = 0.0;
        if (cap > 0 && size_[a] > cap) {
          state_[a] = kFrozen;
          chunk.clear();
        }
      }
      if (chunk.size() >= 2) place(chunk);
    });
    const std::size_t copied = merges.size() - first;
    g_copies = static_cast<int64_t>(copied);
    if (copied == 0) return false;
    std::sort(merges.begin() + first, merges.end(), [](const Merge& u, const Merge& v) {
      return u.height < v.height || (u.height == v.height && u.a < v.a);
    });
    for (std::size_t t = first; t < merges.size(); ++t) merges[t].height = 0.0;
    std::size_t keep = 0;
    for (const int32_t a : active_) {
      if (state_[a] == kActive || state_[a] == kChanged) active_[keep++] = a;
    }
    active_.resize(keep);
    update_cut(merges);
    report(merges.size());
    return true;
  }

  // Merge the reciprocal pairs (a < b): a keeps the slot; merged clusters over the cap leave.
  void merge_pairs(const std::vector<std::pair<int32_t, int32_t>>& pairs,
                   std::vector<Merge>& merges) {
    const int64_t cap = opt_.max_cluster_size;
    const int64_t np = static_cast<int64_t>(pairs.size());
    for (const auto& [a, b] : pairs) {
      const double h = nnd_[a];
      const int64_t sz = size_[a] + size_[b];
      const double key = std::max({h, adj_[a], adj_[b]});
      merges.push_back({a, b, h, key, sz});
      adj_[a] = key;
    }
    if (!closed_) {
      // Arena space for the merged groups (a's tokens, then b's); compact when full.
      int64_t need = 0;
      for (const auto& [a, b] : pairs) {
        const int64_t sz = size_[a] + size_[b];
        if (!(cap > 0 && sz > cap)) need += sz;
      }
      if (used_ + need > cap_) compact_arena();
      std::vector<int64_t> dest(np, -1);
      for (int64_t t = 0; t < np; ++t) {
        const auto [a, b] = pairs[t];
        const int64_t sz = size_[a] + size_[b];
        if (cap > 0 && sz > cap) continue;
        dest[t] = used_;
        used_ += sz;
      }
#pragma omp parallel for num_threads(threads_) schedule(dynamic, 16) if (np >= 256)
      for (int64_t t = 0; t < np; ++t) {
        if (dest[t] < 0) continue;
        const auto [a, b] = pairs[t];
        const int64_t na = size_[a], nb = size_[b], nc = na + nb;
        T* out = &ar_[static_cast<std::size_t>(dest[t]) * d_];
        const T* pa = block(a);
        const T* pb = block(b);
        for (int64_t k = 0; k < d_; ++k) {
          std::memcpy(out + k * nc, pa + k * na, na * sizeof(T));
          std::memcpy(out + k * nc + na, pb + k * nb, nb * sizeof(T));
        }
        int32_t* ids = &tok_[static_cast<std::size_t>(dest[t])];
        std::memcpy(ids, tokens(a), na * sizeof(int32_t));
        std::memcpy(ids + na, tokens(b), nb * sizeof(int32_t));
        if (kList_ > 0) {
          for (int64_t i = 0; i < nb; ++i) owner_[ids[na + i]] = a;
        }
      }
      for (int64_t t = 0; t < np; ++t) {
        if (dest[t] >= 0) pos_[pairs[t].first] = dest[t];
      }
    }
    // Moments of the merged clusters, and the radius (largest distance to the centroid).
#pragma omp parallel for num_threads(threads_) schedule(dynamic, 16) if (np >= 256)
    for (int64_t t = 0; t < np; ++t) {
      const auto [a, b] = pairs[t];
      const double na = double(size_[a]), nb = double(size_[b]), nc = na + nb;
      const double dm2 = centroid_dist2(a, b);
      double* ma = &mu_[static_cast<std::size_t>(a) * d_];
      const double* mb = mu(b);
      // as a step from mu_a towards mu_b: copies of a row (mu_b = mu_a) keep their centroid
      // exactly, and with it a spread of 0 and a distance of exactly 0 between them (the
      // matrix engine's; the weighted mean had drifted by units of rounding, heights of
      // 1e-32 in place of 0)
      const double w = nb / nc;
      for (int64_t k = 0; k < d_; ++k) ma[k] += (mb[k] - ma[k]) * w;
      s2_[a] = (na * s2_[a] + nb * s2_[b]) / nc + na * nb / (nc * nc) * dm2;
      if (!closed_ && !(cap > 0 && size_[a] + size_[b] > cap)) {
        double r2 = 0.0;
        const int64_t cnt = size_[a] + size_[b];
        const T* blk = &ar_[static_cast<std::size_t>(pos_[a]) * d_];
        for (int64_t p = 0; p < cnt; ++p) {
          double s = 0.0;
          for (int64_t k = 0; k < d_; ++k) {
            const double t2 = double(blk[k * cnt + p]) - ma[k];
            s += t2 * t2;
          }
          r2 = std::max(r2, s);
        }
        rad_[a] = std::sqrt(r2);
      }
    }
    for (const auto& [a, b] : pairs) {
      size_[a] += size_[b];
      state_[b] = kGone;
      state_[a] = (cap > 0 && size_[a] > cap) ? kFrozen : kChanged;
    }
    std::size_t keep = 0;
    for (const int32_t a : active_) {
      if (state_[a] == kActive || state_[a] == kChanged) active_[keep++] = a;
    }
    active_.resize(keep);
  }

  // Move the live groups to the front of the arena (slot order), keeping positions valid.
  void compact_arena() {
    std::vector<int32_t> live(active_);  // the pairs' members are still in active_
    std::sort(live.begin(), live.end(),
              [this](int32_t u, int32_t v) { return pos_[u] < pos_[v]; });
    std::vector<int64_t> dest(live.size());
    int64_t o = 0;
    for (std::size_t i = 0; i < live.size(); ++i) {
      dest[i] = o;
      o += size_[live[i]];
    }
    // in arena order, blocks only move towards the front: copy in place
    for (std::size_t i = 0; i < live.size(); ++i) {
      const std::size_t from = static_cast<std::size_t>(pos_[live[i]]) * d_;
      const std::size_t to = static_cast<std::size_t>(dest[i]) * d_;
      if (from != to) {
        std::memmove(&ar_[to], &ar_[from], size_[live[i]] * d_ * sizeof(T));
        std::memmove(&tok_[dest[i]], &tok_[pos_[live[i]]], size_[live[i]] * sizeof(int32_t));
      }
    }
    for (std::size_t i = 0; i < live.size(); ++i) pos_[live[i]] = dest[i];
    used_ = o;
  }

  ColumnTiles column_tiles(const std::vector<int32_t>& slot, const std::vector<int64_t>& seg,
                           T* xr, bool parallel) const {
    ColumnTiles ct;
    const int64_t m = static_cast<int64_t>(slot.size()), tile = column_tile(d_);
    while (ct.first.back() < m) {
      int64_t c = ct.first.back() + 1;
      while (c < m && seg[c + 1] - seg[ct.first.back()] <= tile) ++c;
      const int64_t len = seg[c] - seg[ct.first.back()];
      ct.stride.push_back((len + 15) / 16 * 16 + 16);
      ct.offset.push_back(ct.offset.back() + ct.stride.back() * d_);
      ct.first.push_back(c);
    }
    ct.xt.assign(static_cast<std::size_t>(ct.offset.back()), T(0));
    std::vector<int64_t> tile_of(m);
    for (std::size_t t = 0; t < ct.count(); ++t) {
      for (int64_t i = ct.first[t]; i < ct.first[t + 1]; ++i) tile_of[i] = int64_t(t);
    }
#pragma omp parallel for num_threads(threads_) schedule(dynamic, 64) if (parallel)
    for (int64_t i = 0; i < m; ++i) {
      const T* blk = block(slot[i]);
      const int64_t nc = size_[slot[i]], t = tile_of[i];
      const int64_t at = seg[i] - seg[ct.first[t]];
      for (int64_t k = 0; k < d_; ++k) {
        std::memcpy(&ct.xt[ct.offset[t] + k * ct.stride[t] + at], blk + k * nc, nc * sizeof(T));
        if (xr) {
          for (int64_t b = 0; b < nc; ++b) xr[(seg[i] + b) * d_ + k] = blk[k * nc + b];
        }
      }
    }
    return ct;
  }

  // The clusters left fit the cache: their exact average distances in a condensed matrix
  // (one pass over all token pairs), then the matrix engine's rounds and chain on it.
  void finish_on_matrix(std::vector<Merge>& merges) {
    const int64_t m = static_cast<int64_t>(active_.size());
    g_handover = m;
    const std::vector<int32_t> slot(active_);
    // Cluster i's tokens are tokens seg[i] .. seg[i + 1] of the clusters left, in slot order.
    std::vector<int64_t> seg(m + 1, 0);
    for (int64_t i = 0; i < m; ++i) seg[i + 1] = seg[i] + size_[slot[i]];
    const int64_t total = seg[m];
    // Column tiles (column_tiles()), each of which stays in the core's cache while every
    // later cluster's tokens meet it, and a row-major copy of the tokens.
    const int64_t tile = column_tile(d_);
    std::vector<T> xr(static_cast<std::size_t>(d_) * total);
    ColumnTiles ct = column_tiles(slot, seg, xr.data(), true);
    const std::vector<int64_t>& tiles = ct.first;
    const std::vector<int64_t>& stride = ct.stride;
    const std::vector<int64_t>& offset = ct.offset;
    std::vector<T>& xt = ct.xt;
    const std::size_t n_tiles = ct.count();
    { std::vector<T>().swap(ar_); }  // the arena is not needed any more
    { std::vector<int32_t>().swap(tok_); }
    std::vector<T> D(tri(m) + 1);
    int64_t longest = 1;
    for (std::size_t t = 0; t < n_tiles; ++t) {
      longest = std::max(longest, seg[tiles[t + 1]] - seg[tiles[t]]);
    }
    // The rows of a tile's clusters against the tile's earlier ones one at a time, and the
    // rows past it (all against the whole tile) in groups of consecutive clusters of at most
    // kGroupTokens tokens (a cluster with more alone): rows [work[w], work[w + 1]). Only a
    // tile of at most `tile` tokens (not one larger cluster alone) is summed in groups, so
    // that their sums take at most kGroupTokens * `tile` float64 a thread.
    const bool groups = handover_groups();
    const int64_t lenp = (std::min(longest, tile) + 15) / 16 * 16;
    std::vector<std::vector<double>> accs(threads_, std::vector<double>(longest));
    std::vector<std::vector<double>> gaccs(threads_,
                                           std::vector<double>(groups ? kGroupTokens * lenp : 0));
    std::vector<std::vector<T>> bufs(threads_, std::vector<T>(longest));
    std::vector<int64_t> work;
    for (std::size_t t = 0; t < n_tiles; ++t) {
      const int64_t c0 = tiles[t], c1 = tiles[t + 1], p0 = seg[c0];
      work.clear();
      for (int64_t i = c0 + 1; i < m;) {
        work.push_back(i);
        int64_t e = i + 1;
        if (groups && i >= c1 && seg[c1] - p0 <= lenp) {
          while (e < m && seg[e + 1] - seg[i] <= kGroupTokens) ++e;
        }
        i = e;
      }
      work.push_back(m);
      const int64_t n_work = static_cast<int64_t>(work.size()) - 1;
#pragma omp parallel for num_threads(threads_) schedule(dynamic, 1)
      for (int64_t w = 0; w < n_work; ++w) {
        const int tid = omp_get_thread_num();
        const int64_t i0 = work[w], i1 = work[w + 1];
        double* racc = (i1 - i0 == 1 ? accs : gaccs)[tid].data();
        const int64_t jend = std::min(i0, c1);
        const int64_t len = seg[jend] - p0;
        if (i1 - i0 == 1) {
          span_sums<T>(xt.data() + offset[t], stride[t], d_, xr.data() + seg[i0] * d_,
                       seg[i0 + 1] - seg[i0], len, bufs[tid].data(), racc);
        } else {
          span_sums_group<T>(xt.data() + offset[t], stride[t], d_, xr.data() + seg[i0] * d_,
                             seg.data() + i0, static_cast<int>(i1 - i0), len, lenp,
                             bufs[tid].data(), racc);
        }
        for (int64_t i = i0; i < i1; ++i) {
          const double* ri = racc + (i - i0) * lenp;
          const int64_t ni = seg[i + 1] - seg[i];
          T* row = D.data() + tri(i);
          for (int64_t j = c0; j < jend; ++j) {
            double sum = 0.0;
            for (int64_t q = seg[j] - p0; q < seg[j + 1] - p0; ++q) sum += ri[q];
            row[j] = static_cast<T>(sum / (double(ni) * double(seg[j + 1] - seg[j])));
          }
        }
      }
      poll(opt_);
    }
    { std::vector<T>().swap(xr); }
    // The matrix engine's rounds and chain finish on D.
    std::vector<int64_t> sz(m), rep(m);
    std::vector<double> adj(m);
    for (int64_t i = 0; i < m; ++i) {
      sz[i] = size_[slot[i]];
      rep[i] = slot[i];
      adj[i] = adj_[slot[i]];
    }
    { std::vector<T>().swap(xt); }
    matrix_linkage_on<T>(D.data(), m, sz, rep, adj, opt_, merges);
    report(merges.size());
  }

  const T* x_;  // the input rows (n x d, row-major), whose values the arena holds
  int64_t n_, d_;
  const RunOptions& opt_;
  int threads_;
  bool closed_;
  double margin_ = 0.0;
  double slack_ = 0.0;  // the absolute margin (Euclidean)
  int cut_handover_ = -1;  // DCPE_CPU_CUT_HANDOVER: 0 or 1; -1 unset (handover_now())
  double cut_ = kInf;         // a flat cut's bound U (update_cut()), +inf until known
  // the last search's work: token pairs summed exactly (Euclidean), centroids whose
  // distance it computed on the tree (closed forms, leave_tree()); and those of them
  // within its radius
  double work_ = 0.0;
  int64_t visited_ = 0;
  std::vector<double> keys_;  // scratch of update_cut()
  // token arena of cap_ tokens: cluster a's tokens from token offset pos_[a], a block
  // [d][size_[a]] (coordinate k of its token i at pos_[a] * d + k * size_[a] + i)
  std::vector<T> ar_;
  std::vector<int32_t> tok_;  // the input row of each token of the arena
  int64_t cap_ = 0, used_ = 0;
  std::vector<int64_t> pos_;
  // per slot (slot = smallest token index of the cluster)
  std::vector<double> mu_, s2_, rad_, adj_, nnd_;
  std::vector<int64_t> size_;
  std::vector<int32_t> nn_;
  std::vector<uint8_t> state_;
  std::vector<int32_t> active_;
  KdTree tree_;
  const bool tree_dims_;  // uses_tree(d, closed): the searches start on tree_, else scan
  bool walk_tree_;        // this round's searches walk tree_ (leave_tree()), else scan
  bool can_leave_tree_ = false;  // closed forms on the tree, DCPE_CPU_LEAVE_TREE not 0
  // Neighbour lists (settle_from_lists()): kList_ entries a token (0: none), the lists'
  // token indices and lower bounds of their distances, each token's bound r(t) of the
  // tokens off its list, and the slot of each token's cluster; listing_ while the first
  // search fills them
  int kList_ = 0;
  bool listing_ = false;
  // while the first search runs: where each token's group starts its scan (scan_order.h)
  std::vector<int32_t> scan_start_;
  // each token's position in the first search's order (empty without it): the order of
  // the later searches
  std::vector<int32_t> scan_rank_;
  std::vector<uint8_t> marked_;  // in_tree_order()
  std::vector<int32_t> list_id_;
  std::vector<float> list_d_;
  std::vector<double> list_r_;
  std::vector<int32_t> owner_;
  // this round's dense searches (dense_search()): whether they may run, the tokens of the
  // active clusters, and their tiles
  bool dense_on_ = false;
  int64_t live_tokens_ = 0;
  DenseLayout dense_;
  // whether this round's searches may sum densely without a scan, and per slot how many
  // more of its searches do (search_euclidean_group())
  bool dense_skip_ = false;
  std::vector<uint8_t> dense_skips_;
};

}  // namespace

bool has_closed_form(Method method, Metric metric) {
  return method == Method::Average && (metric == Metric::SqEuclidean || metric == Metric::Cosine);
}

template <typename T>
std::vector<Merge> linear_linkage(const T* x, int64_t n, int64_t d, const RunOptions& opt) {
  DCPE_CHECK_ARG(n >= 1, "n", n, "need at least one row");
  DCPE_CHECK_ARG(n < (int64_t(1) << 31), "n", n, "at most 2^31 - 1 rows");
  DCPE_CHECK_ARG(d >= 1, "d", d, "need at least one column");
  DCPE_CHECK(opt.method == Method::Average,
             "the linear-memory engine computes average linkage only");
  const bool closed = has_closed_form(opt.method, opt.metric);
  DCPE_CHECK(closed || opt.metric == Metric::Euclidean,
             "the linear-memory engine needs metric 'euclidean', 'sqeuclidean' or 'cosine'");
  LinearEngine<T> engine(x, n, d, opt, resolve_threads(opt.num_threads), closed);
  return engine.run();
}

int linear_scan_group() { return KdTree::kScanGroup; }

std::array<int64_t, 14> linear_list_stats() {
  return {g_list_searches.load(), g_list_tried.load(), g_list_settled.load(),
          g_handover.load(),      g_rounds.load(),     g_tree_rounds.load(),
          g_refreshes.load(),     g_copies.load(),     g_dense.load(),
          g_unscanned.load(),     g_blocks_tested.load(), g_blocks.load(),
          g_pair_rescans.load(), g_lists_digest.load()};
}

template std::vector<Merge> linear_linkage<float>(const float*, int64_t, int64_t,
                                                  const RunOptions&);
template std::vector<Merge> linear_linkage<double>(const double*, int64_t, int64_t,
                                                   const RunOptions&);

std::size_t linear_workspace_bytes(int64_t n, int64_t d, std::size_t elem_size,
                                   bool closed, std::size_t cache_bytes, int num_threads) {
  const std::size_t un = static_cast<std::size_t>(std::max<int64_t>(n, 1));
  const std::size_t ud = static_cast<std::size_t>(d);
  // per slot: moments, sizes, neighbours, state; kd-tree copy of the centroids and boxes
  // (without the tree, uses_tree(), there are no boxes; their bytes cover the scan's
  // float32 copy of the centroids and its test's shares, 4 d + 4 bytes a slot)
  std::size_t bytes = un * (ud * 8 + 80) + un * (ud * 8 + 4) + un / 2 * (2 * ud * 8 + 16);
  bytes += un * 8;  // the rows' hashes that find copies of a row (for_copies())
  // with a tree: its leaves' blocks hold at most 24 / 17 times the points
  // (build_leaf_blocks()), and the searches' order marks the slots (in_tree_order())
  const bool tree = uses_tree(d, closed);
  if (tree) bytes += un * ud * 8 * 7 / 17 + un;
  // without it, the scan's bfloat16 copy where it runs on AMX tiles (counted wherever it
  // does not, so that the count does not depend on the CPU)
  if (!tree) bytes += (un + 15) / 16 * 16 * amx::padded(ud) * sizeof(uint16_t);
  // and (Euclidean) the neighbour lists: per token list_length(n, d)
  // indices and float bounds, r(t) and its cluster's slot (counted with them off too)
  // and the first search's order of the tokens: the order, each token's start and rank,
  // and what scan_order() holds while it computes them
  if (!closed && !tree) {
    bytes += un * (std::size_t(list_length(n, d)) * 8 + 12);
    bytes += un * 12 + scan_order_bytes(n, d);
    // above 16 dimensions the first search by pairs (pairs_first_search(), counted at any
    // d): each token's radius, nearest distance, heap size and start, and its copy's norms
    // and threshold (KdTree::scan_pairs())
    bytes += un * 48;
    // from 13 to 16 dimensions the first search's blocks: a box of float64 each
    // (KdTree::build_blocks(); counted with them off too)
    if (d <= kLowDimListMaxDim) bytes += (un + kOrderBlock - 1) / kOrderBlock * 2 * ud * 8;
    // a round's dense searches (LinearEngine::dense_search()): the tiles of the clusters
    // (the tokens, their tiles' padding of at most 32 tokens, at most 2 n / tile + 1
    // tiles) and their slots, and per thread a slab of distances (at most kDenseMaxTokens
    // rows of a tile) and the rows of a group of searches (64 of kDenseMaxTokens at most);
    // and per slot the count of its searches that skip the scan
    const std::size_t tile = static_cast<std::size_t>(column_tile(d));
    const std::size_t threads = static_cast<std::size_t>(resolve_threads(num_threads));
    bytes += (un + 32 * (2 * un / tile + 1)) * ud * elem_size + un * 8 * 3 + un;
    bytes += threads * std::size_t(kDenseMaxTokens) *
             ((tile + 15) / 16 * 16 * elem_size + 64 * sizeof(void*));
  }
  if (!closed) {
    bytes += 2 * un * ud * elem_size + un * ud * elem_size + un * 8;  // arena + compaction
    bytes += 2 * un * sizeof(int32_t);  // the arena's token indices (tok_)
    bytes += cache_bytes;
  }
  return bytes;
}

}  // namespace dcpe
