// Sampling (sampling.h): each row's scores are processed in a scratch copy; the draw walks the
// surviving tokens in descending order of score.
#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/cpu_features.h"
#include "core/errors.h"
#include "core/simd_math.h"
#include "core/thread_pool.h"

namespace zn::cpu {

namespace {

constexpr float kDropped = -std::numeric_limits<float>::infinity();

void apply_repetition_penalty(const SampleRow& row, long vocab, std::vector<float>& scores) {
  const float r = row.params.repetition_penalty;
  if (r == 1.0f) return;
  std::vector<bool> seen(size_t(vocab), false);
  for (long i = 0; i < row.history_length; ++i) {
    const int32_t t = row.history[i];
    if (t < 0 || t >= vocab || seen[size_t(t)]) continue;
    seen[size_t(t)] = true;
    float& s = scores[size_t(t)];
    s = s < 0 ? s * r : s / r;
  }
}

long first_argmax(const std::vector<float>& scores) {
  return long(std::max_element(scores.begin(), scores.end()) - scores.begin());
}

// sum_v e^(logits[v] - top), accumulated in f64: the AVX2 path takes e^x 8 lanes at a time
// (core/simd_math.h, within 2 ulp of expf), the scalar path std::exp.
#if defined(__x86_64__)
ZN_TARGET_AVX2 double sum_exp_avx2(const float* logits, long vocab, float top) {
  __m256d low = _mm256_setzero_pd(), high = _mm256_setzero_pd();
  const __m256 shift = _mm256_set1_ps(top);
  const long full = vocab / 8 * 8;
  for (long v = 0; v < full; v += 8) {
    const __m256 e = simd::exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(logits + v), shift));
    low = _mm256_add_pd(low, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    high = _mm256_add_pd(high, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(low, high));
  double sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (long v = full; v < vocab; ++v) sum += std::exp(double(logits[v]) - top);
  return sum;
}
#endif

// log softmax(logits)[token]: what a sampled token's logprob reports.
float log_softmax_at(const float* logits, long vocab, long token) {
  const float top = *std::max_element(logits, logits + vocab);
  double sum = 0;
#if defined(__x86_64__)
  if (cpu_path() != CpuPath::Scalar) sum = sum_exp_avx2(logits, vocab, top);
  else
#endif
    for (long v = 0; v < vocab; ++v) sum += std::exp(double(logits[v]) - top);
  return float(double(logits[token]) - top - std::log(sum));
}

// Temperature, top-k, top-p and min-p over the scores, then the draw: the surviving tokens are
// walked in descending order of score with their probabilities (softmax over them, in f64).
long draw(const SampleRow& row, long vocab, std::vector<float>& scores) {
  const SamplingParams& p = row.params;
  for (float& s : scores) s /= p.temperature;
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  // Descending score; equal scores by token id, as a stable sort of the ids would leave them.
  auto before = [&](int32_t a, int32_t b) { return scores[size_t(a)] > scores[size_t(b)] || (scores[size_t(a)] == scores[size_t(b)] && a < b); };
  long kept = vocab;
  if (p.top_k > 0 && p.top_k < vocab) {
    std::nth_element(order.begin(), order.begin() + (p.top_k - 1), order.end(), before);
    const float kth = scores[size_t(order[size_t(p.top_k - 1)])];
    kept = std::partition(order.begin(), order.end(), [&](int32_t t) { return scores[size_t(t)] >= kth; }) - order.begin();
  }
  std::sort(order.begin(), order.begin() + kept, before);
  const double top = scores[size_t(order[0])];
  std::vector<double> probs(static_cast<size_t>(kept));
  double total = 0;
  for (long i = 0; i < kept; ++i) total += probs[size_t(i)] = std::exp(double(scores[size_t(order[size_t(i)])]) - top);
  if (p.top_p < 1.0f) {
    double before_mass = 0;
    long m = 0;
    while (m < kept && (m == 0 || before_mass < double(p.top_p))) before_mass += probs[size_t(m++)] / total;
    kept = m;
  }
  if (p.min_p > 0.0f) {
    // The largest probability is probs[0] / total; a token stays when probs[i] >= min_p * probs[0].
    long m = 1;
    while (m < kept && probs[size_t(m)] >= double(p.min_p) * probs[0]) ++m;
    kept = m;
  }
  double mass = 0;
  for (long i = 0; i < kept; ++i) mass += probs[size_t(i)];
  const double target = row.uniform * mass;
  double cumulative = 0;
  for (long i = 0; i < kept; ++i) {
    cumulative += probs[size_t(i)];
    if (cumulative > target) return order[size_t(i)];
  }
  return order[size_t(kept - 1)];  // rounding left target at the very end
}

}  // namespace

void validate_sampling(const SamplingParams& p) {
  ZN_CHECK(std::isfinite(p.temperature) && p.temperature >= 0, "sampling: temperature must be >= 0, got ",
           p.temperature);
  ZN_CHECK(p.top_k >= 0, "sampling: top_k must be >= 0, got ", p.top_k);
  ZN_CHECK(p.top_p > 0 && p.top_p <= 1, "sampling: top_p must be in (0, 1], got ", p.top_p);
  ZN_CHECK(p.min_p >= 0 && p.min_p <= 1, "sampling: min_p must be in [0, 1], got ", p.min_p);
  ZN_CHECK(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0,
           "sampling: repetition_penalty must be > 0, got ", p.repetition_penalty);
}

void sample_tokens(long rows, long vocab, const SampleRow* in, int32_t* tokens, float* logprobs) {
  ZN_CHECK(vocab > 0, "sampling: vocab must be positive, got ", vocab);
  for (long r = 0; r < rows; ++r) validate_sampling(in[r].params);
  parallel_for(size_t(rows), 1, [&](size_t begin, size_t end) {
    std::vector<float> scores;
    for (size_t r = begin; r < end; ++r) {
      const SampleRow& row = in[r];
      long token;
      if (row.params.temperature <= 0 && row.params.repetition_penalty == 1.0f) {
        token = long(std::max_element(row.logits, row.logits + vocab) - row.logits);  // plain greedy: no copy
      } else {
        scores.assign(row.logits, row.logits + vocab);
        apply_repetition_penalty(row, vocab, scores);
        token = row.params.temperature <= 0 ? first_argmax(scores) : draw(row, vocab, scores);
      }
      tokens[r] = int32_t(token);
      logprobs[r] = log_softmax_at(row.logits, vocab, token);
    }
  });
}

}  // namespace zn::cpu
