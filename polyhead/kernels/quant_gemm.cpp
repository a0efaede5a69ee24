// y = x W^T (+ bias) with W stored in 8 or 4 bits: weight-only quantization.
//
// The rule it keeps: every weight is dequantized exactly as the reference does it, in float32
// (int8: s * q; int4: s * q + m, where a symmetric group has m = -8 s), and multiplied with
// float32 activations, so the result equals dequantize-then-F.linear up to the order of the sums.
// Activations are never quantized: greedy output stays token-for-token with the float reference.
//
// Layout (polyhead/quant/format.py): W is [N, K] in groups of G weights along K (the last group of a
// row may be shorter when G does not divide K), one float32 scale per group (and one min per group when asymmetric). int8: one byte per weight. int4: each
// run of 32 weights is 16 bytes, byte j holding weight j in its low nibble and weight j + 16 in its
// high nibble (llama.cpp's Q4_0/Q4_1 block order, so GGUF blocks are copied, not re-shuffled).
//
// Single-stream decode is bound by how fast the weights stream from memory; 4-bit weights are
// 1/8 of float32's bytes. Each weight row is dequantized once into registers and used for up to
// ROWS rows of x; more rows loop in chunks. Parallel over weight rows with OpenMP. AVX-512, AVX2+FMA
// and plain-loop paths, chosen by the compiler's flags.

#include <cstdint>
#include <cstring>

#include "bf16.h"
#include "simd.h"

namespace {

constexpr int ROWS = 8;  // rows of x per pass over a weight row (their accumulators stay in registers)
constexpr int64_t PREFETCH_ROWS = 16;  // weight rows fetched ahead of the one being multiplied

struct Weights {
  const uint8_t* q;      // int8: [N, K] bytes; int4: [N, K / 2] nibble-packed
  const float* scales;   // [N, K / G]
  const float* mins;     // [N, K / G], or null: symmetric (int4: m = -8 s; int8: no offset)
  int64_t k, group, groups_per_row;
  int bits;
};

#if POLYHEAD_SIMD
using namespace polyhead::simd;
#endif

#if defined(__AVX512F__)
// 32 dequantized weights starting at element j of row `row` into out[0..1]
inline void dequant32(const Weights& w, int64_t row, int64_t j, vec* out) {
  const int64_t g = row * w.groups_per_row + j / w.group;
  const vec s = vset1(w.scales[g]);
  if (w.bits == 8) {
    const int8_t* q = reinterpret_cast<const int8_t*>(w.q) + row * w.k + j;
    for (int c = 0; c < 2; ++c) {
      __m512i wide = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * c)));
      out[c] = _mm512_cvtepi32_ps(wide);
      out[c] = w.mins ? vfma(out[c], s, vset1(w.mins[g])) : vmul(out[c], s);
    }
    return;
  }
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.q + (row * w.k + j) / 2));
  const __m128i mask = _mm_set1_epi8(0x0f);
  const __m128i nibbles[2] = {_mm_and_si128(bytes, mask), _mm_and_si128(_mm_srli_epi16(bytes, 4), mask)};
  const vec m = w.mins ? vset1(w.mins[g]) : vset1(-8.f * w.scales[g]);
  for (int c = 0; c < 2; ++c) out[c] = vfma(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(nibbles[c])), s, m);
}
#elif POLYHEAD_SIMD
inline void dequant32(const Weights& w, int64_t row, int64_t j, vec* out) {
  const int64_t g = row * w.groups_per_row + j / w.group;
  const vec s = vset1(w.scales[g]);
  if (w.bits == 8) {
    const int8_t* q = reinterpret_cast<const int8_t*>(w.q) + row * w.k + j;
    for (int c = 0; c < 4; ++c) {
      __m256i wide = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * c)));
      out[c] = _mm256_cvtepi32_ps(wide);
      out[c] = w.mins ? vfma(out[c], s, vset1(w.mins[g])) : vmul(out[c], s);
    }
    return;
  }
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.q + (row * w.k + j) / 2));
  const __m128i mask = _mm_set1_epi8(0x0f);
  const __m128i lo = _mm_and_si128(bytes, mask), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
  const vec m = w.mins ? vset1(w.mins[g]) : vset1(-8.f * w.scales[g]);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int c = 0; c < 4; ++c) out[c] = vfma(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[c])), s, m);
}
#endif

#if POLYHEAD_SIMD
constexpr int V = 32 / W;  // vectors per 32 weights

// y[r, row] for the R rows of one chunk of x; R is a compile-time count so the accumulators
// stay in registers
template <int R>
inline void row_dot_fixed(const Weights& w, int64_t row, const float* x, float* out) {
  vec acc[R];
  for (int r = 0; r < R; ++r) acc[r] = vzero();
  for (int64_t j = 0; j < w.k; j += 32) {
    vec wv[V];
    dequant32(w, row, j, wv);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < V; ++c) acc[r] = vfma(vload(x + r * w.k + j + W * c), wv[c], acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = vsum(acc[r]);
}

inline void row_dot(const Weights& w, int64_t row, const float* x, int64_t rows, float* out) {
  switch (rows) {
    case 1: return row_dot_fixed<1>(w, row, x, out);
    case 2: return row_dot_fixed<2>(w, row, x, out);
    case 3: return row_dot_fixed<3>(w, row, x, out);
    case 4: return row_dot_fixed<4>(w, row, x, out);
    case 5: return row_dot_fixed<5>(w, row, x, out);
    case 6: return row_dot_fixed<6>(w, row, x, out);
    case 7: return row_dot_fixed<7>(w, row, x, out);
    default: return row_dot_fixed<ROWS>(w, row, x, out);
  }
}
#else
inline float weight_at(const Weights& w, int64_t row, int64_t j) {
  const int64_t index = row * w.k + j, g = row * w.groups_per_row + j / w.group;
  if (w.bits == 8) {
    const float q = static_cast<float>(reinterpret_cast<const int8_t*>(w.q)[index]);
    return w.mins ? q * w.scales[g] + w.mins[g] : q * w.scales[g];
  }
  const int64_t block = index / 32, lane = index % 32;
  const uint8_t byte = w.q[block * 16 + lane % 16];
  const float q = static_cast<float>(lane < 16 ? byte & 0x0f : byte >> 4);
  return q * w.scales[g] + (w.mins ? w.mins[g] : -8.f * w.scales[g]);
}

inline void row_dot(const Weights& w, int64_t row, const float* x, int64_t rows, float* out) {
  float acc[ROWS] = {};
  float dequantized[32];
  for (int64_t j = 0; j < w.k; j += 32) {
    for (int i = 0; i < 32; ++i) dequantized[i] = weight_at(w, row, j + i);
    for (int64_t r = 0; r < rows; ++r)
      for (int i = 0; i < 32; ++i) acc[r] += x[r * w.k + j + i] * dequantized[i];
  }
  for (int64_t r = 0; r < rows; ++r) out[r] = acc[r];
}
#endif

// out: [N, K] float32 or bfloat16 (T), the dequantized weight: for many rows of x, one matmul over
// the dequantized weight beats dequantizing each weight row per chunk of rows.
template <typename T>
void dequantize(const Weights& w, T* out, int64_t n, int num_threads) {
  const int64_t k = w.k;
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t j = 0; j < k; j += 32) {
      float values[32];
#if POLYHEAD_SIMD
      vec wv[V];
      dequant32(w, row, j, wv);
      for (int c = 0; c < V; ++c) std::memcpy(values + W * c, &wv[c], sizeof(vec));
#else
      for (int i = 0; i < 32; ++i) values[i] = weight_at(w, row, j + i);
#endif
      for (int i = 0; i < 32; ++i) polyhead::store(values[i], out + row * k + j + i);
    }
  }
}

}  // namespace

extern "C" {

// x: [M, K] float32; y: [M, N] float32. K % 32 == 0 and G % 32 == 0 (checked by the caller).
void quant_gemm_f32(const float* x, const uint8_t* q, const float* scales, const float* mins,
                    const float* bias, float* y, int64_t m, int64_t n, int64_t k, int64_t group, int bits,
                    int num_threads) {
  const Weights w{q, scales, mins, k, group, (k + group - 1) / group, bits};
  const int64_t row_bytes = bits == 8 ? k : k / 2, groups_per_row = (k + group - 1) / group;
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    if (row + PREFETCH_ROWS < n) {  // a few rows ahead: the hardware prefetcher alone left ~half the bandwidth idle
      const char* next = reinterpret_cast<const char*>(q + (row + PREFETCH_ROWS) * row_bytes);
      for (int64_t byte = 0; byte < row_bytes; byte += 64) __builtin_prefetch(next + byte);
      __builtin_prefetch(scales + (row + PREFETCH_ROWS) * groups_per_row);
      if (mins) __builtin_prefetch(mins + (row + PREFETCH_ROWS) * groups_per_row);
    }
    float out[ROWS];
    for (int64_t start = 0; start < m; start += ROWS) {
      const int64_t rows = m - start < ROWS ? m - start : ROWS;
      row_dot(w, row, x + start * k, rows, out);
      for (int64_t r = 0; r < rows; ++r) y[(start + r) * n + row] = out[r] + (bias ? bias[row] : 0.f);
    }
  }
}

void quant_dequantize_f32(const uint8_t* q, const float* scales, const float* mins, float* out, int64_t n,
                          int64_t k, int64_t group, int bits, int num_threads) {
  dequantize(Weights{q, scales, mins, k, group, (k + group - 1) / group, bits}, out, n, num_threads);
}

void quant_dequantize_bf16(const uint8_t* q, const float* scales, const float* mins, uint16_t* out, int64_t n,
                           int64_t k, int64_t group, int bits, int num_threads) {
  dequantize(Weights{q, scales, mins, k, group, (k + group - 1) / group, bits}, out, n, num_threads);
}

}  // extern "C"
