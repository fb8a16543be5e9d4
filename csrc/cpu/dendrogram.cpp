// From merges to SciPy's linkage matrix, a flat cut's bound on its height, and cutting a
// linkage matrix into k clusters.

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "cpu/linkage_cpu.h"
#include "macros.h"

namespace dcpe {

std::vector<double> merges_to_z(int64_t n, std::vector<Merge> merges) {
  // Greedy order: by order_key (for monotone linkages the height made monotone up the
  // tree, so a parent never precedes its children), ties in discovery order.
  std::stable_sort(merges.begin(), merges.end(),
                   [](const Merge& p, const Merge& q) { return p.order_key < q.order_key; });
  std::vector<int64_t> cur(n);
  std::iota(cur.begin(), cur.end(), int64_t(0));  // representative -> current cluster id
  std::vector<double> z(merges.size() * 4);
  for (std::size_t t = 0; t < merges.size(); ++t) {
    const Merge& m = merges[t];
    const int64_t ia = cur[m.a], ib = cur[m.b];
    z[4 * t + 0] = static_cast<double>(std::min(ia, ib));
    z[4 * t + 1] = static_cast<double>(std::max(ia, ib));
    z[4 * t + 2] = m.height;
    z[4 * t + 3] = static_cast<double>(m.size);
    cur[std::min(m.a, m.b)] = n + static_cast<int64_t>(t);
  }
  return z;
}

double cut_bound(const std::vector<Merge>& merges, int64_t need, double ulps, double eps,
                 std::vector<double>& keys) {
  if (need <= 0 || static_cast<int64_t>(merges.size()) < need) {
    return std::numeric_limits<double>::infinity();
  }
  keys.resize(merges.size());
  for (std::size_t t = 0; t < merges.size(); ++t) keys[t] = merges[t].order_key;
  std::nth_element(keys.begin(), keys.begin() + (need - 1), keys.end());
  const double u = keys[need - 1];
  return u + std::fabs(u) * ulps * eps;
}

std::vector<int64_t> cut_tree(const double* z, int64_t m, int64_t n, int64_t k) {
  DCPE_CHECK_ARG(n >= 1, "n", n, "need at least one observation");
  DCPE_CHECK_ARG(k >= 1 && k <= n, "n_clusters", k, str_cat("must be in [1, ", n, "]"));
  DCPE_CHECK_ARG(m >= 0 && m <= n - 1, "Z rows", m, str_cat("must be at most ", n - 1));
  const int64_t steps = std::min<int64_t>(m, n - k);
  std::vector<int64_t> parent(n + steps);
  std::iota(parent.begin(), parent.end(), int64_t(0));
  auto find = [&parent](int64_t v) {
    while (parent[v] != v) {
      parent[v] = parent[parent[v]];
      v = parent[v];
    }
    return v;
  };
  for (int64_t t = 0; t < steps; ++t) {
    const double fa = z[4 * t], fb = z[4 * t + 1];
    DCPE_CHECK(fa >= 0 && fb >= 0 && fa < double(n + t) && fb < double(n + t) && fa != fb,
               "Z row ", t, " refers to clusters ", fa, " and ", fb,
               ", which do not exist yet (not a valid linkage matrix)");
    const int64_t ra = find(static_cast<int64_t>(fa)), rb = find(static_cast<int64_t>(fb));
    DCPE_CHECK(ra != rb, "Z row ", t, " merges a cluster with itself");
    parent[ra] = n + t;
    parent[rb] = n + t;
  }
  std::vector<int64_t> root_label(n + steps, -1);
  std::vector<int64_t> labels(n);
  int64_t next = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = find(i);
    if (root_label[r] < 0) root_label[r] = next++;
    labels[i] = root_label[r];
  }
  return labels;
}

}  // namespace dcpe
