// The nearest-center search and the k-means++ seeding by exhaustive scans (see
// nearest_cpu.h for what they compute): nearest_cpu.cpp calls them past the dimensions
// where its kd-tree and its groups of points prune, and with few centers.
#pragma once

#include <cstdint>
#include <functional>

namespace dcpe {

// out[i]: the first nearest usable center of point i (first: the answer when every
// distance overflows to +inf)
template <typename T>
void nearest_center_scan(const T* x, int64_t n, int64_t d, const T* c, int64_t k,
                         const uint8_t* mask, int64_t first, int64_t* out, int threads,
                         const std::function<bool()>& interrupted);

// out[i] for the m points x: the answer of nearest_center_scan, from approx (m x k,
// row-major, float or double): |c_j|^2 - 2 x_i.c_j up to a constant per row (+inf for a
// skipped center), within slack[i] of the scan's |x_i - c_j|^2 less that constant for
// every usable center j; centers whose approx exceeds the row's smallest by more than
// 2 slack[i] are not computed
template <typename T, typename A>
void nearest_center_refine(const T* x, int64_t m, int64_t d, const T* c, int64_t k,
                           const A* approx, const double* slack, int64_t first,
                           int64_t* out, int threads, const std::function<bool()>& interrupted);

// out[i] for the m points x: of the r centers cand[i * r .. i * r + r) (indices into c, any
// order), the one at the smallest distance as nearest_center_scan computes it, ties to the
// smaller index; out_dist[i]: that distance
template <typename T>
void nearest_center_among(const T* x, int64_t m, int64_t d, const T* c, const int64_t* cand,
                          int64_t r, int64_t* out, double* out_dist, int threads,
                          const std::function<bool()>& interrupted);

// the seeding of kmeanspp_seeds, every candidate's potential summed over all points
template <typename T>
void kmeanspp_seeds_scan(const T* x, int64_t n, int64_t d, int64_t k, int64_t first,
                         const double* u, int64_t trials, int64_t* idx, int threads,
                         const std::function<bool()>& interrupted);

}  // namespace dcpe
