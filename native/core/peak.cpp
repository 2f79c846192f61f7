#include "peak.h"

#include <algorithm>
#include <chrono>
#include <ctime>

#include "cpu_features.h"
#include "errors.h"
#include "thread_pool.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ZN_PEAK_X86 1
#endif

namespace zn {

namespace {

constexpr int kChains = 12;

#ifdef ZN_PEAK_X86
__attribute__((target("avx2,fma"))) float fma256_loop(long iters) {
  __m256 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(float(c));
  const __m256 scale = _mm256_set1_ps(0.999999f), shift = _mm256_set1_ps(1e-7f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], scale, shift);
  }
  __m256 sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = _mm256_add_ps(sum, acc[c]);
  return _mm256_cvtss_f32(sum);
}

__attribute__((target("avx512f"))) float fma512_loop(long iters) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(float(c));
  const __m512 scale = _mm512_set1_ps(0.999999f), shift = _mm512_set1_ps(1e-7f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], scale, shift);
  }
  __m512 sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = _mm512_add_ps(sum, acc[c]);
  return _mm512_cvtss_f32(sum);
}

// 24 chains: vdpbf16ps's latency times its throughput exceeds 12 on Zen 5 (12 chains measured
// 6.9 instructions/ns on one core, 16 and 24 chains 7.35), and a GEMM tile keeps 24 in flight.
constexpr int kBf16Chains = 24;

__attribute__((target("avx512f,avx512bw,avx512bf16,avx512vl"))) float dpbf16_loop(long iters) {
  __m512 acc[kBf16Chains];
  for (int c = 0; c < kBf16Chains; ++c) acc[c] = _mm512_set1_ps(float(c));
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80);  // bf16 pair (1.0, 1.0)
  const __m512bh y = (__m512bh)_mm512_set1_epi32(0x33d633d6);  // bf16 pair (1e-7, 1e-7)
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 24
    for (int c = 0; c < kBf16Chains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], x, y);
  }
  __m512 sum = acc[0];
  for (int c = 1; c < kBf16Chains; ++c) sum = _mm512_add_ps(sum, acc[c]);
  return _mm512_cvtss_f32(sum);
}
#endif

double now_seconds(bool thread_cpu_time) {
  if (thread_cpu_time) {
    timespec now{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return double(now.tv_sec) + 1e-9 * double(now.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// GFLOP/s of `loop` run on every pool thread at once; `flops_per_iter` per thread. One warm-up
// run (thread start, frequency ramp), then the best of the runs within the budget. Runs of
// about a millisecond, hundreds of them: on a shared machine a peak needs every thread
// undisturbed at once, which short runs catch far more often (one thread at load average 6:
// runs of 5M iterations, best of 15, measured 216-302 GFLOP/s of vdpbf16ps; runs of 0.5M, best
// of 400, 429-458), so the peak that fractions are taken of is not understated.
double peak_gflops(float (*loop)(long), double flops_per_iter, double budget, bool cpu_time) {
  const int threads = num_threads();
  const long iters = 500'000;
  std::vector<float> sink(size_t(threads), 0.0f);
  auto run = [&] {
    parallel_for(size_t(threads), 1, [&](size_t begin, size_t end) {
      for (size_t t = begin; t < end; ++t) sink[t] += loop(iters);
    });
  };
  run();
  double best = 1e30;
  const double start = now_seconds(false);
  for (int runs = 0; runs == 0 || (now_seconds(false) - start < budget && runs < 1000); ++runs) {
    const double t0 = now_seconds(cpu_time);
    run();
    best = std::min(best, now_seconds(cpu_time) - t0);
  }
  // Reading the sums keeps the compiler from dropping the loops.
  volatile float keep = sink[0];
  (void)keep;
  return flops_per_iter * double(iters) * threads / best / 1e9;
}

}  // namespace

Peaks measure_peaks(double seconds_per_loop, bool thread_cpu_time) {
  Peaks peaks;
  peaks.threads = num_threads();
  ZN_CHECK(!thread_cpu_time || peaks.threads == 1, "measure_peaks: the thread CPU clock times one thread, not ",
           peaks.threads, " (set ZN_NUM_THREADS=1)");
#ifdef ZN_PEAK_X86
  const CpuFeatures& f = cpu_features();
  if (f.avx2 && f.fma) {
    peaks.f32 = peak_gflops(fma256_loop, kChains * 8 * 2, seconds_per_loop, thread_cpu_time);
    peaks.loops.push_back({"fma-ymm", "f32", peaks.f32});
  }
  if (f.avx512f) {
    const double zmm = peak_gflops(fma512_loop, kChains * 16 * 2, seconds_per_loop, thread_cpu_time);
    peaks.loops.push_back({"fma-zmm", "f32", zmm});
    peaks.f32 = std::max(peaks.f32, zmm);
  }
  peaks.bf16 = peaks.f32;
  if (cpu_path() == CpuPath::Avx512Bf16) {
    peaks.bf16 = peak_gflops(dpbf16_loop, kBf16Chains * 16 * 2 * 2, seconds_per_loop, thread_cpu_time);
    peaks.loops.push_back({"vdpbf16ps", "bf16", peaks.bf16});
  }
#endif
  return peaks;
}

}  // namespace zn
