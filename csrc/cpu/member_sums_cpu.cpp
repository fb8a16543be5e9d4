// Sums of the distances from every point to the members of its cluster (see
// member_sums_cpu.h): every pair within each cluster, computed once, exhaustively.
//
// A cluster's rows are cut into blocks of kRows; a task takes one block, rows [r0, r1),
// and runs over the members from r0 to the cluster's end in chunks.  A chunk is packed into
// panels of kLanes members stored coordinate-major ([panel][coordinate][lane]), so that a
// panel is one contiguous run.  A block of 4 rows by one panel accumulates squared
// coordinate differences in double, in registers, over the coordinates in order; their
// square roots then go
//   - to the rows' lane sums: lane l of row i sums, in increasing j, the distances to the
//     members j >= r0 with (j - start) % kLanes == l; the lanes are added in a fixed order
//     at the end;
//   - for the members past the block (j >= r1), to their column sums, added row by row in
//     increasing i: the task's part of those members' sums over the rows above them.
// The column sums of a batch of tasks wait in slots, one per task, and are then added to
// each member's running sum in the order of the blocks (one pass, on one thread).  A
// point's sum is its lanes' sum plus its columns' sum over the blocks above it.  Every
// sum's order is thus fixed by the data, not by the tasks, the batches or the threads: the
// result is the same for any thread count.

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
constexpr double kBatchWork = 1 << 30;    // pair-coordinates between two polls of Ctrl-C, at least
// column sums held between two reductions: room for 4 tasks a thread, within these bounds
// (a task larger than the upper bound runs in a batch of its own)
constexpr int64_t kSlotDoubles = 1 << 20;   // 8 MiB
constexpr int64_t kSlotCap = int64_t(1) << 25;  // 256 MiB

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

// s[2r + h][l] = |xi[r] - member 4h + l of the panel|^2, coordinates summed in order
template <int D>
inline void block4(const double* const xi[4], const double* panel, int64_t d, Quad s[8]) {
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
  s[0] = a0;
  s[1] = b0;
  s[2] = a1;
  s[3] = b1;
  s[4] = a2;
  s[5] = b2;
  s[6] = a3;
  s[7] = b3;
}

inline Quad sqrt4(Quad v) {
  return Quad{std::sqrt(v[0]), std::sqrt(v[1]), std::sqrt(v[2]), std::sqrt(v[3])};
}

// dst[0..3] += v, unaligned
inline void add4(double* dst, Quad v) {
  Quad a;
  __builtin_memcpy(&a, dst, sizeof(a));
  a += v;
  __builtin_memcpy(dst, &a, sizeof(a));
}

template <int D>
void run_task(const double* x, int64_t d, const Task& task, double* packed, double* lanes,
              double* colpart, double* slot, double* out) {
  const int64_t rows = task.r1 - task.r0, chunk = chunk_members(d);
  std::fill(lanes, lanes + rows * kLanes, 0.0);
  for (int64_t c0 = task.r0; c0 < task.end; c0 += chunk) {
    const int64_t c1 = std::min(task.end, c0 + chunk);
    const int64_t panels = (c1 - c0 + kLanes - 1) / kLanes;
    for (int64_t p = 0; p < panels; ++p) {  // pad with zeros; padded lanes are dropped
      double* dst = packed + p * d * kLanes;
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t j = c0 + p * kLanes + l;
        for (int64_t t = 0; t < d; ++t) dst[t * kLanes + l] = j < c1 ? x[j * d + t] : 0.0;
      }
    }
    std::fill(colpart, colpart + panels * kLanes, 0.0);
    for (int64_t i0 = task.r0; i0 < task.r1; i0 += 4) {
      const double* xi[4];  // a short last block repeats its last row
      for (int r = 0; r < 4; ++r) xi[r] = x + std::min(i0 + r, task.r1 - 1) * d;
      const int live = static_cast<int>(std::min<int64_t>(4, task.r1 - i0));
      double* ln = lanes + (i0 - task.r0) * kLanes;
      for (int64_t p = 0; p < panels; ++p) {
        Quad s[8];  // rows r, lanes 4h + l: s[2r + h][l]
        block4<D>(xi, packed + p * d * kLanes, d, s);
        const int64_t valid = std::min(kLanes, c1 - (c0 + p * kLanes));
        for (int q = 0; q < 8; ++q) s[q] = sqrt4(s[q]);
        if (live < 4 || valid < kLanes) {  // 0 for a repeated row and a padded lane
          for (int q = 0; q < 8; ++q) {
            for (int l = 0; l < 4; ++l) {
              if (q / 2 >= live || (q % 2) * 4 + l >= valid) s[q][l] = 0.0;
            }
          }
        }
        for (int q = 0; q < 8; ++q) add4(ln + (q / 2) * kLanes + (q % 2) * 4, s[q]);
        if (c0 + p * kLanes >= task.r1) {  // past the task's own rows: their columns' sums
          double* cp = colpart + p * kLanes;
          for (int q = 0; q < 8; ++q) add4(cp + (q % 2) * 4, s[q]);
        }
      }
    }
    for (int64_t j = std::max(c0, task.r1); j < c1; ++j) slot[j - task.r1] = colpart[j - c0];
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
  // the largest clusters first, so that the dynamic schedule ends on small tasks; a
  // cluster's tasks stay in the order of their rows, which the column sums are added in
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) {
    return a.end - a.start > b.end - b.start;
  });
  const int64_t count = static_cast<int64_t>(tasks.size());
  const int64_t chunk = chunk_members(d);
  int64_t widest = 0;  // the longest row of column sums a task leaves
  for (const Task& t : tasks) widest = std::max(widest, t.end - t.r1);
  const int64_t slot_limit =
      std::max<int64_t>(kSlotDoubles, std::min<int64_t>(4 * threads * widest, kSlotCap));
  std::vector<double> colsum(static_cast<size_t>(n), 0.0);  // from the rows above, in order
  std::vector<double> slots;
  std::vector<int64_t> at;
  with_dimension(d, [&](auto D) {
    int64_t b0 = 0;
    while (b0 < count) {
      if (interrupted && interrupted()) throw Interrupted();
      int64_t b1 = b0, used = 0;
      double work = 0.0;
      at.clear();
      // enough work between two polls, and at least 4 tasks a thread (a task of a large
      // cluster is a batch's worth of work by itself)
      while (b1 < count && (work < kBatchWork || b1 - b0 < 4 * threads)) {
        const Task& t = tasks[static_cast<size_t>(b1)];
        if (b1 > b0 && used + (t.end - t.r1) > slot_limit) break;
        at.push_back(used);
        used += t.end - t.r1;
        work += static_cast<double>(t.r1 - t.r0) * static_cast<double>(t.end - t.r0) *
                static_cast<double>(d);
        ++b1;
      }
      slots.resize(static_cast<size_t>(std::max<int64_t>(used, 1)));
#pragma omp parallel num_threads(threads)
      {
        std::vector<double> packed(static_cast<size_t>(chunk * d));
        std::vector<double> lanes(static_cast<size_t>(kRows * kLanes));
        std::vector<double> colpart(static_cast<size_t>(chunk));
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = b0; t < b1; ++t) {
          run_task<D.value>(x, d, tasks[static_cast<size_t>(t)], packed.data(), lanes.data(),
                            colpart.data(), slots.data() + at[static_cast<size_t>(t - b0)], out);
        }
      }
      for (int64_t t = b0; t < b1; ++t) {  // in the order of the rows, whatever the schedule
        const Task& task = tasks[static_cast<size_t>(t)];
        const double* slot = slots.data() + at[static_cast<size_t>(t - b0)];
        for (int64_t j = task.r1; j < task.end; ++j) colsum[j] += slot[j - task.r1];
      }
      b0 = b1;
    }
  });
  for (int64_t i = 0; i < n; ++i) out[i] += colsum[i];
}

}  // namespace dcpe
