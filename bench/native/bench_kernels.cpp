// Kernel benchmark: this machine's measured peak, then the throughput of each requested case,
// one JSON object per line on stdout. bench/kernels.ts runs it beside PyTorch and prints the
// table; run it alone as
//   zn_bench peak gemm:512,4096,4096:nt:bf16 ...     (zn_bench --list: the ops it can time)
// ZN_BENCH_CPU_TIME=1 with ZN_NUM_THREADS=1 times by the thread's CPU clock (see cpu_time_clock).
// Case specs (the same strings bench/torch_kernels.py reads):
//   peak                        tight FMA (and vdpbf16ps where present) loops on every thread
//   gemm:M,N,K:TT:DTYPE         C[M,N] = op(A)·op(B); TT is n|t for A then B; DTYPE f32|bf16
//   attention:T,HQ,HKV,D,W      causal GQA attention forward, backward and both, window W (0: none),
//                               on every SIMD path this CPU has
//   logprob:N,DIM,V             fused log-prob forward + backward, f32 lm_head [V, DIM]
//   adamw:N                     AdamW over N f32 parameters with the bf16 copy, on every SIMD path
//                               this CPU has, beside a plain parallel copy of 16 N bytes
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/cpu_features.h"
#include "core/errors.h"
#include "core/peak.h"
#include "core/thread_pool.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/logprob.h"

using namespace zn;

namespace {

// ZN_BENCH_CPU_TIME=1 (with ZN_NUM_THREADS=1): every run, peak loops included, is timed by the
// thread's CPU clock instead of the wall clock, so that on a shared machine the time the OS
// gives other processes is not counted against one core's kernels (bench/kernels.ts --cpu-time).
bool cpu_time_clock() {
  static const bool on = [] {
    const char* value = std::getenv("ZN_BENCH_CPU_TIME");
    return value != nullptr && std::string(value) == "1";
  }();
  return on;
}

double now_seconds(bool cpu_time = false) {
  if (cpu_time) {
    timespec now{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return double(now.tv_sec) + 1e-9 * double(now.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best time of `run` after one warm-up run (page faults, packing buffers, thread start): timed
// runs repeat until `budget` wall seconds have passed (at least one run), and the least
// disturbed one counts. bench/torch_kernels.py times the same way.
double best_seconds(const std::function<void()>& run, double budget = 1.5, int max_runs = 50) {
  run();
  double best = 1e30;
  const double start = now_seconds();
  for (int runs = 0; runs == 0 || (now_seconds() - start < budget && runs < max_runs); ++runs) {
    const double t0 = now_seconds(cpu_time_clock());
    run();
    best = std::min(best, now_seconds(cpu_time_clock()) - t0);
  }
  return best;
}

// ---- Peak: native/core/peak.h times the loops; here each one is reported.

Peaks measure_and_report_peaks() {
  const Peaks peaks = measure_peaks(0.5, cpu_time_clock());
  for (const PeakLoop& loop : peaks.loops) {
    std::printf("{\"op\":\"peak\",\"impl\":\"%s\",\"dtype\":\"%s\",\"threads\":%d,\"gflops\":%.1f}\n",
                loop.name, loop.dtype, peaks.threads, loop.gflops);
  }
  return peaks;
}

// ---- Cases.

std::vector<long> parse_numbers(const std::string& text, size_t count, const std::string& spec) {
  std::vector<long> values;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) values.push_back(std::atol(item.c_str()));
  ZN_CHECK(values.size() == count, "zn_bench: '", spec, "' needs ", count, " comma-separated sizes");
  for (long v : values) ZN_CHECK(v > 0, "zn_bench: sizes in '", spec, "' must be positive");
  return values;
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, sep);) parts.push_back(part);
  return parts;
}

void print_result(const std::string& op, const std::string& shape, const std::string& dtype,
                  const std::string& variant, double gflops, double peak, double seconds,
                  CpuPath path = cpu_path()) {
  std::printf("{\"op\":\"%s\",\"shape\":%s,\"dtype\":\"%s\",\"variant\":\"%s\",\"impl\":\"zephyr-native\","
              "\"path\":\"%s\",\"threads\":%d,\"gflops\":%.1f,\"peak_gflops\":%.1f,\"peak_fraction\":%.3f,"
              "\"seconds\":%.5f}\n",
              op.c_str(), shape.c_str(), dtype.c_str(), variant.c_str(), cpu_path_name(path),
              num_threads(), gflops, peak, peak > 0 ? gflops / peak : 0.0, seconds);
  std::fflush(stdout);
}

void bench_gemm(const std::string& spec, const Peaks& peaks) {
  const std::vector<std::string> parts = split(spec, ':');
  ZN_CHECK(parts.size() == 4 && parts[2].size() == 2 && (parts[3] == "f32" || parts[3] == "bf16"),
           "zn_bench: expected gemm:M,N,K:TT:f32|bf16, got '", spec, "'");
  const std::vector<long> mnk = parse_numbers(parts[1], 3, spec);
  const long M = mnk[0], N = mnk[1], K = mnk[2];
  const bool trans_a = parts[2][0] == 't', trans_b = parts[2][1] == 't';
  const bool bf16_inputs = parts[3] == "bf16";

  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  auto make = [&](long count, std::vector<float>& f32, std::vector<bf16>& b16) {
    f32.resize(size_t(count));
    for (float& x : f32) x = normal(rng);
    if (bf16_inputs) {
      b16.resize(f32.size());
      for (size_t i = 0; i < f32.size(); ++i) b16[i] = f32_to_bf16(f32[i]);
      f32.clear();
    }
  };
  std::vector<float> a32, b32;
  std::vector<bf16> a16, b16;
  make(M * K, a32, a16);
  make(K * N, b32, b16);
  std::vector<float> C(size_t(M * N));
  const DType dtype = bf16_inputs ? DType::BF16 : DType::F32;
  const cpu::Matrix A{bf16_inputs ? static_cast<const void*>(a16.data()) : a32.data(), dtype,
                      trans_a ? M : K};
  const cpu::Matrix B{bf16_inputs ? static_cast<const void*>(b16.data()) : b32.data(), dtype,
                      trans_b ? K : N};

  const double seconds = best_seconds(
      [&] { cpu::gemm(trans_a, trans_b, M, N, K, 1.0f, A, B, 0.0f, C.data(), N); });
  const double gflops = 2.0 * M * N * K / seconds / 1e9;
  print_result("gemm", "[" + parts[1] + "]", parts[3], parts[2], gflops,
               bf16_inputs ? peaks.bf16 : peaks.f32, seconds);
}

std::vector<float> random_values(size_t count, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(count);
  for (float& x : values) x = normal(rng);
  return values;
}

// (i, j) pairs with j <= i and i - window < j in one document of `tokens` tokens.
double visible_pairs(long tokens, long window) {
  if (window <= 0 || window >= tokens) return double(tokens) * double(tokens + 1) / 2;
  return double(window) * double(window + 1) / 2 + double(tokens - window) * double(window);
}

// attention:T,HQ,HKV,D,W - over one document, on each SIMD path this CPU has (the default
// path first): forward, backward and both. FLOPs per visible (i, j) pair and head: forward
// 4·D (QKᵀ and PV), backward 10·D (QKᵀ again, dV, dP, dQ, dK), 2 FLOPs per multiply-add.
void bench_attention(const std::string& spec, const Peaks& peaks) {
  const std::vector<std::string> parts = split(spec, ':');
  ZN_CHECK(parts.size() == 2, "zn_bench: expected attention:T,HQ,HKV,D,W, got '", spec, "'");
  const std::vector<std::string> fields = split(parts[1], ',');
  ZN_CHECK(fields.size() == 5, "zn_bench: expected attention:T,HQ,HKV,D,W, got '", spec, "'");
  const std::vector<long> sizes =
      parse_numbers(parts[1].substr(0, parts[1].rfind(',')), 4, spec);
  const long window = std::atol(fields[4].c_str());
  cpu::AttentionShape shape{sizes[0], int(sizes[1]), int(sizes[2]), int(sizes[3]), window,
                            1.0f / std::sqrt(float(sizes[3]))};
  const size_t q_size = size_t(shape.tokens * shape.n_heads * shape.head_dim);
  const size_t kv_size = size_t(shape.tokens * shape.n_kv_heads * shape.head_dim);
  const std::vector<float> q = random_values(q_size, 1.0f, 1), k = random_values(kv_size, 1.0f, 2),
                           v = random_values(kv_size, 1.0f, 3), dout = random_values(q_size, 1.0f, 4);
  std::vector<float> out(q_size), lse(size_t(shape.n_heads * shape.tokens)), dq(q_size),
      dk(kv_size), dv(kv_size);
  const int32_t cu_seqlens[2] = {0, int32_t(shape.tokens)};
  // Multiply-adds of one masked T × T matmul over all heads.
  const double macs = visible_pairs(shape.tokens, window) * shape.head_dim * shape.n_heads;
  std::vector<CpuPath> paths{cpu_path()};
  for (CpuPath path : {CpuPath::Avx512Bf16, CpuPath::Avx2}) {
    if (path != cpu_path() && cpu_path_supported(path)) paths.push_back(path);
  }
  for (CpuPath path : paths) {
    const auto forward = [&] {
      cpu::attention_forward(shape, q.data(), k.data(), v.data(), cu_seqlens, 1, out.data(),
                             lse.data(), path);
    };
    const auto backward = [&] {
      cpu::attention_backward(shape, q.data(), k.data(), v.data(), cu_seqlens, 1, out.data(),
                              lse.data(), dout.data(), dq.data(), dk.data(), dv.data(), path);
    };
    const double fwd = best_seconds(forward), bwd = best_seconds(backward);
    const double both = best_seconds([&] { forward(); backward(); });
    const std::string shape_text = "[" + parts[1] + "]";
    print_result("attention", shape_text, "f32", "fwd", 4 * macs / fwd / 1e9, peaks.f32, fwd, path);
    print_result("attention", shape_text, "f32", "bwd", 10 * macs / bwd / 1e9, peaks.f32, bwd, path);
    print_result("attention", shape_text, "f32", "fwd+bwd", 14 * macs / both / 1e9, peaks.f32,
                 both, path);
  }
}

// logprob:N,DIM,V - fused log-prob forward + backward with an f32 lm_head; FLOPs 6 * N * DIM * V
// (the logits once forward, dhidden and dweight backward; the kernel's recomputation of the
// logits in backward is not counted, as torch materialises them instead).
void bench_logprob(const std::string& spec, const Peaks& peaks) {
  const std::vector<std::string> parts = split(spec, ':');
  ZN_CHECK(parts.size() == 2, "zn_bench: expected logprob:N,DIM,V, got '", spec, "'");
  const std::vector<long> sizes = parse_numbers(parts[1], 3, spec);
  const cpu::LogprobShape shape{sizes[0], sizes[1], sizes[2]};
  const std::vector<float> hidden = random_values(size_t(shape.tokens * shape.dim), 1.0f, 1);
  const std::vector<float> weight =
      random_values(size_t(shape.vocab * shape.dim), 1.0f / std::sqrt(float(shape.dim)), 2);
  const std::vector<float> dlogp = random_values(size_t(shape.tokens), 1.0f, 3);
  std::vector<int32_t> labels(size_t(shape.tokens));
  std::mt19937 rng(4);
  for (int32_t& label : labels) label = int32_t(rng() % uint32_t(shape.vocab));
  std::vector<float> logp(size_t(shape.tokens)), lse(size_t(shape.tokens)),
      dhidden(hidden.size()), dweight(weight.size());
  const double seconds = best_seconds([&] {
    cpu::logprob_forward(shape, hidden.data(), weight.data(), DType::F32, labels.data(),
                         logp.data(), lse.data());
    cpu::logprob_backward(shape, hidden.data(), weight.data(), DType::F32, labels.data(),
                          lse.data(), dlogp.data(), dhidden.data(), dweight.data());
  });
  const double flops = 6.0 * shape.tokens * shape.dim * shape.vocab;
  print_result("logprob", "[" + parts[1] + "]", "f32", "fwd+bwd", flops / seconds / 1e9,
               peaks.f32, seconds);
  // Memory beside materialised f32 logits, at this shape and at the T=2048, V=32000.
  for (const cpu::LogprobShape& at : {shape, cpu::LogprobShape{2048, shape.dim, 32000}}) {
    const size_t scratch = std::max(cpu::logprob_scratch_bytes(at, false),
                                    cpu::logprob_scratch_bytes(at, true));
    const double logits = 4.0 * double(at.tokens) * double(at.vocab);
    std::printf("{\"op\":\"logprob-memory\",\"shape\":[%ld,%ld,%ld],\"impl\":\"zephyr-native\","
                "\"scratch_bytes\":%zu,\"logits_bytes\":%.0f,\"ratio\":%.1f}\n",
                at.tokens, at.dim, at.vocab, scratch, logits, logits / double(scratch));
  }
}

// adamw:N - one AdamW step (the host step of the CUDA model's offload_optimizer path, and the CPU
// model's) over N parameters with the bf16 copy, on each path this CPU can run (the same bits on
// all), and a plain copy of the four f32 arrays' bytes over the same threads for reference.
// Bytes per parameter: p, g, m, v read, p, m, v written, the bf16 copy written: 30.
void bench_adamw(const std::string& spec, const Peaks&) {
  const std::vector<std::string> parts = split(spec, ':');
  ZN_CHECK(parts.size() == 2, "zn_bench: expected adamw:N, got '", spec, "'");
  const long n = parse_numbers(parts[1], 1, spec)[0];
  std::vector<float> param = random_values(size_t(n), 0.05f, 1), grad = random_values(size_t(n), 1e-2f, 2);
  std::vector<float> m(size_t(n), 0.0f), v(size_t(n), 0.0f);
  std::vector<bf16> copy(static_cast<size_t>(n));
  std::vector<float> from(size_t(4 * n), 1.0f), to(size_t(4 * n), 0.0f);
  const double copy_seconds = best_seconds([&] {
    parallel_for(size_t(4 * n), size_t(1) << 16,
                 [&](size_t b, size_t e) { std::memcpy(to.data() + b, from.data() + b, (e - b) * sizeof(float)); });
  });
  const double copy_gbps = 2.0 * 16.0 * double(n) / copy_seconds / 1e9;  // read and written
  std::printf("{\"op\":\"adamw-copy\",\"shape\":[%ld],\"threads\":%d,\"gbps\":%.2f,\"seconds\":%.5f}\n", n,
              num_threads(), copy_gbps, copy_seconds);
  const CpuFeatures& f = cpu_features();
  std::vector<std::pair<CpuPath, bool>> paths{{CpuPath::Scalar, true},
                                              {CpuPath::Avx2, f.avx2 && f.fma},
                                              {CpuPath::Avx512Bf16, f.avx512f && f.avx512bw && f.avx512bf16}};
  long step = 0;
  for (const auto& [path, supported] : paths) {
    if (!supported) continue;
    const double seconds = best_seconds([&] {
      cpu::adamw_update(n, {1e-5, 0.9, 0.999, 1e-8, 0.0, ++step, 0.5f}, param.data(), grad.data(), m.data(), v.data(),
                        copy.data(), path);
    });
    const double gbps = 30.0 * double(n) / seconds / 1e9;
    std::printf("{\"op\":\"adamw\",\"shape\":[%ld],\"path\":\"%s\",\"threads\":%d,\"elements_per_s\":%.4g,"
                "\"gbps\":%.2f,\"copy_fraction\":%.3f,\"seconds\":%.5f}\n",
                n, cpu_path_name(path), num_threads(), double(n) / seconds, gbps, gbps / copy_gbps, seconds);
    std::fflush(stdout);
  }
}

// The ops this build can time, by spec prefix.
struct Op {
  const char* name;
  void (*bench)(const std::string& spec, const Peaks& peaks);
};
constexpr Op kOps[] = {{"gemm", bench_gemm}, {"attention", bench_attention}, {"logprob", bench_logprob}, {"adamw", bench_adamw}};

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string ops;
    for (const Op& op : kOps) ops += std::string(ops.empty() ? "" : ",") + "\"" + op.name + "\"";
    std::printf("{\"op\":\"machine\",\"cpu_path\":\"%s\",\"features\":\"%s\",\"threads\":%d,"
                "\"clock\":\"%s\",\"ops\":[%s]}\n",
                cpu_path_name(cpu_path()), cpu_features_string().c_str(), num_threads(),
                cpu_time_clock() ? "thread-cpu" : "wall", ops.c_str());
    ZN_CHECK(!cpu_time_clock() || num_threads() == 1, "zn_bench: ZN_BENCH_CPU_TIME=1 times one thread; set ZN_NUM_THREADS=1 (",
             num_threads(), " now)");
    if (argc == 2 && std::string(argv[1]) == "--list") return 0;
    const Peaks peaks = measure_and_report_peaks();
    for (int i = 1; i < argc; ++i) {
      const std::string spec = argv[i];
      if (spec == "peak") continue;
      const std::string name = spec.substr(0, spec.find(':'));
      const Op* op = nullptr;
      for (const Op& candidate : kOps) {
        if (name == candidate.name) op = &candidate;
      }
      ZN_CHECK(op != nullptr, "zn_bench: unknown case '", spec, "' (this build times: ", ops, ")");
      op->bench(spec, peaks);
    }
    // Measured again at the end: on a shared machine the best of both is the truer peak.
    if (argc > 1) measure_and_report_peaks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
