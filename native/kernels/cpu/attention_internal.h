// The tile kernels under the CPU attention (attention.cpp): the contract every SIMD path
// implements, shared by attention.cpp (the algorithm, and the scalar and AVX2 kernels) and
// attention_avx512.cpp (the AVX-512 kernels). Nothing outside the attention includes this.
#pragma once
#include <limits>

namespace zn::cpu::attention_detail {

constexpr long kKeyTile = 64;  // keys per tile (Bc); score rows are kKeyTile floats apart
constexpr long kLanes = 16;    // matmul output widths are multiples of one zmm, two ymm
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A [M][K] row-major, A(m, k) = data[m·ld + k], or transposed, A(m, k) = data[k·ld + m].
struct MatA {
  const float* data;
  long ld;
  bool transposed;
};
// B [K][N] in panels of kLanes columns: B(k, n) = data[(n / kLanes)·panel + k·ld + n % kLanes].
// A row-major B has panel = kLanes; a packed key tile has ld = kLanes and panel = K·kLanes, so
// each panel is contiguous.
struct MatB {
  const float* data;
  long ld, panel;
};

// C[M][N] = (accumulate ? C : 0) + A·B; N is a multiple of kLanes.
using MatmulFn = void (*)(long M, long N, long K, MatA a, MatB b, float* c, long ldc,
                          bool accumulate);
// Online softmax over the next tile of scores (masked entries -inf; rows kKeyTile apart, width
// a multiple of kLanes): each row becomes exp(s - new max), row_max and row_sum are updated,
// and rescale gets exp(old max - new max), the factor by which the output accumulated so far
// must shrink.
using SoftmaxFn = void (*)(float* scores, long rows, long width, float* row_max, float* row_sum,
                           float* rescale);
// P = exp(S - lse) in place (0 where masked).
using ProbabilitiesFn = void (*)(float* scores, long rows, long width, const float* lse);
// dS = P∘(dP - delta) in place of dP.
using ScoreGradFn = void (*)(const float* probs, float* dprobs, long rows, long width,
                             const float* delta);

struct Kernels {
  MatmulFn matmul;
  SoftmaxFn softmax;
  ProbabilitiesFn probabilities;
  ScoreGradFn score_grad;
};

// The AVX-512 kernels (attention_avx512.cpp): the AVX2 kernels' bits at twice the vector width.
// Call only where cpu_path_supported(CpuPath::Avx512Bf16).
Kernels avx512_kernels();

}  // namespace zn::cpu::attention_detail
