// One float vector for the native kernels, as wide as the compiler's flags allow: 16 floats with
// AVX-512, 8 with AVX2+FMA. Kernels written against these few operations have one body for both;
// POLYHEAD_SIMD is 0 where neither is available (the kernels' plain loops run instead).
#pragma once

#include <cstdint>

#if defined(__AVX512F__)
#define POLYHEAD_SIMD 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define POLYHEAD_SIMD 1
#include <immintrin.h>
#else
#define POLYHEAD_SIMD 0
#endif

#if POLYHEAD_SIMD
namespace polyhead::simd {

#if defined(__AVX512F__)
using vec = __m512;
constexpr int W = 16;  // floats per vector
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vset1(float a) { return _mm512_set1_ps(a); }
inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline vec vload(const uint16_t* p) {  // W bf16 -> W floats
  __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline void vstore(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
#else
using vec = __m256;
constexpr int W = 8;
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vset1(float a) { return _mm256_set1_ps(a); }
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline vec vload(const uint16_t* p) {
  __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(vec v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  return _mm_cvtss_f32(_mm_add_ss(sum, _mm_movehdup_ps(sum)));
}
#endif

}  // namespace polyhead::simd
#endif
