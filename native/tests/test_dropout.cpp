// The dropout kernel (kernels/cpu/dropout.h) against its specification: element i kept when draw
// i of the mask's stream is at least p * 2^64 (compared here in double, written independently of
// the kernel's integer threshold), kept values scaled by 1 / (1 - p); the kept fraction within
// binomial bounds over a large tensor; distinct keys give unrelated masks; accumulate adds.
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/counter_random.h"
#include "harness.h"
#include "kernels/cpu/dropout.h"

using namespace zn;

ZN_TEST("dropout.masks_follow_the_counter_spec_within_binomial_bounds") {
  const long rows = 1000, cols = 1000;
  const size_t n = size_t(rows * cols);
  const std::vector<float> ones(n, 1.0f);
  for (double p : {0.05, 0.1, 0.5}) {
    const uint64_t key = counter_stream_key(42, uint64_t(p * 1000));
    const cpu::DropoutMask mask = cpu::dropout_mask(p, key);
    std::vector<float> y(n, -1.0f);
    cpu::dropout_forward(rows, cols, mask, ones.data(), y.data(), false);
    const float scale = float(1.0 / (1.0 - p));
    size_t kept = 0, mismatched = 0;
    for (size_t i = 0; i < n; ++i) {
      const bool spec = double(counter_bits(key, i)) >= std::ldexp(p, 64);
      mismatched += spec ? y[i] != scale : y[i] != 0.0f;
      kept += spec;
    }
    EXPECT(mismatched == 0, "p ", p, ": ", mismatched, " elements differ from the spec");
    // 6 standard deviations of Binomial(n, 1 - p): a correct mask fails this about once in 10^9 runs.
    const double mean = double(n) * (1 - p), sd = std::sqrt(double(n) * p * (1 - p));
    EXPECT(std::fabs(double(kept) - mean) <= 6 * sd, "p ", p, ": kept ", kept, ", expected ", mean, " +- ", 6 * sd);
  }

  // Two keys' masks agree on about p^2 + (1 - p)^2 of the elements, as independent masks do.
  const double p = 0.1;
  const cpu::DropoutMask a = cpu::dropout_mask(p, counter_stream_key(1, 0)), b = cpu::dropout_mask(p, counter_stream_key(1, 1));
  size_t both_dropped = 0;
  for (size_t i = 0; i < n; ++i) both_dropped += !cpu::dropout_keeps(a, i) && !cpu::dropout_keeps(b, i);
  const double mean = double(n) * p * p, sd = std::sqrt(double(n) * p * p * (1 - p * p));
  EXPECT(std::fabs(double(both_dropped) - mean) <= 6 * sd, "both dropped ", both_dropped, ", expected ", mean);

  // accumulate: y += dropout(x); p = 0 keeps everything unscaled.
  const std::vector<float> x = test::random_f32(4096);
  std::vector<float> y(4096, 0.5f), z(4096);
  cpu::dropout_forward(64, 64, a, x.data(), y.data(), true);
  cpu::dropout_forward(64, 64, a, x.data(), z.data(), false);
  for (size_t i = 0; i < y.size(); ++i) EXPECT(y[i] == 0.5f + z[i], "accumulate at ", i);
  cpu::dropout_forward(64, 64, cpu::dropout_mask(0.0, 5), x.data(), z.data(), false);
  EXPECT(z == x, "p = 0 changed values");
  test::expect_error([] { cpu::dropout_mask(1.0, 0); }, "drop probability must be in [0, 1), got 1");
}
