// Exact agglomerative clustering for reducible linkages (average = DCPE, single, complete,
// weighted), with an optional cluster-size cap.
//
// Algorithm: reciprocal-nearest-neighbour (RNN) rounds [Murtagh 1983; Müllner 2011,
// arXiv:1109.2378] on a condensed lower-triangular distance matrix.
//
// A linkage is reducible when d(A ∪ B, C) >= min(d(A, C), d(B, C)). Then a pair of active
// clusters that are each other's nearest neighbour is merged by the greedy algorithm too,
// whatever else is merged first: no later cluster comes closer to either of them. So every
// RNN pair of a round can be merged at once, and sorting all merges by height gives the
// greedy order. The size cap keeps this true: a frozen cluster only leaves the matrix,
// which never brings two clusters closer.
//
// One round is one streaming pass over the matrix: the merged distances (Lance–Williams,
// with up to two merged clusters on each side, e.g. for average linkage
//   d(A1 ∪ A2, C1 ∪ C2) = Σ_ij |Ai||Cj| d(Ai, Cj) / (|A||C|)),
// the compaction of the matrix in place (a merged cluster keeps the smaller slot, so slot
// order stays the order of the clusters' smallest token index), and the nearest neighbour
// of every cluster for the next round. Rows are processed in blocks: a block's new rows are
// written to a small buffer and copied into place after the block, so the threads never
// overwrite a row another thread still reads. When a round merges fewer than 1/64 of the
// clusters (kChainBelow), and fewer than 3/2 as many pairs as the round before, the
// remaining clusters are finished by the nearest-neighbour chain algorithm [Murtagh 1983;
// Müllner 2011, Sect. 3.2] on the same matrix.
//
// The token matrix itself is not stored: a first pass finds every token's nearest
// neighbour from distance rows computed on the fly, and the first round writes the matrix
// it leaves (merged pairs combined, removed tokens left out) from distance rows computed
// again, with the same expressions as a pass over a stored matrix. This trades a second
// O(N^2 d) computation of distances for the write and read of the N(N-1)/2 matrix, and
// the memory holds only the clusters left after the first round (on codebooks about 3/4
// of the tokens, so about 0.6 of the token matrix). At high dimension (d >= 128) the trade
// goes the other way: there the first pass keeps the token matrix and the first round is
// an ordinary pass over it. Distances come from the register-tiled kernel of
// distance_tiles.h, a tile of consecutive rows at a time against panels of columns, for
// the lower triangle only (in the second computation, of the kept tokens copied in slot
// order).
//
// Flat cut (RunOptions::max_merges = N - k > 0): only the first N - k merges of the greedy
// order are needed. Once that many are recorded, the (N - k)-th smallest of their heights,
// U, bounds the cut's height (merges still to come only add heights; one found later at a
// height of at least U sorts after them). A cluster whose nearest distance exceeds U then
// leaves the matrix for good (set aside): by reducibility every later distance of it is at
// least that nearest distance, so all of its merges sort after the cut; no other cluster
// loses its nearest neighbour (one within U has a neighbour within U, which stays). The
// rounds and the chain stop when every cluster left is set aside. The comparison allows
// for the rounding of the Lance–Williams updates in the compute type (kCutBoundUlps).
//
// Ties: nearest neighbours are chosen by (distance, slot) lexicographically, a strict total
// order on pairs, so at least one RNN pair exists in every round and the result does not
// depend on the number of threads.

#include <omp.h>
#include <sys/mman.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>

#include "cpu/distance_tiles.h"
#include "cpu/linkage_cpu.h"
#include "macros.h"

namespace dcpe {
namespace {

constexpr std::size_t kBlockElems = std::size_t(1) << 20;  // elements per block buffer
constexpr std::size_t kDirectElems = std::size_t(1) << 23;  // elements per in-place block
// From this dimension on, the first pass keeps the token matrix (then the first round is
// an ordinary pass over it) instead of computing the distances a second time: there the
// second O(N^2 d) computation costs more than writing and reading the N(N-1)/2 matrix
// (about 20% of the run at d = 256, for 1/3 more memory than the matrix of the first
// round's clusters; the memory estimate always counts the token matrix).
constexpr int64_t kKeepTokenMatrixDim = 128;

// The rounds hand over to the chain after a round that merged fewer than 1/kChainBelow of
// its clusters. A round is one pass over the matrix, streamed by all threads; the chain
// visits about 2 N'^2 entries (N' clusters left) on one thread, half of them down a column
// of the triangle, one cache line each. While every round merges at least 1/kChainBelow of
// the clusters, the rounds left cost at most about kChainBelow / 2 passes over the current
// matrix (the matrix shrinks by that fraction, squared, each round); the chain from
// 15,615 clusters of isotropic Gaussian points, 16,384 x 256, cost about 50 of them (2.6 s
// against 0.05 s for a round, 2 cores). With 1/16, such inputs of more than 48 dimensions
// went to the chain after one or two rounds with 14,000 to 15,600 clusters left, and their
// trees took 3 to 5 s instead of 0.7 to 1.6 s; on the sample codebook's geometry the
// chain takes over with a few thousand clusters either way. DCPE_CPU_CHAIN=0 never hands
// over (the rounds finish), =1 after the first round; the same merges on tie-free inputs.
constexpr int64_t kChainBelow = 64;
// ... unless that round merged at least 3/2 as many pairs as the round before (the first
// round counts as such). On points of a grid the rounds start with few merges and grow:
// every token's nearest neighbours are tied and the tie goes to the smallest slot, so the
// first round finds few reciprocal pairs (on the corners of a cube only slots 0 and 1),
// and the average distances of the merged clusters then break the ties around them (the
// corners of a 14-dimensional cube, scaled by 1/sqrt(14): 1, 13, 79, 298, 782, 1,518, ...
// pairs). Handed over to the chain after the first round, the whole tree of the 16,384
// corners (coordinates +-1/2) took 3.5 s; with the rounds going on, 27 of them, 0.62 s,
// and 0.2 to 0.4x the time on the other grids of `bench_scale.py --data grid`
// (benchmarks/README.md).
// Where merges grow by 3/2 a round, the rounds reach 1/kChainBelow of the clusters within
// about 14 rounds (from one pair, 16,384 clusters), well under the chain's 50 passes;
// where they do not grow, the hand-over is where it was (the same round on the 12 Gaussian
// and codebook inputs of 8,192 to 32,768 tokens measured).

// The last run's rounds and the clusters it handed over to the chain (0: none), for
// matrix_stats().
std::atomic<int64_t> g_matrix_rounds{0}, g_matrix_chain{0};

inline std::size_t tri(int64_t i) {  // start of row i of the condensed lower triangle
  return static_cast<std::size_t>(i) * static_cast<std::size_t>(i - 1) / 2;
}

// End of the block of rows that starts at row lo: rows lo.. (at least one, at most n) while
// they hold at most `elems` entries of the triangle together.
inline int64_t block_end(int64_t lo, int64_t n, std::size_t elems) {
  int64_t hi = lo + 1;
  while (hi < n && tri(hi + 1) - tri(lo) <= elems) ++hi;
  return hi;
}

// From this size on, the condensed matrix is aligned to 2 MiB, where the kernel backs it by
// transparent huge pages if it does so without advice (enabled=always). Advising them
// (MADV_HUGEPAGE) is off by default: where the kernel compacts memory for advised regions
// (defrag=madvise, the usual default), the first call of a process stalled while it did,
// for up to the run's own time. Whole trees on the matrix (2 cores, fresh processes, three
// calls each): 32,768 x 17 took 3.5 to 3.9 s for the first call advised and 2.0 s (once
// 3.6 s) for the next, 2.2 s and 2.1 s without; 65,536 x 17 16.4 s and 9.4 s advised,
// 9.6 s and 10.5 s without; 16,384 x 256 1.9 s and 1.1 to 1.8 s advised, 1.3 s without.
// DCPE_CPU_HUGE_PAGES=1 advises them (fewer TLB misses over many calls in one process
// where memory is not fragmented). A smaller matrix is an ordinary 64-byte-aligned
// allocation: faulting in a huge page means zeroing 2 MiB, and advised it stalled a
// 256-token run by 6 ms every second or third call, ten times the run itself.
constexpr std::size_t kHugePageMinBytes = std::size_t(32) << 20;

template <typename T>
class TriMatrix {
 public:
  explicit TriMatrix(int64_t n) {
    const std::size_t count = n > 1 ? tri(n) : 1;
    const bool huge = count * sizeof(T) >= kHugePageMinBytes;
    const std::size_t align = huge ? std::size_t(1) << 21 : 64;
    bytes_ = (count * sizeof(T) + align - 1) / align * align;
    data_ = static_cast<T*>(std::aligned_alloc(align, bytes_));
    if (data_ == nullptr) throw std::bad_alloc();
    // advice only; failure is harmless
    if (huge && env_switch("DCPE_CPU_HUGE_PAGES") == 1) madvise(data_, bytes_, MADV_HUGEPAGE);
  }
  ~TriMatrix() { std::free(data_); }
  TriMatrix(const TriMatrix&) = delete;
  TriMatrix& operator=(const TriMatrix&) = delete;
  T* data() { return data_; }

 private:
  T* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// Lance–Williams combination of the distances of two merged clusters to a third.
template <typename T>
struct WeightedMean {  // average (weights = size fractions) and weighted (1/2, 1/2)
  static T apply(T a, T b, T wa, T wb) { return wa * a + wb * b; }
};
template <typename T>
struct Minimum {
  static T apply(T a, T b, T, T) { return a < b ? a : b; }
};
template <typename T>
struct Maximum {
  static T apply(T a, T b, T, T) { return a < b ? b : a; }
};

template <typename T>
struct Best {
  T v;
  int32_t i;
};

template <typename T>
inline bool better(T v1, int32_t i1, T v2, int32_t i2) {
  return v1 < v2 || (v1 == v2 && i1 < i2);
}

inline void poll(const RunOptions& opt) {
  if (opt.interrupted && opt.interrupted()) throw Interrupted();
}

// Compaction of a row: out[y] = row[idx[y]] for the n kept columns idx (increasing), the
// same as copying the entries of row[0 .. len) whose bit is set in `keep` (bit c % 8 of
// byte c / 8), in order. float32 and float64 have AVX2 overloads below that do the latter.
template <typename T>
inline void compact_row(const T* __restrict row, const int32_t* __restrict idx,
                        const uint8_t* /*keep*/, int64_t /*len*/, T* __restrict out, int64_t n) {
  for (int64_t y = 0; y < n; ++y) out[y] = row[idx[y]];
}

#if defined(__AVX2__)
// AVX2 fast paths of the two hot loops, float32 (and the row compaction for float64 too);
// same results as the generic code: strict comparisons, smallest index on ties.

// Lane permutations that move the elements selected by a mask to the front: an element
// is W float lanes wide (W = 1 for float32, 2 for float64), so a 256-bit register holds
// 8 / W of them and the mask has 8 / W bits.
template <int W>
struct LeftPackTable {
  static constexpr int kElems = 8 / W;
  alignas(32) int32_t perm[1 << kElems][8];
  LeftPackTable() {
    for (int m = 0; m < (1 << kElems); ++m) {
      int o = 0;
      for (int l = 0; l < kElems; ++l) {
        if (m & (1 << l)) {
          for (int w = 0; w < W; ++w) perm[m][W * o + w] = W * l + w;
          ++o;
        }
      }
      for (; o < kElems; ++o) {
        for (int w = 0; w < W; ++w) perm[m][W * o + w] = 0;
      }
    }
  }
};

// Left-packing: 8 columns per step through a lane permutation instead of a gather; never
// writes past out[n - 1] (the last steps use a masked store), so rows written in place
// next to each other by different threads do not interfere.
inline void compact_row(const float* row, const int32_t* /*idx*/, const uint8_t* keep,
                        int64_t len, float* out, int64_t n) {
  static const LeftPackTable<1> table;
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t o = 0, c = 0;
  for (; c + 8 <= len; c += 8) {
    const unsigned mk = keep[c >> 3];
    const __m256 v = _mm256_permutevar8x32_ps(
        _mm256_loadu_ps(row + c),
        _mm256_load_si256(reinterpret_cast<const __m256i*>(table.perm[mk])));
    if (o + 8 <= n) {
      _mm256_storeu_ps(out + o, v);
    } else {
      const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - o)), iota);
      _mm256_maskstore_ps(out + o, lanes, v);
    }
    o += __builtin_popcount(mk);
  }
  for (; c < len; ++c) {
    if ((keep[c >> 3] >> (c & 7)) & 1) out[o++] = row[c];
  }
}

// The same for float64, 4 columns per step.
inline void compact_row(const double* row, const int32_t* /*idx*/, const uint8_t* keep,
                        int64_t len, double* out, int64_t n) {
  static const LeftPackTable<2> table;
  const __m256i iota = _mm256_setr_epi64x(0, 1, 2, 3);
  int64_t o = 0, c = 0;
  for (; c + 4 <= len; c += 4) {
    const unsigned mk = (keep[c >> 3] >> (c & 4)) & 15u;
    const __m256d v = _mm256_castps_pd(_mm256_permutevar8x32_ps(
        _mm256_castpd_ps(_mm256_loadu_pd(row + c)),
        _mm256_load_si256(reinterpret_cast<const __m256i*>(table.perm[mk]))));
    if (o + 4 <= n) {
      _mm256_storeu_pd(out + o, v);
    } else {
      const __m256i lanes = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n - o), iota);
      _mm256_maskstore_pd(out + o, lanes, v);
    }
    o += __builtin_popcount(mk);
  }
  for (; c < len; ++c) {
    if ((keep[c >> 3] >> (c & 7)) & 1) out[o++] = row[c];
  }
}

inline Best<float> update_f32(const float* vals, float* cv, int32_t* ci, int64_t len,
                              int32_t row) {
  const __m256i rv = _mm256_set1_epi32(row);
  __m256 lanes = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  int64_t y = 0;
  for (; y + 8 <= len; y += 8) {
    const __m256 v = _mm256_loadu_ps(vals + y);
    const __m256 c = _mm256_loadu_ps(cv + y);
    const __m256 m = _mm256_cmp_ps(v, c, _CMP_LT_OQ);
    _mm256_storeu_ps(cv + y, _mm256_blendv_ps(c, v, m));
    const __m256i old = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ci + y));
    const __m256i upd = _mm256_castps_si256(_mm256_blendv_ps(
        _mm256_castsi256_ps(old), _mm256_castsi256_ps(rv), m));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ci + y), upd);
    lanes = _mm256_min_ps(lanes, v);
  }
  alignas(32) float tmp[8];
  _mm256_store_ps(tmp, lanes);
  float bv = std::numeric_limits<float>::infinity();
  for (int l = 0; l < 8; ++l) bv = tmp[l] < bv ? tmp[l] : bv;
  for (; y < len; ++y) {
    const float v = vals[y];
    if (v < cv[y]) {
      cv[y] = v;
      ci[y] = row;
    }
    bv = v < bv ? v : bv;
  }
  const __m256 target = _mm256_set1_ps(bv);
  int64_t t = 0;
  for (; t + 8 <= len; t += 8) {
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(vals + t), target,
                                                      _CMP_EQ_OQ));
    if (mask) return {bv, static_cast<int32_t>(t + __builtin_ctz(mask))};
  }
  for (; t < len; ++t) {
    if (vals[t] == bv) return {bv, static_cast<int32_t>(t)};
  }
  return {bv, len > 0 ? 0 : -1};
}
#endif

// Per-thread running column minima, merged in thread order (deterministic).
template <typename T>
struct ColumnMinima {
  ColumnMinima(int threads, int64_t n) : v(threads), i(threads) {
    for (int t = 0; t < threads; ++t) {
      v[t].assign(n, std::numeric_limits<T>::infinity());
      i[t].assign(n, -1);
    }
  }
  void reset(int64_t n) {
    for (std::size_t t = 0; t < v.size(); ++t) {
      std::fill(v[t].begin(), v[t].begin() + n, std::numeric_limits<T>::infinity());
      std::fill(i[t].begin(), i[t].begin() + n, -1);
    }
  }
  // Row `row` of values `vals` (length `len` = row) contributes to columns 0..len-1 and
  // returns the row's own minimum (smallest column on ties). The loops are kept simple
  // enough for the compiler to vectorise without fast-math.
  Best<T> update(int tid, const T* __restrict vals, int64_t len, int32_t row) {
    T* __restrict cv = v[tid].data();
    int32_t* __restrict ci = i[tid].data();
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, float>) return update_f32(vals, cv, ci, len, row);
#endif
    for (int64_t y = 0; y < len; ++y) {
      const T val = vals[y];
      const T c = cv[y];
      const bool u = val < c;
      cv[y] = u ? val : c;
      ci[y] = u ? row : ci[y];
    }
    constexpr int kLanes = 8;
    T lanes[kLanes];
    for (int l = 0; l < kLanes; ++l) lanes[l] = std::numeric_limits<T>::infinity();
    int64_t y = 0;
    for (; y + kLanes <= len; y += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const T val = vals[y + l];
        lanes[l] = val < lanes[l] ? val : lanes[l];
      }
    }
    T bv = std::numeric_limits<T>::infinity();
    for (int l = 0; l < kLanes; ++l) bv = lanes[l] < bv ? lanes[l] : bv;
    for (; y < len; ++y) bv = vals[y] < bv ? vals[y] : bv;
    for (int64_t t = 0; t < len; ++t) {
      if (vals[t] == bv) return {bv, static_cast<int32_t>(t)};
    }
    return {bv, len > 0 ? 0 : -1};  // len == 0, or NaN values (inputs are finite)
  }
  std::vector<std::vector<T>> v;
  std::vector<std::vector<int32_t>> i;
};

template <typename T>
void finish_nn(const std::vector<Best<T>>& rowbest, const ColumnMinima<T>& cols, int64_t n,
               std::vector<T>& nnv, std::vector<int32_t>& nni) {
  for (int64_t y = 0; y < n; ++y) {
    T bv = std::numeric_limits<T>::infinity();
    int32_t bi = -1;
    for (std::size_t t = 0; t < cols.v.size(); ++t) {
      if (cols.i[t][y] >= 0 && (bi < 0 || better(cols.v[t][y], cols.i[t][y], bv, bi))) {
        bv = cols.v[t][y];
        bi = cols.i[t][y];
      }
    }
    // Row entries are to smaller slots, so they win ties against column entries.
    if (rowbest[y].i >= 0 && (bi < 0 || rowbest[y].v <= bv)) {
      bv = rowbest[y].v;
      bi = rowbest[y].i;
    }
    nnv[y] = bv;
    nni[y] = bi;
  }
}

// Token coordinates in the column panels of distance_tiles.h (each panel: W tokens, d rows
// of W values) so that tiles of distances read contiguous blocks. Cosine distance of unit
// vectors is |u - v|^2 / 2, computed from differences (no cancellation), so the rows are
// scaled to unit length here.
template <typename T>
std::vector<T> panel_points(const T* x, int64_t n, int64_t d, Metric metric) {
  std::vector<T> xp(panel_elems<T>(n, d), T(0));
  for (int64_t i = 0; i < n; ++i) {
    double scale = 1.0;
    if (metric == Metric::Cosine) {
      double s = 0.0;
      for (int64_t k = 0; k < d; ++k) s += double(x[i * d + k]) * double(x[i * d + k]);
      DCPE_CHECK(s > 0.0, "cosine distance is undefined for the zero vector in row ", i);
      scale = 1.0 / std::sqrt(s);
    }
    T* dst = xp.data() + panel_offset<T>(i, 0, d);
    for (int64_t k = 0; k < d; ++k) {
      dst[k * kDistancePanel<T>] = static_cast<T>(double(x[i * d + k]) * scale);
    }
  }
  return xp;
}

// Every token's nearest neighbour (smallest index on ties); the distances are kept in D
// (the condensed token matrix) unless D is null. Rows (each to the tokens before it) are
// computed a tile of kDistanceTileRows consecutive tokens at a time; a thread takes tiles
// in increasing order, so its column minima see rows in increasing order, as finish_nn()'s
// tie rule expects.
template <typename T>
void token_nearest_neighbours(const std::vector<T>& xp, int64_t n, int64_t d, Metric metric,
                              int threads, const RunOptions& opt, T* D, std::vector<T>& nnv,
                              std::vector<int32_t>& nni) {
  constexpr int R = kDistanceTileRows<T>;
  static_assert(kDistancePanel<T> % R == 0, "a tile's rows share a panel");
  ColumnMinima<T> cols(threads, n);
  std::vector<Best<T>> rowbest(n, Best<T>{std::numeric_limits<T>::infinity(), -1});
  std::vector<std::vector<T>> rows(threads, std::vector<T>(static_cast<std::size_t>(R) * n));
  int64_t lo = 0;
  while (lo < n) {
    const int64_t hi = std::min(n, (block_end(lo, n, kDirectElems) + R - 1) / R * R);
    const int64_t n_tiles = (hi - lo + R - 1) / R;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int tid = omp_get_thread_num();
      const int64_t i0 = lo + t * R;
      const int cnt = static_cast<int>(std::min<int64_t>(R, hi - i0));
      T* buf = rows[tid].data();
      distance_rows(xp.data() + panel_offset<T>(i0, 0, d), kDistancePanel<T>, cnt, xp.data(), d,
                    i0 + cnt - 1, metric, buf, n);
      for (int r = 0; r < cnt; ++r) {
        const int64_t i = i0 + r;
        if (D != nullptr) std::memcpy(D + tri(i), buf + r * n, sizeof(T) * i);
        rowbest[i] = cols.update(tid, buf + r * n, i, static_cast<int32_t>(i));
      }
    }
    poll(opt);
    lo = hi;
  }
  finish_nn(rowbest, cols, n, nnv, nni);
}

// The tokens as the engine's first round sees them.
template <typename T>
struct Points {
  const std::vector<T>& xp;  // coordinates in column panels (panel_points)
  int64_t n, d;
  Metric metric;
};

// State of the active clusters, indexed by slot.
struct Clusters {
  std::vector<int64_t> size, rep;  // rep: smallest token index of the cluster
  std::vector<double> adj;         // largest merge height inside the cluster (sort key)
};

// What one round does to the matrix, indexed by new slot X (col_old[X]: the old slot that
// keeps it, col_partner[X]: the merged-in old slot or -1, w1/w2: Lance–Williams weights)
// and by merged column t (mc_*: new slot, second member's old slot and row start,
// weights). keep: bit x set when old slot x keeps a new slot.
template <typename T>
struct RoundPlan {
  std::vector<int32_t> col_old, col_partner;
  std::vector<T> w1, w2;
  std::vector<int32_t> mc_col, mc_second;
  std::vector<std::size_t> mc_second_row;
  std::vector<T> mc_w1, mc_w2;
  std::vector<uint8_t> keep;

  void clear(int64_t n) {
    col_old.clear();
    col_partner.clear();
    w1.clear();
    w2.clear();
    mc_col.clear();
    mc_second.clear();
    mc_second_row.clear();
    mc_w1.clear();
    mc_w2.clear();
    keep.assign(static_cast<std::size_t>(n + 7) / 8, 0);
  }
};

template <typename T, typename Comb>
class Engine {
 public:
  using Plan = RoundPlan<T>;
  // tokens: the token matrix when the first pass kept it, else null.
  Engine(int64_t n, const RunOptions& opt, int threads, std::unique_ptr<TriMatrix<T>> tokens)
      : mat_(std::move(tokens)), D_(mat_ ? mat_->data() : nullptr), n_(n), opt_(opt),
        threads_(threads) {}

  // Start from a matrix of the n clusters made elsewhere (condensed, owned by the caller)
  // instead of computing the first round's matrix from the points.
  void adopt(T* D) { D_ = D; }

  // Reciprocal-nearest-neighbour rounds; returns when finished or handing over to the chain.
  // nnv/nni: the tokens' nearest neighbours. Unless the first pass kept the token matrix,
  // the first round computes the matrix it leaves (merged and compacted) directly from the
  // points.
  void rounds(Clusters& cl, std::vector<T>& nnv, std::vector<int32_t>& nni,
              std::vector<Merge>& merges, const Points<T>& pts) {
    const int64_t cap = opt_.max_cluster_size;
    update_cut(merges);  // merges made before (matrix_linkage_on) count too
    std::vector<int32_t> partner, newidx;
    Plan plan;
    ColumnMinima<T> cols(threads_, n_);
    std::vector<Best<T>> rowbest;
    std::vector<T> block(std::min<std::size_t>(kBlockElems, std::max<std::size_t>(tri(n_), 1)) +
                         static_cast<std::size_t>(n_));
    std::vector<std::vector<T>> scratch(threads_, std::vector<T>(n_));
    bool first = D_ == nullptr;  // the first round, without a token matrix
    const int chain_rule = env_switch("DCPE_CPU_CHAIN");  // kChainBelow
    int64_t last_pairs = 0;  // pairs merged by the round before
    while (n_ >= 2) {
      const int64_t n = n_;
      partner.assign(n, -1);
      int64_t n_pairs = 0, n_aside = 0;
      for (int64_t x = 0; x < n; ++x) {
        const int32_t y = nni[x];
        if (aside(nnv[x])) {  // so is its nearest neighbour, if it points back
          ++n_aside;
          continue;
        }
        if (y > x && nni[y] == x) {
          partner[x] = y;
          partner[y] = static_cast<int32_t>(x);
          ++n_pairs;
          const double h = static_cast<double>(nnv[x]);
          merges.push_back({cl.rep[x], cl.rep[y], h, std::max({h, cl.adj[x], cl.adj[y]}),
                            cl.size[x] + cl.size[y]});
        }
      }
      if (n_pairs == 0 && n_aside == n) {  // a flat cut's merges are all known
        n_ = 0;
        return;
      }
      if (n_pairs == 0) throw std::runtime_error("dcpe: internal error: no reciprocal pair");
      update_cut(merges);
      // New slots: singles keep theirs (shifted); a pair keeps the smaller slot unless the
      // merged cluster exceeds the cap, in which case both leave the matrix.
      newidx.assign(n, -1);
      plan.clear(n);
      std::vector<int32_t>& col_old = plan.col_old;
      Clusters next;
      for (int64_t x = 0; x < n; ++x) {
        const int32_t p = partner[x];
        if (p >= 0 && p < x) continue;  // second member of a pair
        if (p < 0 && aside(nnv[x])) continue;  // set aside by a flat cut: leaves
        const int64_t sz = cl.size[x] + (p >= 0 ? cl.size[p] : 0);
        if (p >= 0 && cap > 0 && sz > cap) continue;  // frozen
        const int32_t X = static_cast<int32_t>(col_old.size());
        newidx[x] = X;
        col_old.push_back(static_cast<int32_t>(x));
        plan.col_partner.push_back(p);
        plan.keep[x >> 3] |= static_cast<uint8_t>(1u << (x & 7));
        if (p >= 0) {
          const double a = double(cl.size[x]), b = double(cl.size[p]);
          const T wa = static_cast<T>(weight_a(a, b)), wb = static_cast<T>(weight_b(a, b));
          plan.w1.push_back(wa);
          plan.w2.push_back(wb);
          plan.mc_col.push_back(X);
          plan.mc_second.push_back(p);
          plan.mc_second_row.push_back(tri(p));
          plan.mc_w1.push_back(wa);
          plan.mc_w2.push_back(wb);
          next.adj.push_back(std::max({double(nnv[x]), cl.adj[x], cl.adj[p]}));
        } else {
          plan.w1.push_back(T(1));
          plan.w2.push_back(T(0));
          next.adj.push_back(cl.adj[x]);
        }
        next.size.push_back(sz);
        next.rep.push_back(cl.rep[x]);
      }
      const int64_t m = static_cast<int64_t>(col_old.size());
      if (first) {
        mat_ = std::make_unique<TriMatrix<T>>(m);
        D_ = mat_->data();
        if (m >= 2) fill_from_points(m, plan, pts, cols, rowbest, scratch, nnv, nni);
        first = false;
      } else if (m >= 2) {
        compact(m, plan, cols, rowbest, block, scratch, nnv, nni);
      }
      cl = std::move(next);
      n_ = m;
      poll(opt_);
      ++g_matrix_rounds;
      const bool few = n_pairs * kChainBelow < n && 2 * n_pairs < 3 * last_pairs;
      last_pairs = n_pairs;
      if (n_ >= 2 && (chain_rule == 1 || (chain_rule < 0 && few))) {
        g_matrix_chain = n_;  // few merges per pass, not growing: finish by chain
        return;
      }
    }
  }

  // Nearest-neighbour chain on the current matrix (slots 0..n_-1). The clusters still
  // active are kept in a list in slot order, so a step reads only their entries (ties go to
  // the smallest slot, as in the rounds, but a tie with the cluster below on the stack goes
  // to it); the entries down a column of the triangle, one cache line each, are prefetched
  // kChainAhead clusters ahead (together 2.6 s against 4.5 s for a plain scan of all slots,
  // from 15,615 clusters of 16,384 x 256 Gaussian points).
  void chain(Clusters& cl, std::vector<Merge>& merges) {
    constexpr int64_t kChainAhead = 16;
    const int64_t cap = opt_.max_cluster_size;
    std::vector<int32_t> act(static_cast<std::size_t>(n_));
    for (int64_t i = 0; i < n_; ++i) act[i] = static_cast<int32_t>(i);
    auto leave = [&act](int32_t v) { act.erase(std::lower_bound(act.begin(), act.end(), v)); };
    std::vector<int32_t> stack;
    std::vector<char> on_stack(static_cast<std::size_t>(n_), 0);
    auto push = [&](int32_t v) {
      stack.push_back(v);
      on_stack[v] = 1;
    };
    auto pop = [&]() {
      on_stack[stack.back()] = 0;
      stack.pop_back();
    };
    int64_t steps = 0;
    // the cut's bound is updated once the flat cut's merges are all recorded, then every
    // 1024 merges
    const auto need = static_cast<std::size_t>(std::max<int64_t>(opt_.max_merges, 0));
    update_cut(merges);
    std::size_t next = merges.size() < need ? need : merges.size() + 1024;
    while (act.size() >= 2) {
      if ((++steps & 1023) == 0) poll(opt_);
      if (merges.size() >= next) {
        update_cut(merges);
        next = merges.size() + 1024;
      }
      if (stack.empty()) push(act.front());
      const int32_t t = stack.back();
      const int32_t prev = stack.size() >= 2 ? stack[stack.size() - 2] : -1;
      // t's nearest active cluster: its row (slots below t), then its column (above)
      const int32_t* A = act.data();
      const int64_t m = static_cast<int64_t>(act.size());
      const int64_t at_t = std::lower_bound(act.begin(), act.end(), t) - act.begin();
      const T* row = D_ + tri(t);
      T bv = std::numeric_limits<T>::infinity();
      int32_t bi = -1;
      for (int64_t i = 0; i < at_t; ++i) {
        const T val = row[A[i]];
        if (bi < 0 || val < bv) {
          bv = val;
          bi = A[i];
        }
      }
      for (int64_t i = at_t + 1; i < m; ++i) {
        if (i + kChainAhead < m) __builtin_prefetch(D_ + tri(A[i + kChainAhead]) + t);
        const T val = D_[tri(A[i]) + t];
        if (bi < 0 || val < bv) {
          bv = val;
          bi = A[i];
        }
      }
      // a tie with the cluster below t on the stack goes to it: with ties to the smallest
      // slot alone, a cluster already on the stack could be pushed again, and once merged
      // its stale copy below would be merged a second time (an invalid tree)
      if (prev >= 0 && bi != prev && !(bv < (prev < t ? row[prev] : D_[tri(prev) + t]))) {
        bi = prev;
      }
      if (aside(bv)) {
        // t's nearest distance exceeds U, and so does every distance along the chain to it
        // (they decrease towards t): the whole chain is set aside
        while (!stack.empty()) {
          leave(stack.back());
          pop();
        }
        continue;
      }
      if (bi != prev && on_stack[bi]) {
        // t is strictly nearer to a cluster deeper in the stack than the links above it:
        // only the rounding of a Lance–Williams update can do that (a merged cluster a few
        // ulps nearer than both of its parts). The chain goes back to that cluster, which
        // looks for its nearest neighbour again; it never holds a cluster twice
        while (stack.back() != bi) pop();
        continue;
      }
      if (bi != prev) {
        push(bi);
        continue;
      }
      pop();
      pop();
      const int32_t a = std::min(t, prev), b = std::max(t, prev);
      const double h = static_cast<double>(bv);
      const int64_t sz = cl.size[a] + cl.size[b];
      merges.push_back({cl.rep[a], cl.rep[b], h, std::max({h, cl.adj[a], cl.adj[b]}), sz});
      const double fa = double(cl.size[a]), fb = double(cl.size[b]);
      const T wa = static_cast<T>(weight_a(fa, fb)), wb = static_cast<T>(weight_b(fa, fb));
      leave(b);
      cl.adj[a] = std::max({h, cl.adj[a], cl.adj[b]});
      cl.size[a] = sz;
      if (cap > 0 && sz > cap) {
        leave(a);
        continue;
      }
      // d(a ∪ b, v) into a's entries, for every active v other than a
      T* const ra = D_ + tri(a);
      const T* const rb = D_ + tri(b);
      const int32_t* B = act.data();
      const int64_t mb = static_cast<int64_t>(act.size());
      for (int64_t i = 0; i < mb; ++i) {
        const int32_t v = B[i];
        if (v == a) continue;
        if (i + kChainAhead < mb) {
          const int32_t w = B[i + kChainAhead];
          if (w > a) __builtin_prefetch(D_ + tri(w) + a, 1);
          if (w > b) __builtin_prefetch(D_ + tri(w) + b);
        }
        T& dav = v < a ? ra[v] : D_[tri(v) + a];
        const T dbv = v < b ? rb[v] : D_[tri(v) + b];
        dav = Comb::apply(dav, dbv, wa, wb);
      }
    }
  }

 private:
  // A flat cut's bound U (cut_bound()), widened by kCutBoundUlps roundings; +inf before
  // (and for a whole tree). A cluster whose nearest distance exceeds it is set aside.
  void update_cut(const std::vector<Merge>& merges) {
    aside_ = std::min(aside_, cut_bound(merges, opt_.max_merges, kCutBoundUlps,
                                        double(std::numeric_limits<T>::epsilon()), keys_));
  }
  bool aside(T v) const { return static_cast<double>(v) > aside_; }

  double weight_a(double a, double b) const {
    return opt_.method == Method::Weighted ? 0.5 : a / (a + b);
  }
  double weight_b(double a, double b) const {
    return opt_.method == Method::Weighted ? 0.5 : b / (a + b);
  }

  // The matrix after the first round, from the points: row X holds the distances of
  // new cluster X to the new clusters below it, combined exactly as compact() combines
  // stored distances (same Lance–Williams expression, same order). The kept tokens are
  // copied in slot order (slot X's token at position pos[X], its partner's next to it), so
  // the tokens of the clusters below X are the positions before pos[X]: a row of distances
  // from position 0 up to pos[X] holds all that row X needs, and the rows of consecutive
  // slots are consecutive tokens, computed a tile (kDistanceTileRows tokens) at a time.
  void fill_from_points(int64_t m, const Plan& plan, const Points<T>& pts, ColumnMinima<T>& cols,
                        std::vector<Best<T>>& rowbest, std::vector<std::vector<T>>& scratch,
                        std::vector<T>& nnv, std::vector<int32_t>& nni) {
    constexpr int R = kDistanceTileRows<T>;
    T* const D = D_;
    const int64_t d = pts.d;
    // The round's plan in positions: col_old -> pos, keep -> bits at pos, and a merged
    // column's second member -> the position after its slot's.
    Plan q;
    q.col_old.resize(m + 1);
    q.col_old[0] = 0;
    for (int64_t X = 0; X < m; ++X) {
      q.col_old[X + 1] = q.col_old[X] + (plan.col_partner[X] >= 0 ? 2 : 1);
    }
    const int64_t np = q.col_old[m];
    q.keep.assign(static_cast<std::size_t>(np + 7) / 8, 0);
    for (int64_t X = 0; X < m; ++X) {
      const int32_t P = q.col_old[X];
      q.keep[P >> 3] |= static_cast<uint8_t>(1u << (P & 7));
    }
    q.mc_col = plan.mc_col;
    q.mc_second.resize(plan.mc_col.size());
    for (std::size_t t = 0; t < plan.mc_col.size(); ++t) {
      q.mc_second[t] = q.col_old[plan.mc_col[t]] + 1;
    }
    q.mc_w1 = plan.mc_w1;
    q.mc_w2 = plan.mc_w2;
    std::vector<T> xq(panel_elems<T>(np, d), T(0));
    constexpr int64_t W = kDistancePanel<T>;
#pragma omp parallel for num_threads(threads_) schedule(static)
    for (int64_t X = 0; X < m; ++X) {
      const int64_t P = q.col_old[X];
      for (int u = 0; u < q.col_old[X + 1] - P; ++u) {
        const int64_t token = u == 0 ? plan.col_old[X] : plan.col_partner[X];
        const T* src = pts.xp.data() + panel_offset<T>(token, 0, d);
        T* dst = xq.data() + panel_offset<T>(P + u, 0, d);
        for (int64_t k = 0; k < d; ++k) dst[k * W] = src[k * W];
      }
    }
    std::vector<std::vector<T>> rows(threads_,
                                     std::vector<T>(static_cast<std::size_t>(R) * np));
    std::vector<std::vector<T>> packed(threads_, std::vector<T>(static_cast<std::size_t>(R) * d));
    std::vector<int64_t> groups;  // first slots of groups of at most R tokens
    cols.reset(m);
    rowbest.assign(m, Best<T>{std::numeric_limits<T>::infinity(), -1});
    int64_t lo = 0;
    while (lo < m) {
      const int64_t hi = block_end(lo, m, kDirectElems);
      groups.clear();
      for (int64_t X = lo; X < hi;) {
        groups.push_back(X);
        const int64_t P0 = q.col_old[X];
        while (X < hi && q.col_old[X + 1] - P0 <= R) ++X;
      }
      groups.push_back(hi);
      const int64_t n_groups = static_cast<int64_t>(groups.size()) - 1;
#pragma omp parallel for num_threads(threads_) schedule(dynamic, 1)
      for (int64_t g = 0; g < n_groups; ++g) {
        const int tid = omp_get_thread_num();
        const int64_t X0 = groups[g], X1 = groups[g + 1];
        const int64_t P0 = q.col_old[X0];
        const int cnt = static_cast<int>(q.col_old[X1] - P0);
        T* a = packed[tid].data();
        T* buf = rows[tid].data();
        pack_rows(xq.data(), d, P0, cnt, a);
        distance_rows(a, cnt, cnt, xq.data(), d, q.col_old[X1 - 1], pts.metric, buf, np);
        for (int64_t X = X0; X < X1; ++X) {
          const int64_t P = q.col_old[X];
          T* out = D + tri(X);
          const int64_t n_merged =
              std::lower_bound(plan.mc_col.begin(), plan.mc_col.end(), static_cast<int32_t>(X)) -
              plan.mc_col.begin();
          T* rx = buf + (P - P0) * np;
          combine_row(rx, X, P, q, n_merged, out);
          if (plan.col_partner[X] >= 0) {
            T* tmp = scratch[tid].data();
            combine_row(rx + np, X, P, q, n_merged, tmp);
            const T wa = plan.w1[X], wb = plan.w2[X];
            for (int64_t Y = 0; Y < X; ++Y) out[Y] = Comb::apply(out[Y], tmp[Y], wa, wb);
          }
          rowbest[X] = cols.update(tid, out, X, static_cast<int32_t>(X));
        }
      }
      poll(opt_);
      lo = hi;
    }
    finish_nn(rowbest, cols, m, nnv, nni);
  }

  // gather_row() for a distance row r of the first round, indexed like `plan`'s columns
  // (fill_from_points: r[P] is the distance to the kept token at position P).
  static void combine_row(const T* r, int64_t X, int64_t x, const Plan& plan, int64_t n_merged,
                          T* __restrict out) {
    compact_row(r, plan.col_old.data(), plan.keep.data(), x, out, X);
    const int32_t* __restrict mcol = plan.mc_col.data();
    const int32_t* __restrict second = plan.mc_second.data();
    const T* __restrict wa = plan.mc_w1.data();
    const T* __restrict wb = plan.mc_w2.data();
    for (int64_t t = 0; t < n_merged; ++t) {
      const int32_t Y = mcol[t];
      out[Y] = Comb::apply(out[Y], r[second[t]], wa[t], wb[t]);
    }
  }

  // One streaming pass: merged and compacted matrix of m clusters, and their nearest
  // neighbours.
  void compact(int64_t m, const Plan& plan, ColumnMinima<T>& cols,
               std::vector<Best<T>>& rowbest, std::vector<T>& block,
               std::vector<std::vector<T>>& scratch, std::vector<T>& nnv,
               std::vector<int32_t>& nni) {
    T* const D = D_;
    const std::vector<int32_t>& col_old = plan.col_old;
    cols.reset(m);
    rowbest.assign(m, Best<T>{std::numeric_limits<T>::infinity(), -1});
    int64_t lo = 0;
    while (lo < m) {
      // A block's rows may be written in place when they end before the first old row the
      // block reads (slot col_old[lo]); otherwise they go through the block buffer.
      int64_t hi = lo + 1;
      const bool direct = lo + 1 <= col_old[lo];
      if (direct) {
        while (hi < m && hi + 1 <= col_old[lo] && tri(hi + 1) - tri(lo) <= kDirectElems) ++hi;
      } else {
        hi = block_end(lo, m, kBlockElems);
      }
      T* const buf = direct ? D + tri(lo) : block.data();
#pragma omp parallel for num_threads(threads_) schedule(dynamic, 1)
      for (int64_t X = lo; X < hi; ++X) {
        const int64_t x = col_old[X];
        const int32_t x2 = plan.col_partner[X];
        T* out = buf + (tri(X) - tri(lo));
        const int64_t n_merged =
            std::lower_bound(plan.mc_col.begin(), plan.mc_col.end(), static_cast<int32_t>(X)) -
            plan.mc_col.begin();
        gather_row(D, x, X, x, plan, n_merged, out);
        if (x2 >= 0) {
          T* tmp = scratch[omp_get_thread_num()].data();
          gather_row(D, x2, X, x, plan, n_merged, tmp);
          const T wa = plan.w1[X], wb = plan.w2[X];
          for (int64_t Y = 0; Y < X; ++Y) out[Y] = Comb::apply(out[Y], tmp[Y], wa, wb);
        }
        rowbest[X] = cols.update(omp_get_thread_num(), out, X, static_cast<int32_t>(X));
      }
      if (!direct) std::memcpy(D + tri(lo), buf, (tri(hi) - tri(lo)) * sizeof(T));
      poll(opt_);
      lo = hi;
    }
    finish_nn(rowbest, cols, m, nnv, nni);
  }

  // Distances from old cluster u to the new clusters 0..X-1 (columns merged as needed);
  // x = col_old[X] <= u: the kept old columns below x are the new columns 0..X-1.
  static void gather_row(const T* D, int64_t u, int64_t X, int64_t x, const Plan& plan,
                         int64_t n_merged, T* __restrict out) {
    const std::size_t row_u = tri(u);
    compact_row(D + row_u, plan.col_old.data(), plan.keep.data(), x, out, X);
    // Merged columns: the second member's distance to u is in row u (member < u) or in
    // the member's own row (member > u), a scattered read that is prefetched ahead. The
    // address is selected without a branch (members lie on either side of u at random).
    const int32_t* __restrict mcol = plan.mc_col.data();
    const int32_t* __restrict second = plan.mc_second.data();
    const std::size_t* __restrict second_row = plan.mc_second_row.data();
    const T* __restrict wa = plan.mc_w1.data();
    const T* __restrict wb = plan.mc_w2.data();
    const std::size_t uu = static_cast<std::size_t>(u);
    constexpr int64_t kAhead = 16;
    const int64_t n_ahead = std::max<int64_t>(0, n_merged - kAhead);
    auto addr = [&](int64_t t) {
      const std::size_t y2 = static_cast<std::size_t>(second[t]);
      return y2 < uu ? row_u + y2 : second_row[t] + uu;
    };
    int64_t t = 0;
    for (; t < n_ahead; ++t) {
      __builtin_prefetch(D + addr(t + kAhead));
      const int32_t Y = mcol[t];
      out[Y] = Comb::apply(out[Y], D[addr(t)], wa[t], wb[t]);
    }
    for (; t < n_merged; ++t) {
      const int32_t Y = mcol[t];
      out[Y] = Comb::apply(out[Y], D[addr(t)], wa[t], wb[t]);
    }
  }

  std::unique_ptr<TriMatrix<T>> mat_;
  T* D_ = nullptr;
  int64_t n_;
  const RunOptions& opt_;
  int threads_;
  double aside_ = std::numeric_limits<double>::infinity();  // update_cut()
  std::vector<double> keys_;                                // scratch of update_cut()
};

template <typename T, typename Comb>
void run_engine(const Points<T>& pts, const RunOptions& opt, int threads,
                std::unique_ptr<TriMatrix<T>> tokens, Clusters& cl, std::vector<T>& nnv,
                std::vector<int32_t>& nni, std::vector<Merge>& merges) {
  Engine<T, Comb> engine(pts.n, opt, threads, std::move(tokens));
  engine.rounds(cl, nnv, nni, merges, pts);
  engine.chain(cl, merges);
}

}  // namespace

template <typename T>
std::vector<Merge> matrix_linkage(const T* x, int64_t n, int64_t d, const RunOptions& opt) {
  DCPE_CHECK_ARG(n >= 1, "n", n, "need at least one row");
  DCPE_CHECK_ARG(n < (int64_t(1) << 31), "n", n, "at most 2^31 - 1 rows");
  DCPE_CHECK_ARG(d >= 1, "d", d, "need at least one column");
  DCPE_CHECK(!is_centroid_method(opt.method), "centroid and ward linkage have their own engine");
  g_matrix_rounds = 0;
  g_matrix_chain = 0;
  std::vector<Merge> merges;
  if (n == 1) return merges;
  merges.reserve(n - 1);
  const int threads = resolve_threads(opt.num_threads);
  const std::vector<T> xp = panel_points(x, n, d, opt.metric);
  const Points<T> pts{xp, n, d, opt.metric};
  std::vector<T> nnv(n);
  std::vector<int32_t> nni(n);
  std::unique_ptr<TriMatrix<T>> tokens;
  if (d >= kKeepTokenMatrixDim) tokens = std::make_unique<TriMatrix<T>>(n);
  token_nearest_neighbours(xp, n, d, opt.metric, threads, opt,
                           tokens ? tokens->data() : nullptr, nnv, nni);
  Clusters cl;
  cl.size.assign(n, 1);
  cl.rep.resize(n);
  for (int64_t i = 0; i < n; ++i) cl.rep[i] = i;
  cl.adj.assign(n, -std::numeric_limits<double>::infinity());
  switch (opt.method) {
    case Method::Single:
      run_engine<T, Minimum<T>>(pts, opt, threads, std::move(tokens), cl, nnv, nni, merges);
      break;
    case Method::Complete:
      run_engine<T, Maximum<T>>(pts, opt, threads, std::move(tokens), cl, nnv, nni, merges);
      break;
    default:
      run_engine<T, WeightedMean<T>>(pts, opt, threads, std::move(tokens), cl, nnv, nni,
                                     merges);
      break;
  }
  return merges;
}

template <typename T>
void matrix_linkage_on(T* D, int64_t m, const std::vector<int64_t>& size,
                       const std::vector<int64_t>& rep, const std::vector<double>& adj,
                       const RunOptions& opt, std::vector<Merge>& merges) {
  DCPE_CHECK(opt.method == Method::Average, "matrix_linkage_on: average linkage only");
  g_matrix_rounds = 0;
  g_matrix_chain = 0;
  if (m < 2) return;
  const int threads = resolve_threads(opt.num_threads);
  Clusters cl;
  cl.size = size;
  cl.rep = rep;
  cl.adj = adj;
  // nearest neighbours from the matrix: row and column minima in one pass
  std::vector<T> nnv(m);
  std::vector<int32_t> nni(m);
  {
    ColumnMinima<T> cols(threads, m);
    std::vector<Best<T>> rowbest(m, Best<T>{std::numeric_limits<T>::infinity(), -1});
#pragma omp parallel for num_threads(threads) schedule(dynamic, 64)
    for (int64_t i = 1; i < m; ++i) {
      rowbest[i] = cols.update(omp_get_thread_num(), D + tri(i), i, static_cast<int32_t>(i));
    }
    finish_nn(rowbest, cols, m, nnv, nni);
  }
  static const std::vector<T> no_points;
  const Points<T> pts{no_points, 0, 0, opt.metric};
  Engine<T, WeightedMean<T>> engine(m, opt, threads, nullptr);
  engine.adopt(D);
  engine.rounds(cl, nnv, nni, merges, pts);
  engine.chain(cl, merges);
}

template void matrix_linkage_on<float>(float*, int64_t, const std::vector<int64_t>&,
                                       const std::vector<int64_t>&, const std::vector<double>&,
                                       const RunOptions&, std::vector<Merge>&);
template void matrix_linkage_on<double>(double*, int64_t, const std::vector<int64_t>&,
                                        const std::vector<int64_t>&, const std::vector<double>&,
                                        const RunOptions&, std::vector<Merge>&);

std::array<int64_t, 2> matrix_stats() { return {g_matrix_rounds.load(), g_matrix_chain.load()}; }

template std::vector<Merge> matrix_linkage<float>(const float*, int64_t, int64_t,
                                                  const RunOptions&);
template std::vector<Merge> matrix_linkage<double>(const double*, int64_t, int64_t,
                                                   const RunOptions&);

std::size_t workspace_bytes(int64_t n, int64_t d, Method method, std::size_t elem_size,
                            int num_threads) {
  const std::size_t threads = static_cast<std::size_t>(resolve_threads(num_threads));
  const std::size_t un = static_cast<std::size_t>(std::max<int64_t>(n, 1));
  // per-cluster bookkeeping, merges, NN arrays, transposed coordinates
  std::size_t bytes = un * 160 + un * static_cast<std::size_t>(d) * 8;
  if (is_centroid_method(method)) {  // packed centroids, min tree, per-thread pass rows
    return bytes + un * static_cast<std::size_t>(d) * 8 + un * (64 + 8 * threads);
  }
  const std::size_t count = n > 1 ? tri(n) : 1;
  const std::size_t tile_rows = static_cast<std::size_t>(
      elem_size == sizeof(float) ? kDistanceTileRows<float> : kDistanceTileRows<double>);
  const std::size_t ud = static_cast<std::size_t>(d);
  bytes += count * elem_size;                                             // the matrix
  bytes += (std::min(kBlockElems, count) + un) * elem_size;               // block buffer
  bytes += (un + 64) * ud * elem_size;                  // kept tokens in slot order (panels)
  bytes += threads * un * ((tile_rows + 2) * elem_size + sizeof(int32_t));  // per-thread rows
  bytes += threads * tile_rows * ud * elem_size;                          // packed tile rows
  return bytes;
}

}  // namespace dcpe
