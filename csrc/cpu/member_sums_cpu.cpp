// Sums of the distances from every point to the members of its cluster (see
// member_sums_cpu.h): all ordered pairs within each cluster, computed exhaustively.
//
// A task takes up to kRows rows of one cluster and runs over all the cluster's members in
// chunks.  A chunk is packed into panels of kLanes members stored coordinate-major
// ([panel][coordinate][lane]), so that a panel is one contiguous run.  A block of 4 rows by
// one panel accumulates squared coordinate differences in double, in registers, over the
// coordinates in order; the square roots are then added to the rows' lane sums.  Lane l of
// row i sums, in increasing j, the distances to the members j with (j - start) % kLanes
// == l, and the lanes are added in a fixed order at the end.  Every sum's order is thus
// fixed by the data, not by the tasks or the threads: the result is the same for any
// thread count.
//
// Both (i, j) and (j, i) are computed.  Computing each pair once would give a tile's
// column sums to rows that another task owns, and so make their order depend on the
// schedule.

#include "member_sums_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../macros.h"
#include "block_distances.h"
#include "linkage_cpu.h"

namespace dcpe {
namespace {

constexpr int64_t kLanes = 8;             // members per panel
constexpr int64_t kRows = 64;             // rows per task (a multiple of 4)
constexpr int64_t kChunkDoubles = 16384;  // packed members per chunk times d (128 KiB)
constexpr double kBatchWork = 1 << 30;    // pair-coordinates between two polls of Ctrl-C

struct Task {
  int64_t start, end;  // the cluster's rows
  int64_t r0, r1;      // the task's rows
};

// members per chunk: a multiple of kLanes, at least one panel
inline int64_t chunk_members(int64_t d) {
  return std::max<int64_t>(kLanes, kChunkDoubles / (d * kLanes) * kLanes);
}

// four doubles: one AVX2 register (a panel's kLanes = 8 lanes are two of them; a vector
// of 8 would be split through memory where AVX-512 is missing)
typedef double Quad __attribute__((vector_size(4 * sizeof(double))));

// s[r][l] = |xi[r] - member l of the panel|^2, coordinates summed in order
template <int D>
inline void block4(const double* const xi[4], const double* panel, int64_t d,
                   double s[4][kLanes]) {
  static_assert(kLanes == 8, "a panel is two Quads");
  Quad a0 = {}, b0 = {}, a1 = {}, b1 = {}, a2 = {}, b2 = {}, a3 = {}, b3 = {};
  const int64_t dd = D > 0 ? D : d;
  for (int64_t t = 0; t < dd; ++t) {
    Quad lo, hi;
    __builtin_memcpy(&lo, panel + t * kLanes, sizeof(lo));
    __builtin_memcpy(&hi, panel + t * kLanes + 4, sizeof(hi));
    const double x0 = xi[0][t], x1 = xi[1][t], x2 = xi[2][t], x3 = xi[3][t];
    const Quad e0 = x0 - lo, f0 = x0 - hi, e1 = x1 - lo, f1 = x1 - hi;
    const Quad e2 = x2 - lo, f2 = x2 - hi, e3 = x3 - lo, f3 = x3 - hi;
    a0 += e0 * e0;
    b0 += f0 * f0;
    a1 += e1 * e1;
    b1 += f1 * f1;
    a2 += e2 * e2;
    b2 += f2 * f2;
    a3 += e3 * e3;
    b3 += f3 * f3;
  }
  const Quad* const out[8] = {&a0, &b0, &a1, &b1, &a2, &b2, &a3, &b3};
  for (int q = 0; q < 8; ++q) __builtin_memcpy(&s[q / 2][(q % 2) * 4], out[q], sizeof(Quad));
}

template <int D>
void run_task(const double* x, int64_t d, const Task& task, double* packed, double* lanes,
              double* out) {
  const int64_t rows = task.r1 - task.r0, chunk = chunk_members(d);
  std::fill(lanes, lanes + rows * kLanes, 0.0);
  for (int64_t c0 = task.start; c0 < task.end; c0 += chunk) {
    const int64_t c1 = std::min(task.end, c0 + chunk);
    const int64_t panels = (c1 - c0 + kLanes - 1) / kLanes;
    for (int64_t p = 0; p < panels; ++p) {  // pad with zeros; padded lanes are dropped
      double* dst = packed + p * d * kLanes;
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t j = c0 + p * kLanes + l;
        for (int64_t t = 0; t < d; ++t) dst[t * kLanes + l] = j < c1 ? x[j * d + t] : 0.0;
      }
    }
    for (int64_t i0 = task.r0; i0 < task.r1; i0 += 4) {
      const double* xi[4];  // a short last block repeats its last row
      for (int r = 0; r < 4; ++r) xi[r] = x + std::min(i0 + r, task.r1 - 1) * d;
      const int live = static_cast<int>(std::min<int64_t>(4, task.r1 - i0));
      double* ln = lanes + (i0 - task.r0) * kLanes;
      for (int64_t p = 0; p < panels; ++p) {
        double s[4][kLanes];
        block4<D>(xi, packed + p * d * kLanes, d, s);
        const int64_t valid = std::min(kLanes, c1 - (c0 + p * kLanes));
        if (live == 4 && valid == kLanes) {
          for (int r = 0; r < 4; ++r) {
            for (int l = 0; l < kLanes; ++l) ln[r * kLanes + l] += std::sqrt(s[r][l]);
          }
        } else {
          for (int r = 0; r < live; ++r) {
            for (int l = 0; l < valid; ++l) ln[r * kLanes + l] += std::sqrt(s[r][l]);
          }
        }
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    const double* ln = lanes + i * kLanes;
    out[task.r0 + i] = ((ln[0] + ln[1]) + (ln[2] + ln[3])) + ((ln[4] + ln[5]) + (ln[6] + ln[7]));
  }
}

}  // namespace

void member_distance_sums(const double* x, int64_t n, int64_t d, const int64_t* offsets,
                          int64_t k, double* out, int num_threads,
                          const std::function<bool()>& interrupted) {
  const int threads = resolve_threads(num_threads);
  std::fill(out, out + n, 0.0);  // singletons keep 0
  std::vector<Task> tasks;
  for (int64_t c = 0; c < k; ++c) {
    const int64_t s = offsets[c], e = offsets[c + 1];
    if (e - s < 2) continue;
    for (int64_t r0 = s; r0 < e; r0 += kRows) tasks.push_back({s, e, r0, std::min(e, r0 + kRows)});
  }
  // the largest clusters first, so that the dynamic schedule ends on small tasks
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) {
    return a.end - a.start > b.end - b.start;
  });
  const int64_t count = static_cast<int64_t>(tasks.size());
  const int64_t packed_size = chunk_members(d) * d;
  with_dimension(d, [&](auto D) {
    int64_t b0 = 0;
    while (b0 < count) {
      if (interrupted && interrupted()) throw Interrupted();
      int64_t b1 = b0;
      double work = 0.0;
      while (b1 < count && work < kBatchWork) {
        const Task& t = tasks[static_cast<size_t>(b1++)];
        work += static_cast<double>(t.r1 - t.r0) * static_cast<double>(t.end - t.start) *
                static_cast<double>(d);
      }
#pragma omp parallel num_threads(threads)
      {
        std::vector<double> packed(static_cast<size_t>(packed_size));
        std::vector<double> lanes(static_cast<size_t>(kRows * kLanes));
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = b0; t < b1; ++t) {
          run_task<D.value>(x, d, tasks[static_cast<size_t>(t)], packed.data(), lanes.data(),
                            out);
        }
      }
      b0 = b1;
    }
  });
}

}  // namespace dcpe
