// Decode attention straight from the paged KV cache, one query token per sequence.
//
// The rule it keeps: sequence b's query heads attend to keys 0..context_lens[b]-1 (no further
// back than the sliding window), found through its block table; keys and values are read once,
// in place, with no gathered copy. Plain C ABI (no torch headers) so it compiles in a second.
// Parallel over (sequence, kv head) with OpenMP; AVX-512 and AVX2+FMA paths for head_dim 64
// and 128 (whichever the compiler's flags allow), plain loops elsewhere and on other CPUs.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bf16.h"
#include "simd.h"

namespace {

using polyhead::store;
using polyhead::to_float;

// One (sequence, kv head) item: `group` queries over keys [first, len) of one head.
struct Item {
  const float* query;      // [group, D], already scaled
  const int64_t* table;    // the sequence's block table
  int64_t first, len;      // key positions attended to
  int64_t group, head_dim, block_size;
  float* scores;           // [group, len - first] scratch
};

inline void softmax_rows(float* scores, int64_t rows, int64_t n) {
  for (int64_t g = 0; g < rows; ++g) {
    float* s = scores + g * n;
    float max_score = -INFINITY, total = 0.f;
    for (int64_t i = 0; i < n; ++i) max_score = s[i] > max_score ? s[i] : max_score;
    for (int64_t i = 0; i < n; ++i) total += (s[i] = std::exp(s[i] - max_score));
    const float inv = 1.f / total;
    for (int64_t i = 0; i < n; ++i) s[i] *= inv;
  }
}

// Calls fn(t, row pointer) for each key position, walking block by block (no division per key).
template <typename T, typename Fn>
inline void for_each_row(const Item& it, const T* head, Fn fn) {
  const int64_t block_elems = it.block_size * it.head_dim;
  for (int64_t start = it.first - it.first % it.block_size; start < it.len; start += it.block_size) {
    const T* block = head + it.table[start / it.block_size] * block_elems;
    if (start + it.block_size < it.len) {  // blocks are scattered: fetch the next one while this one runs
      const char* next = reinterpret_cast<const char*>(head + it.table[start / it.block_size + 1] * block_elems);
      for (int64_t byte = 0; byte < block_elems * static_cast<int64_t>(sizeof(T)); byte += 64)
        __builtin_prefetch(next + byte);
    }
    const int64_t lo = start > it.first ? start : it.first;
    const int64_t hi = start + it.block_size < it.len ? start + it.block_size : it.len;
    for (int64_t t = lo; t < hi; ++t) fn(t - it.first, block + (t - start) * it.head_dim);
  }
}

template <typename T>
void attend_generic(const Item& it, const T* k_head, const T* v_head, float* acc /* [group, D] */) {
  const int64_t n = it.len - it.first, D = it.head_dim;
  for_each_row(it, k_head, [&](int64_t i, const T* key) {
    for (int64_t g = 0; g < it.group; ++g) {
      float dot = 0.f;
      for (int64_t d = 0; d < D; ++d) dot += it.query[g * D + d] * to_float(key[d]);
      it.scores[g * n + i] = dot;
    }
  });
  softmax_rows(it.scores, it.group, n);
  std::fill(acc, acc + it.group * D, 0.f);
  for_each_row(it, v_head, [&](int64_t i, const T* value) {
    for (int64_t g = 0; g < it.group; ++g) {
      const float p = it.scores[g * n + i];
      for (int64_t d = 0; d < D; ++d) acc[g * D + d] += p * to_float(value[d]);
    }
  });
}

#if POLYHEAD_SIMD
// C = head_dim / W vectors per row, a compile-time count so rows and accumulators stay in
// registers (the generic loops spill them and reduce dot products with scalar adds).
template <typename T, int C>
void attend_simd(const Item& it, const T* k_head, const T* v_head, float* acc) {
  using namespace polyhead::simd;
  const int64_t n = it.len - it.first;
  for_each_row(it, k_head, [&](int64_t i, const T* key) {
    vec k[C];
    for (int c = 0; c < C; ++c) k[c] = vload(key + W * c);
    for (int64_t g = 0; g < it.group; ++g) {
      const float* qg = it.query + g * W * C;
      vec sum = vmul(vload(qg), k[0]);
      for (int c = 1; c < C; ++c) sum = vfma(vload(qg + W * c), k[c], sum);
      it.scores[g * n + i] = vsum(sum);
    }
  });
  softmax_rows(it.scores, it.group, n);
  for (int64_t g = 0; g < it.group; ++g) {
    vec a[C];
    for (int c = 0; c < C; ++c) a[c] = vzero();
    const float* p = it.scores + g * n;
    for_each_row(it, v_head, [&](int64_t i, const T* value) {
      const vec weight = vset1(p[i]);
      for (int c = 0; c < C; ++c) a[c] = vfma(weight, vload(value + W * c), a[c]);
    });
    for (int c = 0; c < C; ++c) vstore(acc + g * W * C + W * c, a[c]);
  }
}
#endif

template <typename T>
void attend(const Item& it, const T* k_head, const T* v_head, float* acc) {
#if POLYHEAD_SIMD
  constexpr int W = polyhead::simd::W;
  if (it.head_dim == 64) return attend_simd<T, 64 / W>(it, k_head, v_head, acc);
  if (it.head_dim == 128) return attend_simd<T, 128 / W>(it, k_head, v_head, acc);
#endif
  attend_generic(it, k_head, v_head, acc);
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
    std::vector<float> scores, query(group * head_dim), acc(group * head_dim);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < batch * num_kv_heads; ++item) {
      const int64_t b = item / num_kv_heads, h = item % num_kv_heads;
      const int64_t len = context_lens[b];
      const int64_t first = sliding_window > 0 && len > sliding_window ? len - sliding_window : 0;
      scores.resize(group * (len - first));
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d)
          query[g * head_dim + d] = to_float(q[(b * num_heads + h * group + g) * head_dim + d]) * scale;
      const Item it{query.data(), block_table + b * max_blocks, first, len, group, head_dim, block_size,
                    scores.data()};
      attend(it, k_cache + h * num_slots * head_dim, v_cache + h * num_slots * head_dim, acc.data());
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d)
          store(acc[g * head_dim + d], &out[(b * num_heads + h * group + g) * head_dim + d]);
    }
  }
}

}  // namespace

extern "C" {

// Which path this build compiled: the tests check each level they build runs its own.
const char* kernel_isa() {
#if defined(__AVX512BF16__)
  return "avx512bf16";
#elif defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "scalar";
#endif
}

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
