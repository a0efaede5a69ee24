// y = x W^T (+ bias) for a few rows of x: the single-stream decode case, where a linear layer
// is a matrix-vector product bound by how fast the weights stream from memory. oneDNN
// reaches ~19 GB/s on these narrow (576-wide) bf16 layers here; AVX512-BF16's dot-product
// instruction over four weight rows at a time streams closer to the memory's limit.
// Plain C ABI; the caller guarantees bf16 data, K % 32 == 0 and M <= 8.

#include <cstdint>
#include <cstring>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace {

inline float bf16_to_float(uint16_t x) {
  uint32_t bits = static_cast<uint32_t>(x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

inline uint16_t float_to_bf16(float x) {  // round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace

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
      if (bias) total += bf16_to_float(bias[row]);
      y[i * n + row] = float_to_bf16(total);
    }
  }
#else
  (void)x; (void)w; (void)bias; (void)y; (void)m; (void)n; (void)k; (void)num_threads;
#endif
}

}  // extern "C"
