// Dot products of points with a group of queries on Intel AMX tiles (bfloat16 in, float32
// accumulated), for the centroid scan of the linear engine above 12 dimensions (16 for the
// closed forms; linear_linkage.cpp, KdTree::scan_group()).
//
// The scan's test needs only a lower bound of each squared distance, ||q'||^2 + ||p'||^2 -
// 2 <q', p'> less a rigorous bound of its error, so the dot products may be coarse: with
// bfloat16 copies of the float32 copies (8 significant bits, round to nearest even) the
// product of a tile of 16 points with 16 queries is one TDPBF16PS per 32 coordinates
// [Intel Architecture Instruction Set Extensions Programming Reference, "Intel AMX";
// Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training", arXiv:1905.12322].
// The error bound of that estimate is KdTree::scan_points()'s, with 2^-7 S more for the
// two conversions (see the header of scan_group()).
//
// available() is true when the build has AMX-BF16 (-march=native on such a CPU), the
// kernel grants this process the tiles' state (arch_prctl ARCH_REQ_XCOMP_PERM; a CPU or
// virtual machine without AMX refuses) and DCPE_CPU_AMX is not "0"; otherwise the scan
// uses its float32 products (the same visits and values either way).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__) && defined(__x86_64__)
#define DCPE_HAVE_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define DCPE_HAVE_AMX 0
#endif

namespace dcpe {
namespace amx {

// bfloat16 of a float32, rounded to nearest even (a NaN stays a NaN; overflow gives an
// infinity), as its 16 bits.
inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Coordinates per tile step (one 64-byte tile row of bfloat16 pairs).
constexpr std::size_t kStep = 32;

// The bfloat16 row length for d coordinates: d rounded up to a tile step.
inline std::size_t padded(std::size_t d) { return (d + kStep - 1) / kStep * kStep; }

#if DCPE_HAVE_AMX

// Whether this process may use the tiles: asked of the kernel once (thread-safe static).
inline bool granted() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023;  // ARCH_REQ_XCOMP_PERM
    constexpr long kXtileData = 18;         // XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  return ok;
}

inline bool available() {
  const char* env = std::getenv("DCPE_CPU_AMX");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  return granted();
}

// The tile configuration of this thread for dots16(): eight tiles of 16 rows of 64 bytes
// (0-3 the float32 sums of four blocks of 16 queries, 4 the points, 5-7 the queries),
// released when the scope ends.
class Tiles {
 public:
  Tiles() {
    alignas(64) unsigned char cfg[64] = {};
    cfg[0] = 1;  // palette 1
    for (int t = 0; t < 8; ++t) {
      const uint16_t colsb = 64;
      std::memcpy(cfg + 16 + 2 * t, &colsb, sizeof colsb);
      cfg[48 + t] = 16;
    }
    _tile_loadconfig(cfg);
  }
  ~Tiles() { _tile_release(); }
  Tiles(const Tiles&) = delete;
  Tiles& operator=(const Tiles&) = delete;
};

// out[p * 64 + 16 b + j] = <point p, query 16 b + j> for p < 16, b < nqb (1 to 4), j < 16:
// the points are 16 rows of dp bfloat16 (dp a multiple of kStep) at pts, the queries
// block b's pairs of coordinates at qv + b * (dp / 2) * 16 (row r: coordinates 2r and
// 2r + 1 of its 16 queries, as TDPBF16PS reads its second operand).
inline void dots16(const uint16_t* pts, std::size_t dp, const uint32_t* qv, int nqb,
                   float* out) {
  const std::size_t steps = dp / kStep, block = dp / 2 * 16;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (std::size_t s = 0; s < steps; ++s) {
    _tile_loadd(4, pts + s * kStep, dp * sizeof(uint16_t));
    const uint32_t* q = qv + s * 16 * 16;
    _tile_loadd(5, q, 64);
    _tile_dpbf16ps(0, 4, 5);
    if (nqb > 1) {
      _tile_loadd(6, q + block, 64);
      _tile_dpbf16ps(1, 4, 6);
    }
    if (nqb > 2) {
      _tile_loadd(7, q + 2 * block, 64);
      _tile_dpbf16ps(2, 4, 7);
    }
    if (nqb > 3) {
      _tile_loadd(5, q + 3 * block, 64);
      _tile_dpbf16ps(3, 4, 5);
    }
  }
  constexpr std::size_t stride = 64 * sizeof(float);
  _tile_stored(0, out, stride);
  if (nqb > 1) _tile_stored(1, out + 16, stride);
  if (nqb > 2) _tile_stored(2, out + 32, stride);
  if (nqb > 3) _tile_stored(3, out + 48, stride);
}

#else

inline bool available() { return false; }

#endif

}  // namespace amx
}  // namespace dcpe
