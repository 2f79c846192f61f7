// Sampling against a float64 statement of transformers' logits processors written here
// (repetition penalty, temperature, top-k, top-p as "ascending cumulative probability <= 1 - p
// drops out", min-p), checked by drawing: each token's count must lie within 6 binomial standard
// deviations of its expected count (a false failure has probability below 1e-8 per token), and a
// dropped token is never drawn.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "core/random.h"
#include "harness.h"
#include "kernels/cpu/sampling.h"

using namespace zn;
using namespace zn::cpu;

namespace {

std::vector<double> softmax(const std::vector<double>& s) {
  const double top = *std::max_element(s.begin(), s.end());
  std::vector<double> p(s.size());
  double total = 0;
  for (size_t i = 0; i < s.size(); ++i) total += p[i] = std::isinf(s[i]) ? 0.0 : std::exp(s[i] - top);
  for (double& x : p) x /= total;
  return p;
}

// The distribution transformers' generate(do_sample=True) draws from.
std::vector<double> reference_distribution(const std::vector<float>& logits, const std::vector<int32_t>& history,
                                           const SamplingParams& p) {
  std::vector<double> s(logits.begin(), logits.end());
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<bool> penalised(s.size(), false);
  for (int32_t t : history) {
    if (penalised[size_t(t)]) continue;
    penalised[size_t(t)] = true;
    s[size_t(t)] = s[size_t(t)] < 0 ? s[size_t(t)] * p.repetition_penalty : s[size_t(t)] / p.repetition_penalty;
  }
  for (double& x : s) x /= p.temperature;
  if (p.top_k > 0) {
    std::vector<double> sorted = s;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    const double kth = sorted[size_t(std::min<long>(p.top_k, long(s.size())) - 1)];
    for (double& x : s) if (x < kth) x = -inf;
  }
  if (p.top_p < 1) {
    const std::vector<double> probs = softmax(s);
    std::vector<size_t> ascending(s.size());
    std::iota(ascending.begin(), ascending.end(), 0);
    std::stable_sort(ascending.begin(), ascending.end(), [&](size_t a, size_t b) { return s[a] < s[b]; });
    double cumulative = 0;
    for (size_t i = 0; i + 1 < ascending.size(); ++i) {  // the last (largest) always stays
      cumulative += probs[ascending[i]];
      if (cumulative <= 1.0 - p.top_p) s[ascending[i]] = -inf;
    }
  }
  if (p.min_p > 0) {
    const std::vector<double> probs = softmax(s);
    const double top = *std::max_element(probs.begin(), probs.end());
    for (size_t i = 0; i < s.size(); ++i) if (probs[i] < p.min_p * top) s[i] = -inf;
  }
  return softmax(s);
}

std::vector<int> draw_counts(const std::vector<float>& logits, const std::vector<int32_t>& history,
                             const SamplingParams& p, int draws, uint64_t seed) {
  const long vocab = long(logits.size());
  std::vector<SampleRow> rows(static_cast<size_t>(draws));
  for (int i = 0; i < draws; ++i)
    rows[size_t(i)] = {logits.data(), history.data(), long(history.size()), p, uniform_draw(seed, 0, uint64_t(i))};
  std::vector<int32_t> tokens(static_cast<size_t>(draws));
  std::vector<float> logprobs(static_cast<size_t>(draws));
  sample_tokens(draws, vocab, rows.data(), tokens.data(), logprobs.data());
  std::vector<int> counts(static_cast<size_t>(vocab), 0);
  for (int32_t t : tokens) counts[size_t(t)]++;
  return counts;
}

}  // namespace

ZN_TEST("sampling.frequencies_match_transformers_processors") {
  const std::vector<float> logits = {2.0f, 1.5f, 1.5f, 0.3f, -0.2f, -1.0f, 0.9f, -3.0f, 0.0f, 1.1f};
  const std::vector<int32_t> history = {0, 7, 0, 3};
  struct Case {
    const char* name;
    SamplingParams p;
  };
  const std::vector<Case> cases = {
      {"temperature 1", {1.0f, 0, 1.0f, 0.0f, 1.0f}},
      {"temperature 0.7", {0.7f, 0, 1.0f, 0.0f, 1.0f}},
      {"top_k 3 (a tie at the boundary)", {1.0f, 3, 1.0f, 0.0f, 1.0f}},
      {"top_p 0.8", {1.0f, 0, 0.8f, 0.0f, 1.0f}},
      {"min_p 0.2", {1.0f, 0, 1.0f, 0.2f, 1.0f}},
      {"repetition penalty 1.3", {1.0f, 0, 1.0f, 0.0f, 1.3f}},
      {"all together", {0.8f, 6, 0.9f, 0.05f, 1.2f}},
  };
  const int draws = 40000;
  for (const Case& c : cases) {
    const std::vector<double> want = reference_distribution(logits, history, c.p);
    const std::vector<int> got = draw_counts(logits, history, c.p, draws, 1234);
    for (size_t t = 0; t < want.size(); ++t) {
      const double expected = want[t] * draws, sigma = std::sqrt(draws * want[t] * (1 - want[t]));
      if (want[t] == 0) {
        EXPECT(got[t] == 0, c.name, ": token ", t, " was dropped but drawn ", got[t], " times");
      } else {
        EXPECT(std::fabs(got[t] - expected) <= 6 * sigma + 1, c.name, ": token ", t, " drawn ", got[t],
               " times, expected ", expected, " +- ", sigma);
      }
    }
  }
}

ZN_TEST("sampling.greedy_logprobs_determinism_and_errors") {
  const std::vector<float> logits = {0.5f, 3.0f, 3.0f, -1.0f, 2.5f};
  // Greedy: the first argmax; a penalty on token 1 (positive: divided) hands it to token 2, and on
  // both to token 4.
  auto greedy = [&](std::vector<int32_t> history, float penalty) {
    SampleRow row{logits.data(), history.data(), long(history.size()), {0.0f, 0, 1.0f, 0.0f, penalty}, 0.5};
    int32_t token = -1;
    float logprob = 0;
    sample_tokens(1, long(logits.size()), &row, &token, &logprob);
    double total = 0;
    for (float x : logits) total += std::exp(double(x));
    EXPECT(std::fabs(logprob - (double(logits[size_t(token)]) - std::log(total))) < 1e-6, "logprob ", logprob);
    return token;
  };
  EXPECT(greedy({}, 1.0f) == 1);
  EXPECT(greedy({1}, 1.5f) == 2);
  EXPECT(greedy({1, 2, 1}, 1.5f) == 4);
  // The same seeds give the same tokens.
  const std::vector<int32_t> none;
  const SamplingParams p{0.9f, 0, 0.95f, 0.0f, 1.0f};
  EXPECT(draw_counts(logits, none, p, 500, 99) == draw_counts(logits, none, p, 500, 99));
  auto expect_error = [&](SamplingParams bad, const std::string& needle) {
    SampleRow row{logits.data(), nullptr, 0, bad, 0.5};
    int32_t token;
    float logprob;
    try {
      sample_tokens(1, long(logits.size()), &row, &token, &logprob);
    } catch (const Error& e) {
      EXPECT(std::string(e.what()).find(needle) != std::string::npos, "message: ", e.what());
      return;
    }
    fail("expected an error mentioning '", needle, "'");
  };
  expect_error({1.0f, 0, 0.0f, 0.0f, 1.0f}, "top_p must be in (0, 1], got 0");
  expect_error({1.0f, 0, 1.5f, 0.0f, 1.0f}, "top_p must be in (0, 1]");
  expect_error({-1.0f, 0, 1.0f, 0.0f, 1.0f}, "temperature must be >= 0");
  expect_error({1.0f, -2, 1.0f, 0.0f, 1.0f}, "top_k must be >= 0");
  expect_error({1.0f, 0, 1.0f, 1.5f, 1.0f}, "min_p must be in [0, 1]");
  expect_error({1.0f, 0, 1.0f, 0.0f, 0.0f}, "repetition_penalty must be > 0");
}
