// y = x W^T (+ bias) for a few rows of x: the single-stream decode case, where a linear layer
// is a matrix-vector product bound by how fast the weights stream from memory. oneDNN
// reaches ~19 GB/s on these narrow (576-wide) bf16 layers here; AVX512-BF16's dot-product
// instruction (32 bf16 products per instruction), one weight row at a time split over the
// threads, streams at ~35 GB/s. Plain C ABI; the caller guarantees bf16 data, K % 32 == 0
// and a small M (each weight row is read once and used for every row of x).

#include <cstdint>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "bf16.h"

extern "C" {

int gemv_bf16_available() {
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
#if defined(__AVX512BF16__)
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    const uint16_t* wr = w + row * k;
    for (int64_t i = 0; i < m; ++i) {
      const uint16_t* xr = x + i * k;
      __m512 acc = _mm512_setzero_ps();
      for (int64_t j = 0; j < k; j += 32) {
        __m512bh a = (__m512bh)_mm512_loadu_si512(xr + j);
        __m512bh b = (__m512bh)_mm512_loadu_si512(wr + j);
        acc = _mm512_dpbf16_ps(acc, a, b);
      }
      float total = _mm512_reduce_add_ps(acc);
      if (bias) total += polyhead::to_float(bias[row]);
      y[i * n + row] = polyhead::to_bf16(total);
    }
  }
#else
  (void)x; (void)w; (void)bias; (void)y; (void)m; (void)n; (void)k; (void)num_threads;
#endif
}

}  // extern "C"
