// bfloat16 <-> float for the native kernels. A bfloat16 is the high half of a float32's bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace polyhead {

inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) {
  uint32_t bits = static_cast<uint32_t>(x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

inline uint16_t to_bf16(float x) {  // round to nearest even, as torch does
  if (std::isnan(x)) return 0x7fc0;
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

inline void store(float x, float* out) { *out = x; }
inline void store(float x, uint16_t* out) { *out = to_bf16(x); }

// x rounded as if stored in the type `like` points to (what torch's bf16 ops do between steps)
inline float round_like(float x, const float*) { return x; }
inline float round_like(float x, const uint16_t*) { return to_float(to_bf16(x)); }

}  // namespace polyhead
