// Fused residual add + RMSNorm, rounding as Hugging Face's LlamaRMSNorm does: the sum is
// rounded to the activation dtype, normalized in float32, rounded, then scaled by the weight.
// torch runs this as ~8 kernels per call (upcast, square, mean, rsqrt, two products, casts,
// and the residual add before it); here it is one pass over the rows.

#include <cmath>
#include <cstdint>

#include "bf16.h"

namespace {

using polyhead::round_like;
using polyhead::store;
using polyhead::to_float;

// residual (if given) += x, in place; out = rms_norm(residual or x) * weight
template <typename T>
void add_rms_norm(const T* x, T* residual, const T* weight, T* out, int64_t rows, int64_t dim, float eps,
                  int num_threads) {
#pragma omp parallel for num_threads(rows >= 8 ? num_threads : 1) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    T* hr = residual ? residual + r * dim : nullptr;
    float squares = 0.f;
    for (int64_t d = 0; d < dim; ++d) {
      float v = to_float(xr[d]);
      if (hr) {
        v = round_like(v + to_float(hr[d]), xr);
        store(v, &hr[d]);
      }
      squares += v * v;
    }
    const float inv = 1.f / std::sqrt(squares / static_cast<float>(dim) + eps);
    const T* src = hr ? hr : xr;
    for (int64_t d = 0; d < dim; ++d)
      store(to_float(weight[d]) * round_like(to_float(src[d]) * inv, xr), &out[r * dim + d]);
  }
}

}  // namespace

extern "C" {

void add_rms_norm_bf16(const uint16_t* x, uint16_t* residual, const uint16_t* weight, uint16_t* out, int64_t rows,
                       int64_t dim, float eps, int num_threads) {
  add_rms_norm(x, residual, weight, out, rows, dim, eps, num_threads);
}

void add_rms_norm_f32(const float* x, float* residual, const float* weight, float* out, int64_t rows, int64_t dim,
                      float eps, int num_threads) {
  add_rms_norm(x, residual, weight, out, rows, dim, eps, num_threads);
}

}  // extern "C"
