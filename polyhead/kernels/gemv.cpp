// y = x W^T (+ bias) for a few rows of x: the single-stream decode case, where a linear layer
// is a matrix-vector product bound by how fast the weights stream from memory. oneDNN
// reaches ~19 GB/s on these narrow (576-wide) bf16 layers here; AVX512-BF16's dot-product
// instruction (32 bf16 products per instruction), one weight row at a time split over the
// threads, streams at ~35 GB/s. Without AVX512-BF16 the same loop widens bf16 to float32 and
// multiplies with FMA (AVX-512 or AVX2), or runs plain loops; polyhead calls it only where bf16 is
// native (elsewhere bf16 is refused), but every path is built and tested against torch.
// Plain C ABI; the caller guarantees bf16 data, K % 32 == 0 and a small M (each weight row is
// read once and used for every row of x).

#include <cstdint>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "bf16.h"

namespace {

// the dot product of one row of x with one row of W, K a multiple of 32
inline float dot_bf16(const uint16_t* x, const uint16_t* w, int64_t k) {
#if defined(__AVX512BF16__)
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < k; j += 32) {
    __m512bh a = (__m512bh)_mm512_loadu_si512(x + j);
    __m512bh b = (__m512bh)_mm512_loadu_si512(w + j);
    acc = _mm512_dpbf16_ps(acc, a, b);
  }
  return _mm512_reduce_add_ps(acc);
#elif defined(__AVX512F__)
  auto widen = [](const uint16_t* p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  };
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (int64_t j = 0; j < k; j += 32) {
    acc0 = _mm512_fmadd_ps(widen(x + j), widen(w + j), acc0);
    acc1 = _mm512_fmadd_ps(widen(x + j + 16), widen(w + j + 16), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(__AVX2__) && defined(__FMA__)
  auto widen = [](const uint16_t* p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  };
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t j = 0; j < k; j += 32)
    for (int c = 0; c < 4; ++c) acc[c] = _mm256_fmadd_ps(widen(x + j + 8 * c), widen(w + j + 8 * c), acc[c]);
  __m256 sum8 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(sum8), _mm256_extractf128_ps(sum8, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  return _mm_cvtss_f32(_mm_add_ss(sum, _mm_movehdup_ps(sum)));
#else
  float total = 0.f;
  for (int64_t j = 0; j < k; ++j) total += polyhead::to_float(x[j]) * polyhead::to_float(w[j]);
  return total;
#endif
}

}  // namespace

extern "C" {

// 1 where the bf16 dot product is a hardware instruction (the only place the GEMV beats oneDNN)
int gemv_bf16_native() {
#if defined(__AVX512BF16__)
  return 1;
#else
  return 0;
#endif
}

void gemv_bf16(const uint16_t* x,     // [M, K]
               const uint16_t* w,     // [N, K]
               const uint16_t* bias,  // [N] or null
               uint16_t* y,           // [M, N]
               int64_t m, int64_t n, int64_t k, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    const uint16_t* wr = w + row * k;
    for (int64_t i = 0; i < m; ++i) {
      float total = dot_bf16(x + i * k, wr, k);
      if (bias) total += polyhead::to_float(bias[row]);
      y[i * n + row] = polyhead::to_bf16(total);
    }
  }
}

}  // extern "C"
