// Nearest center of every point (the assignment step of Lloyd's k-means), exactly: squared
// distances from coordinate differences in double precision (no |x|^2 + |c|^2 - 2 x.c
// cancellation), ties to the smallest center index.
#pragma once

#include <cstdint>
#include <functional>

namespace dcpe {

// x: (n, d) row-major, c: (k, d) row-major; mask: (k,) or nullptr (centers with mask 0 are
// skipped; at least one must be usable); out: (n,) center indices.
template <typename T>
void nearest_center(const T* x, int64_t n, int64_t d, const T* c, int64_t k,
                    const uint8_t* mask, int64_t* out, int num_threads,
                    const std::function<bool()>& interrupted);

}  // namespace dcpe
