// Capacity-constrained assignment of points to centers (the assignment step of balanced
// k-means): minimise sum_i |x_i - c_{l(i)}|^2 subject to |{i : l(i) = j}| = cap_j.
//
// Algorithm: forward auction with epsilon-scaling for the transportation problem with unit
// supplies [Bertsekas 1988, "The auction algorithm: a distributed relaxation method for
// the assignment problem", Annals of OR 14; Bertsekas & Castanon 1989, "The auction
// algorithm for the transportation problem", Annals of OR 20].  Centers are the objects,
// each holding up to cap_j points; a full center's price is the lowest bid it holds.
// Every point bids on its best center (value -|x - c|^2 - price) by the margin over its
// second best plus eps, and the center evicts its lowest bid when full.  At the end every
// point is within eps of its best value, so the total cost is within N * eps of the
// optimum (duality with the center prices).  See balanced_assign_cpu.cpp for the candidate
// lists that keep a bid O(m) instead of O(k).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace dcpe {

// The candidate lists are made from float32 products (balanced_assign_cpu.cpp) from this
// many dimensions and centers on, unless DCPE_CPU_PRODUCTS=0.
constexpr int64_t kAuctionProductMinD = 64, kAuctionProductMinK = 1024;

// Candidate lists kept from one call for the next, on the same points with centers that
// moved (the steps of balanced k-means).  Every list keeps its ids; their distances are
// computed again for the new centers, and its bound (the best value a center outside it
// can have) is widened by how far the centers moved (balanced_assign_cpu.cpp).
struct CarriedLists {
  std::vector<double> centers;   // k x d: the centers the lists were made for
  std::vector<double> prices;    // k: the prices at which the bounds hold
  std::vector<int64_t> offsets;  // n + 1: point i's list is ids[offsets[i], offsets[i + 1])
  std::vector<int32_t> ids;
  std::vector<double> bound;     // n
  std::vector<double> nearest;   // n: at most the squared distance to the nearest center
};

struct AuctionOptions {
  // Final eps relative to the mean squared distance of a point to its nearest center:
  // the cost is then at most (1 + rel_eps) times the optimum.
  double rel_eps = 1e-6;
  double eps_factor = 8.0;    // eps-scaling: eps is divided by this between phases
  int64_t n_candidates = 32;  // centers kept per point (more are scanned when needed)
  // Warm start: labels holds an assignment that fills every center exactly (e.g. the
  // previous step's); the first phase keeps the points that satisfy eps-CS at the given
  // prices and starts from the typical eps-CS violation of the points that must move (at
  // most the cold start's eps; balanced_assign_cpu.cpp).  start_rel_eps > 0 sets the first
  // eps instead, relative to the mean squared distance to the nearest center.
  bool warm_labels = false;
  double start_rel_eps = 0.0;
  int num_threads = 0;        // 0: OpenMP default
  std::function<bool()> interrupted;  // polled from the calling thread
  // Lists of a previous call to start from (used when they fit this problem and its start
  // prices are at least theirs; otherwise every list is made anew), and where to leave
  // this call's lists for the next.  Either may be null.
  const CarriedLists* carry_in = nullptr;
  CarriedLists* carry_out = nullptr;
};

struct AuctionStats {
  int64_t bids = 0;       // bids placed, all phases
  int64_t refreshes = 0;  // full scans of all centers for one point (after the first)
  int64_t phases = 0;
  int64_t carried = 0;    // lists taken from carry_in (the others were made anew)
  double eps = 0.0;       // final eps: cost <= optimum + n * eps
};

// x: (n, d) row-major, c: (k, d) row-major, capacity: (k,) >= 0 summing to n.
// prices: (k,) in/out, >= 0: zeros, or a previous solution's prices as a start (eps-scaling
// still starts from a coarse eps, so a start far from the answer costs no price war).
// labels: (n,) out (and in, with opt.warm_labels).
template <typename T>
AuctionStats balanced_assign(const T* x, int64_t n, int64_t d, const T* c, int64_t k,
                             const int64_t* capacity, double* prices, int64_t* labels,
                             const AuctionOptions& opt);

}  // namespace dcpe
