// Memory-safety check of the CUDA kernels (csrc/cuda/rnn_kernels.cuh, linear_kernels.cuh) on
// the CPU executor:
// built with AddressSanitizer and UndefinedBehaviorSanitizer by tests/test_cuda_sim.py,
// it runs every kernel, float and double, through the host code of rnn_dispatch.h and
// linear_dispatch.h (as rnn_kernels.cu and linear_kernels.cu launch them) on random valid inputs held in buffers of
// exactly the documented sizes (csrc/cuda/cuda_ops.h), so that any read or write outside
// them, including one whose value is never used (which no comparison of outputs can see,
// and which may fault on a GPU), stops the program with a report.  Sizes cross the
// kernels' thread strides (256 threads per row, 512 clusters per bookkeeping step) and the
// centroid scans' row blocks and column tiles at every split.
// Prints "ok" and exits 0 when nothing was found.
#include "cuda_sim.h"
// the kernel source and host code under test
#include "cuda/linear_dispatch.h"
#include "cuda/rnn_dispatch.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using I64 = std::int64_t;
namespace dispatch = dcpe_cuda::dispatch;
std::mt19937_64 rng(12345);

template <typename T>
constexpr int dtype_code() {
  return std::is_same_v<T, float> ? dcpe_cuda::kFloat32 : dcpe_cuda::kFloat64;
}

template <typename V>
std::uintptr_t ptr(V& v) {
  return reinterpret_cast<std::uintptr_t>(v.data());
}

template <typename T>
std::vector<T> uniform(std::size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<T> v(n);
  for (auto& e : v) e = static_cast<T>(u(rng));
  return v;
}

template <typename T>
void pairwise(I64 n, I64 dim, int metric) {
  const I64 ld = n + 3;
  auto x = uniform<T>(static_cast<std::size_t>(n * dim), -1, 1);
  std::vector<T> D(static_cast<std::size_t>((n - 1) * ld + n));  // last row ends at column n
  std::vector<I64> nn(n);
  std::vector<T> nnd(n);
  dispatch::pairwise_nn(cuda_sim::Launcher{}, dtype_code<T>(), ptr(x), ptr(D), ptr(nn),
                        ptr(nnd), n, dim, ld, metric);
}

// A round of n_old clusters: every third slot pairs with the next one, every tenth is
// dropped; new rows [row0, row0 + nrows) of the compacted matrix.  counted: all rows, with
// the round's record read on the device (new order, old order) and n_old rows launched (the
// buffers hold n_new).
template <typename T>
void merge(I64 n_old, int mode, I64 row0_frac_num, I64 chunk_den, bool counted = false) {
  const I64 ld_src = counted ? n_old : n_old + 1;  // a record's old matrix is compact
  std::vector<T> src = uniform<T>(static_cast<std::size_t>((n_old - 1) * ld_src + n_old), 0.5, 2);
  std::vector<std::int32_t> P, Q;
  std::vector<T> WP, WQ;
  for (I64 s = 0; s < n_old; ++s) {
    if (s % 10 == 9) continue;  // dropped
    const bool pair_head = s % 3 == 0 && s + 1 < n_old && (s + 1) % 10 != 9;
    if (s % 3 == 1 && (s - 1) % 10 != 9) continue;  // merged into s - 1
    P.push_back(static_cast<std::int32_t>(s));
    Q.push_back(pair_head ? static_cast<std::int32_t>(s + 1) : -1);
    WP.push_back(pair_head ? T(0.25) : T(1));
    WQ.push_back(pair_head ? T(0.75) : T(0));
  }
  const I64 n_new = static_cast<I64>(P.size());
  const I64 row0 = n_new * row0_frac_num / chunk_den;
  const I64 nrows = std::max<I64>(1, std::min(n_new - row0, n_new / chunk_den));
  const I64 ld_dst = n_new;
  std::vector<T> dst(static_cast<std::size_t>(nrows * ld_dst));
  std::vector<I64> nn(n_new);
  std::vector<T> nnd(n_new);
  if (counted) {
    std::vector<I64> counts = {0, n_new, 0, 0, 0, n_old};
    dispatch::merge_compact_nn(cuda_sim::Launcher{}, dtype_code<T>(), ptr(src), ld_src,
                               ptr(dst), n_old, ptr(P), ptr(Q), ptr(WP), ptr(WQ), n_old, 0,
                               n_old, mode, ptr(nn), ptr(nnd), ptr(counts));
    return;
  }
  dispatch::merge_compact_nn(cuda_sim::Launcher{}, dtype_code<T>(), ptr(src), ld_src, ptr(dst),
                             ld_dst, ptr(P), ptr(Q), ptr(WP), ptr(WQ), n_new, row0, nrows, mode,
                             ptr(nn), ptr(nnd));
}

// One round's bookkeeping of n clusters with m merges recorded: record arrays hold exactly
// m + n / 2 entries (at most n / 2 pairs), the per-cluster arrays n.  chained: n and m read
// from the record of a round before (status `before`), a larger n given as the bound.
template <typename T>
void round_scan(I64 n, I64 m, bool check, I64 cap, bool average, bool chained = false,
                I64 before = 0) {
  std::vector<I64> nn(n);
  std::vector<I64> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  const I64 pairs = n / 3;
  for (I64 k = 0; k < pairs; ++k) {
    nn[perm[k]] = perm[pairs + k];
    nn[perm[pairs + k]] = perm[k];
  }
  for (I64 k = 2 * pairs; k < n; ++k) nn[perm[k]] = perm[(k + 1) % n];  // one-way pointers
  auto nnd = uniform<T>(n, 1, 2);
  auto hfix = uniform<T>(n, 0, 1);
  std::vector<I64> size(n), rep(n);
  for (I64 i = 0; i < n; ++i) {
    size[i] = 1 + i % 5;
    rep[i] = 3 * i;
  }
  const I64 cap_rec = m + n / 2;
  std::vector<I64> m_a(cap_rec), m_b(cap_rec), m_s(cap_rec);
  auto m_h = uniform<T>(cap_rec, 0, 2);
  auto m_hf = uniform<T>(cap_rec, 0, 2);
  std::vector<std::int32_t> P(n), Q(n);
  std::vector<T> WP(n), WQ(n), hfix_out(n);
  std::vector<I64> size_out(n), rep_out(n), counts(6);
  std::vector<I64> prev = {1, n, 0, m, before, n + 1};
  dispatch::round_scan(cuda_sim::Launcher{}, dtype_code<T>(), chained ? 2 * n + 7 : n, ptr(nn),
                       ptr(nnd), ptr(size), ptr(rep), ptr(hfix), ptr(m_a), ptr(m_b), ptr(m_h),
                       ptr(m_hf), ptr(m_s), chained ? 0 : m, check, cap, average, ptr(P), ptr(Q),
                       ptr(WP), ptr(WQ), ptr(size_out), ptr(rep_out), ptr(hfix_out),
                       ptr(counts), chained ? ptr(prev) : 0, check ? m / 2 : -1);
}

// Centroid scans of n clusters in dim dimensions at one split (0: the dispatch's choice).
template <typename T>
void centroid_scans(I64 n, I64 dim, int split) {
  auto mu_t = uniform<T>(static_cast<std::size_t>(dim * n), -1, 1);
  auto s2 = uniform<T>(n, 0, 0.2);
  auto rad = uniform<T>(n, 0.1, 0.5);
  std::vector<T> out(n);
  std::vector<I64> nn(n);
  // every row, then every third row (a round where only some clusters search)
  std::vector<std::int32_t> rows(n), some;
  std::vector<std::int8_t> needy(n, 1), needy_some(n, 0);
  for (I64 i = 0; i < n; ++i) {
    rows[i] = static_cast<std::int32_t>(i);
    if (i % 3 == 0) {
      some.push_back(static_cast<std::int32_t>(i));
      needy_some[i] = 1;
    }
  }
  dispatch::centroid_nn(cuda_sim::Launcher{}, dtype_code<T>(), ptr(mu_t), ptr(s2), n, dim,
                        split % 2, 1.0, ptr(out), ptr(nn), ptr(rows), n, split);
  dispatch::centroid_nn(cuda_sim::Launcher{}, dtype_code<T>(), ptr(mu_t), ptr(s2), n, dim,
                        split % 2, 1.0, ptr(out), ptr(nn), ptr(some),
                        static_cast<I64>(some.size()), split);
  for (I64 capacity : {I64(0), I64(3), n * n}) {
    std::vector<std::int32_t> pa(capacity), pb(capacity);
    std::vector<I64> count(1);
    dispatch::candidate_pairs(cuda_sim::Launcher{}, dtype_code<T>(), ptr(mu_t), ptr(s2),
                              ptr(rad), ptr(out), n, dim, 0.2, 0.01, ptr(pa), ptr(pb),
                              ptr(count), capacity, ptr(rows), n, ptr(needy), split);
    dispatch::candidate_pairs(cuda_sim::Launcher{}, dtype_code<T>(), ptr(mu_t), ptr(s2),
                              ptr(rad), ptr(out), n, dim, 0.2, 0.01, ptr(pa), ptr(pb),
                              ptr(count), capacity, ptr(some), static_cast<I64>(some.size()),
                              ptr(needy_some), split);
  }
  // the same scans from Gram tiles of exactly nrows x (c1 - c0) float64, in two tiles of
  // columns: every row (row-major), every third row (the transpose of a (c1 - c0, nrows)
  // product)
  const I64 ns = static_cast<I64>(some.size());
  auto nrm = uniform<double>(n, 0.5, 1.5);
  const double gerr = 8.0 * (dim + 8) * 0x1p-53;
  const I64 half = n / 2;
  for (int pass = 0; pass < 2; ++pass) {
    const I64 c0 = pass == 0 ? 0 : half, c1 = pass == 0 ? half : n, w = c1 - c0;
    auto g_all = uniform<double>(static_cast<std::size_t>(n * w), -0.5, 0.5);
    auto g_some = uniform<double>(static_cast<std::size_t>(ns * w), -0.5, 0.5);
    dispatch::centroid_nn_gram(cuda_sim::Launcher{}, dtype_code<T>(), ptr(g_all), w, 1,
                               ptr(nrm), gerr, ptr(s2), n, c0, c1, ptr(out), ptr(nn), ptr(rows),
                               n, split);
    dispatch::centroid_nn_gram(cuda_sim::Launcher{}, dtype_code<T>(), ptr(g_some), 1, ns,
                               ptr(nrm), gerr, ptr(s2), n, c0, c1, ptr(out), ptr(nn),
                               ptr(some), ns, split);
    for (I64 capacity : {I64(0), I64(3), n * n}) {
      std::vector<std::int32_t> pa(capacity), pb(capacity);
      std::vector<I64> count(1);
      dispatch::candidate_pairs_gram(cuda_sim::Launcher{}, dtype_code<T>(), ptr(g_all), w, 1,
                                     ptr(nrm), gerr, ptr(s2), ptr(rad), ptr(out), n, c0, c1,
                                     0.2, 0.01, ptr(pa), ptr(pb), ptr(count), capacity,
                                     ptr(rows), n, ptr(needy), split);
      dispatch::candidate_pairs_gram(cuda_sim::Launcher{}, dtype_code<T>(), ptr(g_some), 1, ns,
                                     ptr(nrm), gerr, ptr(s2), ptr(rad), ptr(out), n, c0, c1,
                                     0.2, 0.01, ptr(pa), ptr(pb), ptr(count), capacity,
                                     ptr(some), ns, ptr(needy_some), split);
    }
  }
}

// Clusters of sizes 1..5 and two of 50 and 60 tokens; pairs k < min(count, capacity).
template <typename T>
void averages(I64 dim, I64 count, I64 capacity) {
  std::vector<I64> sizes, offsets;
  I64 ntok = 0;
  for (I64 c = 0; c < 42; ++c) {
    sizes.push_back(c == 40 ? 50 : c == 41 ? 60 : 1 + c % 5);
    offsets.push_back(ntok);
    ntok += sizes.back();
  }
  const I64 n = static_cast<I64>(sizes.size());
  auto x = uniform<T>(static_cast<std::size_t>(ntok * dim), -1, 1);
  std::vector<std::int32_t> pa(capacity), pb(capacity);
  for (I64 k = 0; k < capacity; ++k) {
    pa[k] = static_cast<std::int32_t>(k % 5 == 0 ? 41 : k % n);
    pb[k] = static_cast<std::int32_t>(k % 5 == 0 ? 40 : (k * 7 + 1) % n);
    if (pa[k] == pb[k]) pb[k] = (pb[k] + 1) % n;
  }
  std::vector<I64> cnt{count};
  std::vector<T> val(capacity);
  // the same buffer as rows (ntok, dim) and as columns (dim, ntok)
  for (const auto& [ts, cs] : {std::pair<I64, I64>{dim, 1}, std::pair<I64, I64>{1, ntok}}) {
    dispatch::pair_average(cuda_sim::Launcher{}, dtype_code<T>(), ptr(x), dim, ts, cs,
                           ptr(offsets), ptr(sizes), ptr(pa), ptr(pb), ptr(cnt), capacity,
                           ptr(val));
    std::vector<double> val64(capacity);  // float64 averages (the parts of a large pair)
    dispatch::pair_average(cuda_sim::Launcher{}, dtype_code<T>(), ptr(x), dim, ts, cs,
                           ptr(offsets), ptr(sizes), ptr(pa), ptr(pb), ptr(cnt), capacity,
                           ptr(val64), true);
    const I64 m = 30, ld = m + 2;  // the first 30 clusters
    std::vector<T> out(static_cast<std::size_t>((m - 1) * ld + m));
    std::vector<I64> nn(m);
    std::vector<T> nnd(m);
    dispatch::cluster_matrix(cuda_sim::Launcher{}, dtype_code<T>(), ptr(x), dim, ts, cs,
                             ptr(offsets), ptr(sizes), m, ptr(out), ld, ptr(nn), ptr(nnd));
  }
}

template <typename T>
void all_kernels() {
  for (I64 n : {1, 2, 3, 255, 256, 257, 300}) pairwise<T>(n, 8, 0);
  for (int metric = 1; metric < 3; ++metric) pairwise<T>(3, 5, metric);
  for (I64 n_old : {2, 3, 40, 400}) {
    for (int mode = 0; mode < 3; ++mode) {
      if (mode > 0 && n_old > 40) continue;  // the modes differ in arithmetic only
      merge<T>(n_old, mode, 0, 1);  // all rows
      merge<T>(n_old, mode, 2, 3);  // the last third
      merge<T>(n_old, mode, 0, 1, true);  // the count read on the device
    }
  }
  for (I64 n : {1, 2, 3, 511, 512, 513, 1030}) {
    round_scan<T>(n, 0, false, 0, true);
    round_scan<T>(n, n / 2, true, 0, true);
    round_scan<T>(n, n / 2, true, 4, false);
    round_scan<T>(n, n / 2, true, 0, true, true);  // chained: n and m from the device
    round_scan<T>(n, n / 2, true, 0, true, true, 2);  // after the last round
  }
  for (int split : {0, 1, 8}) {
    for (I64 dim : {1, 8, 20}) centroid_scans<T>(split == 1 ? 300 : 45, dim, split);
  }
  centroid_scans<T>(1, 3, 0);
  centroid_scans<T>(33, 16, 2);
  for (I64 dim : {1, 7}) {
    averages<T>(dim, 20, 20);
    averages<T>(dim, 30, 12);
  }
}

}  // namespace

int main() {
  try {
    all_kernels<float>();
    all_kernels<double>();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "executor error: %s\n", e.what());
    return 2;
  }
  std::puts("ok");
  return 0;
}
