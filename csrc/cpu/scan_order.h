// An order of the tokens in which near tokens stand near each other: the order in which
// the linear engine's first search, the one that fills the neighbour lists, scans them
// (LinearEngine::run(), linear_linkage.cpp).
//
// Why. That search keeps, for every token, its K nearest tokens so far, and computes the
// exact distance of every token the scan meets within the K-th of them. Met in an order
// unrelated to the geometry, the j-th token is one of the K nearest of the first j with
// probability K / j, so a token computes about K (1 + ln(N / K)) exact distances
// [the expected number of records of a random sequence; Knuth, TAOCP Vol. 3, Sec. 5.1.1],
// about 2,000 at N = 262,144 with K = 256, and most of them read a row from memory. If
// every group of searching tokens is near in this order, and its scan starts at its own
// cell, the K nearest so far are near from the start, and fewer later tokens get in.
// What the search finds does not depend on the order (it visits every token within its
// final radius in any order, and keeps the K nearest by (distance, index)); only its
// work does.
//
// How. Cells of Lloyd's k-means [Lloyd 1982, "Least squares quantization in PCM"] with
// C = N / kOrderCell centres: started from the tokens at an even stride, kOrderIters
// iterations on an even subsample of kOrderSample tokens a centre, then every token in the
// cell of its nearest centre (float32 dot products, ties to the smaller centre). The
// cells follow a greedy chain (the first centre, then the nearest centre not yet chained
// to the last one). The tokens of a cell keep their index order or, from 13 to 16
// dimensions, follow a kd split whose cuts lie on the grid of kOrderBlock positions
// (split_blocks()), so that each block of the scan holds near tokens: there the first
// search skips the blocks whose box is beyond its queries (linear_linkage.cpp,
// KdTree::for_blocks()). A token's start is the position of its cell's first token,
// rounded down to a block of kOrderBlock.
// Everything here is float32 arithmetic in a fixed order (and the split's comparisons of
// coordinates, ties to the smaller token, one cell per task), so the order does not
// depend on the number of threads. On the sample codebook's generator at d = 256 (K = 128 at
// 65,536 tokens, 256 at 262,144), a simulation of the search counted 510 exact distances
// a token instead of 920 at 65,536, and 1,140 instead of 2,020 at 262,144.

#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace dcpe {

constexpr int64_t kOrderCell = 256;    // tokens a cell, on average
constexpr int64_t kOrderSample = 64;   // tokens a centre in the k-means iterations
constexpr int kOrderIters = 3;
constexpr int64_t kOrderBlock = 16;    // the scan's blocks of points (its AMX tiles)
constexpr int kOrderLanes = 16;        // centres a vector
constexpr int64_t kOrderRows = 4096;   // rows converted to float32 at a time

struct ScanOrder {
  std::vector<int32_t> order;  // the tokens, cell by cell
  std::vector<int32_t> start;  // per token: where its group's scan starts in `order`
};

// The bytes scan_order() holds at its peak beside its result (8 bytes a token).
inline std::size_t scan_order_bytes(int64_t n, int64_t d) {
  const std::size_t c = static_cast<std::size_t>(std::max<int64_t>(n / kOrderCell, 1));
  const std::size_t cp = (c + kOrderLanes - 1) / kOrderLanes * kOrderLanes;
  const std::size_t un = static_cast<std::size_t>(n);
  const std::size_t s = std::min<std::size_t>(un, c * kOrderSample);
  const std::size_t rows = std::max(s, std::min<std::size_t>(un, kOrderRows));
  // centres (float32, transposed and row-major), their sums (float64), norms, counts and
  // chain; the subsample's rows, or later a block of rows (float32); every token's cell
  return cp * static_cast<std::size_t>(d) * (4 + 4 + 8) + cp * 40 +
         rows * static_cast<std::size_t>(d) * 4 + un * 4;
}

namespace scan_order_detail {

typedef float Lanes __attribute__((vector_size(kOrderLanes * sizeof(float))));

// The nearest centre of each of the n rows (float32, row-major, d columns): the smallest
// ||c||^2 - 2 <x, c> over the centres, the first on ties. ct: the centres transposed in
// groups of kOrderLanes (coordinate k of centre 16 b + l at ct[(b d + k) 16 + l]), c2
// their squared norms (+inf past the last one).
inline void nearest_centres(const float* rows, int64_t n, int64_t d, const float* ct,
                            const float* c2, int64_t groups, int threads, int32_t* out) {
  constexpr int P = 4;  // rows at a time
#pragma omp parallel for num_threads(threads) schedule(static) if (n * groups * d > (1 << 22))
  for (int64_t i0 = 0; i0 < n; i0 += P) {
    const int np = static_cast<int>(std::min<int64_t>(P, n - i0));
    const float* x[P];
    for (int u = 0; u < P; ++u) x[u] = rows + (i0 + std::min(u, np - 1)) * d;
    float best[P];
    int32_t arg[P];
    for (int u = 0; u < P; ++u) {
      best[u] = std::numeric_limits<float>::infinity();
      arg[u] = 0;
    }
    for (int64_t b = 0; b < groups; ++b) {
      const float* c = ct + b * d * kOrderLanes;
      Lanes acc[P];
      for (int u = 0; u < P; ++u) acc[u] = Lanes{};
      for (int64_t k = 0; k < d; ++k) {
        Lanes ck;  // (a vector's loads from memory that need not be aligned to it)
        std::memcpy(&ck, c + k * kOrderLanes, sizeof ck);
        for (int u = 0; u < P; ++u) acc[u] += ck * x[u][k];
      }
      Lanes norm;
      std::memcpy(&norm, c2 + b * kOrderLanes, sizeof norm);
      for (int u = 0; u < P; ++u) {
        const Lanes s = norm - (acc[u] + acc[u]);
        for (int l = 0; l < kOrderLanes; ++l) {
          if (s[l] < best[u]) {
            best[u] = s[l];
            arg[u] = static_cast<int32_t>(b * kOrderLanes + l);
          }
        }
      }
    }
    for (int u = 0; u < np; ++u) out[i0 + u] = arg[u];
  }
}

// The tokens of order[lo .. hi-1] (a cell) in the order of a kd split whose cuts lie on
// the grid of kOrderBlock positions: a range that covers more than one block is cut at the
// grid point nearest its middle, the tokens below the median of its widest coordinate
// first (ties: the smaller token), and each side again, so that each block of the scan
// holds near tokens, which KdTree's block boxes bound (linear_linkage.cpp).
template <typename T>
void split_blocks(const T* x, int64_t d, int32_t* order, int64_t lo, int64_t hi) {
  if (hi - lo < 2 || lo / kOrderBlock == (hi - 1) / kOrderBlock) return;
  int64_t dim = 0;
  double spread = -1.0;
  for (int64_t k = 0; k < d; ++k) {
    double a = std::numeric_limits<double>::infinity(), b = -a;
    for (int64_t i = lo; i < hi; ++i) {
      const double v = double(x[int64_t(order[i]) * d + k]);
      a = std::min(a, v);
      b = std::max(b, v);
    }
    if (b - a > spread) {
      spread = b - a;
      dim = k;
    }
  }
  int64_t mid = ((lo + hi) / 2 + kOrderBlock / 2) / kOrderBlock * kOrderBlock;
  if (mid <= lo) mid = (lo / kOrderBlock + 1) * kOrderBlock;
  if (mid >= hi) mid = (hi - 1) / kOrderBlock * kOrderBlock;
  std::nth_element(order + lo, order + mid, order + hi, [x, d, dim](int32_t u, int32_t v) {
    const double a = double(x[int64_t(u) * d + dim]), b = double(x[int64_t(v) * d + dim]);
    return a < b || (a == b && u < v);
  });
  split_blocks(x, d, order, lo, mid);
  split_blocks(x, d, order, mid, hi);
}

}  // namespace scan_order_detail

// The order above for the n rows of x (d columns), with the kd split inside the cells if
// `split`. Fewer than 2 kOrderCell rows: their index order, every scan from the start.
// poll() is called between the steps (outside the threads' regions), so that it may throw
// to stop the run.
template <typename T, typename Poll>
ScanOrder scan_order(const T* x, int64_t n, int64_t d, int threads, bool split,
                     Poll&& poll) {
  using scan_order_detail::Lanes;
  ScanOrder r;
  r.order.resize(static_cast<std::size_t>(n));
  r.start.assign(static_cast<std::size_t>(n), 0);
  const int64_t c = n / kOrderCell;
  if (c < 2) {
    for (int64_t i = 0; i < n; ++i) r.order[i] = static_cast<int32_t>(i);
    return r;
  }
  const int64_t groups = (c + kOrderLanes - 1) / kOrderLanes, cp = groups * kOrderLanes;
  const std::size_t ud = static_cast<std::size_t>(d);
  // the subsample: tokens at an even stride, as float32 rows
  const int64_t s = std::min<int64_t>(n, c * kOrderSample);
  std::vector<float> sample(static_cast<std::size_t>(s) * ud);
  for (int64_t i = 0; i < s; ++i) {
    const int64_t t = i * n / s;
    for (std::size_t k = 0; k < ud; ++k) sample[i * ud + k] = static_cast<float>(x[t * d + k]);
  }
  // centres: the subsample's rows at an even stride
  std::vector<float> cent(static_cast<std::size_t>(cp) * ud, 0.0f);
  for (int64_t j = 0; j < c; ++j) {
    std::memcpy(&cent[j * ud], &sample[(j * s / c) * ud], ud * sizeof(float));
  }
  std::vector<float> ct(static_cast<std::size_t>(cp) * ud), c2(static_cast<std::size_t>(cp));
  auto transpose = [&]() {
    for (int64_t j = 0; j < cp; ++j) {
      double q = 0.0;
      for (std::size_t k = 0; k < ud; ++k) {
        const float v = cent[j * ud + k];
        ct[((j / kOrderLanes) * ud + k) * kOrderLanes + j % kOrderLanes] = v;
        q += double(v) * double(v);
      }
      c2[j] = j < c ? static_cast<float>(q) : std::numeric_limits<float>::infinity();
    }
  };
  std::vector<int32_t> cell(static_cast<std::size_t>(n));
  std::vector<double> sum(static_cast<std::size_t>(cp) * ud);
  std::vector<int64_t> count(static_cast<std::size_t>(cp));
  for (int it = 0; it < kOrderIters; ++it) {
    poll();
    transpose();
    scan_order_detail::nearest_centres(sample.data(), s, d, ct.data(), c2.data(), groups,
                                       threads, cell.data());
    std::fill(sum.begin(), sum.end(), 0.0);
    std::fill(count.begin(), count.end(), 0);
    for (int64_t i = 0; i < s; ++i) {
      const std::size_t j = static_cast<std::size_t>(cell[i]);
      ++count[j];
      for (std::size_t k = 0; k < ud; ++k) sum[j * ud + k] += sample[i * ud + k];
    }
    for (int64_t j = 0; j < c; ++j) {  // an empty cell keeps its centre
      if (count[j] == 0) continue;
      for (std::size_t k = 0; k < ud; ++k) {
        cent[j * ud + k] = static_cast<float>(sum[j * ud + k] / double(count[j]));
      }
    }
  }
  sample.clear();
  sample.shrink_to_fit();
  // every token's cell, a block of rows at a time
  transpose();
  {
    const int64_t kRows = std::min<int64_t>(kOrderRows, n);
    std::vector<float> rows(static_cast<std::size_t>(kRows) * ud);
    for (int64_t i0 = 0; i0 < n; i0 += kRows) {
      poll();
      const int64_t m = std::min(kRows, n - i0);
      for (int64_t i = 0; i < m; ++i) {
        for (std::size_t k = 0; k < ud; ++k) {
          rows[i * ud + k] = static_cast<float>(x[(i0 + i) * d + k]);
        }
      }
      scan_order_detail::nearest_centres(rows.data(), m, d, ct.data(), c2.data(), groups,
                                         threads, &cell[i0]);
    }
  }
  // the chain of centres: from centre 0, each time the nearest one not yet chained
  std::vector<int32_t> chain;
  chain.reserve(static_cast<std::size_t>(c));
  std::vector<uint8_t> done(static_cast<std::size_t>(c), 0);
  int64_t last = 0;
  done[0] = 1;
  chain.push_back(0);
  for (int64_t step = 1; step < c; ++step) {
    if (step % 256 == 0) poll();
    float best = std::numeric_limits<float>::infinity();
    int64_t arg = -1;
    for (int64_t j = 0; j < c; ++j) {
      if (done[j]) continue;
      float q = 0.0f;
      for (std::size_t k = 0; k < ud; ++k) {
        const float t = cent[j * ud + k] - cent[last * ud + k];
        q += t * t;
      }
      if (arg < 0 || q < best) {
        best = q;
        arg = j;
      }
    }
    done[arg] = 1;
    chain.push_back(static_cast<int32_t>(arg));
    last = arg;
  }
  // the tokens cell by cell (a counting sort: index order within a cell), and their starts
  std::fill(count.begin(), count.end(), 0);
  for (int64_t i = 0; i < n; ++i) ++count[cell[i]];
  std::vector<int64_t> at(static_cast<std::size_t>(c)), begin(static_cast<std::size_t>(c));
  int64_t p = 0;
  for (const int32_t j : chain) {
    begin[j] = at[j] = p;
    p += count[j];
  }
  for (int64_t i = 0; i < n; ++i) {
    const int32_t j = cell[i];
    r.start[i] = static_cast<int32_t>(begin[j] / kOrderBlock * kOrderBlock);
    r.order[at[j]++] = static_cast<int32_t>(i);
  }
  // inside each cell, the tokens in the order of a kd split on the block grid
  if (!split) return r;
  poll();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
  for (int64_t j = 0; j < c; ++j) {
    scan_order_detail::split_blocks(x, d, r.order.data(), begin[j], begin[j] + count[j]);
  }
  return r;
}

}  // namespace dcpe
