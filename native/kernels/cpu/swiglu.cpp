// SwiGLU: out = silu(g) * u with silu(g) = g s, s = sigmoid(g).
// Backward: dg = dout * u * s (1 + g (1 - s)),  du = dout * silu(g).
// sigmoid takes e^-|g| only, so no exp overflows: s = 1 / (1 + e) for g >= 0, e / (1 + e) below.
// The AVX2 path is the same arithmetic on 8 lanes with the vector exp (core/simd_math.h); a
// loop's last partial vector goes through masked loads and stores, so every element takes the
// same arithmetic wherever a thread's share of the loop begins. Both paths load all of an
// element's inputs before storing its outputs (outputs may overwrite inputs, see swiglu.h).
#include "kernels/cpu/swiglu.h"

#include <cmath>

#include "core/errors.h"
#include "core/simd_math.h"
#include "core/thread_pool.h"

namespace zn::cpu {

namespace {

constexpr size_t kGrain = 16384;

inline float sigmoid(float x) {
  if (x >= 0) return 1.0f / (1.0f + std::exp(-x));
  const float e = std::exp(x);
  return e / (1.0f + e);
}

void forward_scalar(size_t begin, size_t end, const float* gate, const float* up, float* out) {
  for (size_t i = begin; i < end; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

void backward_scalar(size_t begin, size_t end, const float* gate, const float* up, const float* dout,
                     float* dgate, float* dup) {
  for (size_t i = begin; i < end; ++i) {
    // Every input read before any output is written: the outputs may overwrite the inputs.
    const float g = gate[i], u = up[i], dy = dout[i], s = sigmoid(g);
    dgate[i] = dy * u * (s * (1.0f + g * (1.0f - s)));
    dup[i] = dy * (g * s);
  }
}

#if defined(__x86_64__)

ZN_TARGET_AVX2 inline __m256 sigmoid_avx2(__m256 g) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = simd::exp_avx2(_mm256_or_ps(g, _mm256_set1_ps(-0.0f)));  // e^-|g|
  const __m256 numerator = _mm256_blendv_ps(e, one, _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_GE_OQ));
  return _mm256_div_ps(numerator, _mm256_add_ps(one, e));
}

ZN_TARGET_AVX2 inline __m256 swiglu8(__m256 g, __m256 u) {
  return _mm256_mul_ps(_mm256_mul_ps(g, sigmoid_avx2(g)), u);
}

ZN_TARGET_AVX2 inline void swiglu_grad8(__m256 g, __m256 u, __m256 dy, __m256& dg, __m256& du) {
  const __m256 one = _mm256_set1_ps(1.0f), s = sigmoid_avx2(g);
  const __m256 dsilu = _mm256_mul_ps(s, _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one));
  dg = _mm256_mul_ps(_mm256_mul_ps(dy, u), dsilu);
  du = _mm256_mul_ps(dy, _mm256_mul_ps(g, s));
}

ZN_TARGET_AVX2 void forward_avx2(size_t begin, size_t end, const float* gate, const float* up,
                                 float* out) {
  size_t i = begin;
  for (; i + 8 <= end; i += 8) {
    _mm256_storeu_ps(out + i, swiglu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
  }
  if (i == end) return;
  const __m256i lanes = simd::first_lanes(long(end - i));
  _mm256_maskstore_ps(out + i, lanes,
                      swiglu8(_mm256_maskload_ps(gate + i, lanes), _mm256_maskload_ps(up + i, lanes)));
}

ZN_TARGET_AVX2 void backward_avx2(size_t begin, size_t end, const float* gate, const float* up,
                                  const float* dout, float* dgate, float* dup) {
  __m256 dg, du;
  size_t i = begin;
  for (; i + 8 <= end; i += 8) {
    swiglu_grad8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i), _mm256_loadu_ps(dout + i), dg, du);
    _mm256_storeu_ps(dgate + i, dg);
    _mm256_storeu_ps(dup + i, du);
  }
  if (i == end) return;
  const __m256i lanes = simd::first_lanes(long(end - i));
  swiglu_grad8(_mm256_maskload_ps(gate + i, lanes), _mm256_maskload_ps(up + i, lanes),
               _mm256_maskload_ps(dout + i, lanes), dg, du);
  _mm256_maskstore_ps(dgate + i, lanes, dg);
  _mm256_maskstore_ps(dup + i, lanes, du);
}

#endif

bool use_avx2(CpuPath path) {
#if defined(__x86_64__)
  return path != CpuPath::Scalar;
#else
  return false;
#endif
}

}  // namespace

void swiglu_forward(long n, const float* gate, const float* up, float* out, CpuPath path) {
  ZN_CHECK(n >= 0, "swiglu_forward: negative size ", n);
  const bool avx2 = use_avx2(path);
  parallel_for(size_t(n), kGrain, [&](size_t begin, size_t end) {
#if defined(__x86_64__)
    if (avx2) return forward_avx2(begin, end, gate, up, out);
#endif
    forward_scalar(begin, end, gate, up, out);
  });
}

void swiglu_backward(long n, const float* gate, const float* up, const float* dout, float* dgate,
                     float* dup, CpuPath path) {
  ZN_CHECK(n >= 0, "swiglu_backward: negative size ", n);
  const bool avx2 = use_avx2(path);
  parallel_for(size_t(n), kGrain, [&](size_t begin, size_t end) {
#if defined(__x86_64__)
    if (avx2) return backward_avx2(begin, end, gate, up, dout, dgate, dup);
#endif
    backward_scalar(begin, end, gate, up, dout, dgate, dup);
  });
}

void swiglu_forward(long n, const float* gate, const float* up, float* out) {
  swiglu_forward(n, gate, up, out, cpu_path());
}

void swiglu_backward(long n, const float* gate, const float* up, const float* dout, float* dgate,
                     float* dup) {
  swiglu_backward(n, gate, up, dout, dgate, dup, cpu_path());
}

}  // namespace zn::cpu
