// Decode attention straight from the paged KV cache, one query token per sequence.
//
// The rule it keeps: sequence b's query heads attend to keys 0..context_lens[b]-1 (no further
// back than the sliding window), found through its block table; keys and values are read once,
// in place, with no gathered copy. Plain C ABI (no torch headers) so it compiles in a second.
// Parallel over (sequence, kv head) with OpenMP; the inner loops are left to the vectorizer.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) {  // bfloat16 -> float: the high half of a float's bits
  uint32_t bits = static_cast<uint32_t>(x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline void from_float(float x, float* out) { *out = x; }
inline void from_float(float x, uint16_t* out) {  // round to nearest even, as torch does
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  if (std::isnan(x)) { *out = 0x7fc0; return; }
  bits += 0x7fff + ((bits >> 16) & 1);
  *out = static_cast<uint16_t>(bits >> 16);
}

// The compiler turns an `omp simd reduction` into a scalar chain of adds; one vector
// accumulator and a single horizontal sum per dot product is ~3x cheaper.
inline float dot(const float* a, const float* b, int64_t n) {
#if defined(__AVX512F__)
  if (n % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    return _mm512_reduce_add_ps(acc);
  }
#endif
  float total = 0.f;
  for (int64_t i = 0; i < n; ++i) total += a[i] * b[i];
  return total;
}

template <typename T>
void decode_attention(const T* q,                 // [B, Hq, D]
                      const T* kv_cache,          // [2, Hkv, num_slots, D]
                      const int64_t* block_table, // [B, max_blocks]
                      const int64_t* context_lens,// [B]
                      T* out,                     // [B, Hq, D]
                      int64_t batch, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                      int64_t num_slots, int64_t block_size, int64_t max_blocks, float scale,
                      int64_t sliding_window, int num_threads) {
  const int64_t group = num_heads / num_kv_heads;
  const T* k_cache = kv_cache;
  const T* v_cache = kv_cache + num_kv_heads * num_slots * head_dim;

#pragma omp parallel num_threads(num_threads)
  {
    std::vector<float> scores, query(group * head_dim), acc(group * head_dim), row(head_dim);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < batch * num_kv_heads; ++item) {
      const int64_t b = item / num_kv_heads, h = item % num_kv_heads;
      const int64_t len = context_lens[b];
      const int64_t first = sliding_window > 0 && len > sliding_window ? len - sliding_window : 0;
      const int64_t n = len - first;
      scores.assign(group * n, 0.f);
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d)
          query[g * head_dim + d] = to_float(q[(b * num_heads + h * group + g) * head_dim + d]) * scale;

      const int64_t* table = block_table + b * max_blocks;
      const T* k_head = k_cache + h * num_slots * head_dim;
      const T* v_head = v_cache + h * num_slots * head_dim;
      // Walk block by block: no division per key, and each block's keys are contiguous.
      for (int64_t start = first - first % block_size; start < len; start += block_size) {
        const int64_t block_offset = table[start / block_size] * block_size * head_dim;
        const int64_t lo = start > first ? start : first, hi = start + block_size < len ? start + block_size : len;
        for (int64_t t = lo; t < hi; ++t) {
          const T* key = k_head + block_offset + (t - start) * head_dim;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) row[d] = to_float(key[d]);
          for (int64_t g = 0; g < group; ++g)
            scores[g * n + (t - first)] = dot(query.data() + g * head_dim, row.data(), head_dim);
        }
      }
      for (int64_t g = 0; g < group; ++g) {  // softmax over this head's scores
        float* s = scores.data() + g * n;
        float max_score = -INFINITY, total = 0.f;
#pragma omp simd reduction(max : max_score)
        for (int64_t i = 0; i < n; ++i) max_score = s[i] > max_score ? s[i] : max_score;
#pragma omp simd reduction(+ : total)  // vectorized expf (libmvec) needs -fno-math-errno
        for (int64_t i = 0; i < n; ++i) total += (s[i] = std::exp(s[i] - max_score));
        const float inv = 1.f / total;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) s[i] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t start = first - first % block_size; start < len; start += block_size) {
        const int64_t block_offset = table[start / block_size] * block_size * head_dim;
        const int64_t lo = start > first ? start : first, hi = start + block_size < len ? start + block_size : len;
        for (int64_t t = lo; t < hi; ++t) {
          const T* value = v_head + block_offset + (t - start) * head_dim;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) row[d] = to_float(value[d]);
          for (int64_t g = 0; g < group; ++g) {
            const float p = scores[g * n + (t - first)];
            float* a = acc.data() + g * head_dim;
#pragma omp simd
            for (int64_t d = 0; d < head_dim; ++d) a[d] += p * row[d];
          }
        }
      }
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d)
          from_float(acc[g * head_dim + d], &out[(b * num_heads + h * group + g) * head_dim + d]);
    }
  }
}

}  // namespace

extern "C" {

void decode_attention_bf16(const uint16_t* q, const uint16_t* kv_cache, const int64_t* block_table,
                           const int64_t* context_lens, uint16_t* out, int64_t batch, int64_t num_heads,
                           int64_t num_kv_heads, int64_t head_dim, int64_t num_slots, int64_t block_size,
                           int64_t max_blocks, float scale, int64_t sliding_window, int num_threads) {
  decode_attention(q, kv_cache, block_table, context_lens, out, batch, num_heads, num_kv_heads, head_dim,
                   num_slots, block_size, max_blocks, scale, sliding_window, num_threads);
}

void decode_attention_f32(const float* q, const float* kv_cache, const int64_t* block_table,
                          const int64_t* context_lens, float* out, int64_t batch, int64_t num_heads,
                          int64_t num_kv_heads, int64_t head_dim, int64_t num_slots, int64_t block_size,
                          int64_t max_blocks, float scale, int64_t sliding_window, int num_threads) {
  decode_attention(q, kv_cache, block_table, context_lens, out, batch, num_heads, num_kv_heads, head_dim,
                   num_slots, block_size, max_blocks, scale, sliding_window, num_threads);
}

}  // extern "C"
