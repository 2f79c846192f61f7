// Fused log-prob gathering against a float64 reference that materialises the logits: forward,
// analytic backward, finite differences, tile edges, ignored labels, bf16 weights, bad labels;
// the per-row exp loops on every SIMD path this CPU runs; both the forward-then-backward pair
// and the one-pass forward_backward.
#include <cmath>

#include "core/cpu_features.h"
#include "harness.h"
#include "kernels/cpu/logprob.h"

using namespace zn;
using namespace zn::test;

namespace {

struct Case {
  long tokens, dim, vocab;
  float hidden_scale = 1.0f;
  double ignored_fraction = 0.3;
};

struct Reference {
  std::vector<double> logp, lse, dhidden, dweight;
};

// Straightforward float64: full [N, V] logits, log-softmax, and the gradients of
// L = sum_n g[n] logp[n]: dz = g (onehot - softmax), dh = dz W, dW = dzᵀ h.
Reference reference(const Case& c, const std::vector<double>& h, const std::vector<double>& w,
                    const std::vector<int32_t>& labels, const std::vector<double>& g) {
  const long N = c.tokens, d = c.dim, V = c.vocab;
  Reference r{std::vector<double>(N), std::vector<double>(N), std::vector<double>(N * d, 0.0),
              std::vector<double>(V * d, 0.0)};
  std::vector<double> z(V);
  for (long n = 0; n < N; ++n) {
    double zmax = -INFINITY;
    for (long v = 0; v < V; ++v) {
      double s = 0;
      for (long k = 0; k < d; ++k) s += h[n * d + k] * w[v * d + k];
      z[v] = s;
      zmax = std::max(zmax, s);
    }
    double sum = 0;
    for (long v = 0; v < V; ++v) sum += std::exp(z[v] - zmax);
    r.lse[n] = zmax + std::log(sum);
    const bool ignored = labels[n] == cpu::kIgnoreIndex;
    r.logp[n] = ignored ? 0.0 : z[labels[n]] - r.lse[n];
    if (ignored) {
      r.lse[n] = 0.0;  // the contract: an ignored token's logits are never computed
      continue;
    }
    for (long v = 0; v < V; ++v) {
      const double dz = g[n] * ((v == labels[n] ? 1.0 : 0.0) - std::exp(z[v] - r.lse[n]));
      for (long k = 0; k < d; ++k) {
        r.dhidden[n * d + k] += dz * w[v * d + k];
        r.dweight[v * d + k] += dz * h[n * d + k];
      }
    }
  }
  return r;
}

std::vector<int32_t> random_labels(const Case& c) {
  std::uniform_int_distribution<int32_t> pick(0, int32_t(c.vocab - 1));
  std::bernoulli_distribution ignore(c.ignored_fraction);
  std::vector<int32_t> labels(c.tokens);
  for (auto& l : labels) l = ignore(rng()) ? cpu::kIgnoreIndex : pick(rng());
  return labels;
}

std::string describe(const Case& c, DType dtype, CpuPath path) {
  return "N=" + std::to_string(c.tokens) + " d=" + std::to_string(c.dim) + " V=" +
         std::to_string(c.vocab) + " " + dtype_name(dtype) + " " + cpu_path_name(path);
}

// Separate: logprob_forward then logprob_backward. Fused: logprob_forward_backward (no lse) with
// its own scratch. InPlace: the same in a caller's 16-row workspace, dhidden written over hidden.
enum class Kernel { Separate, Fused, InPlace };

void check_case(const Case& c, DType dtype, CpuPath path, Kernel kernel) {
  const bool fused = kernel != Kernel::Separate;
  const std::string what = describe(c, dtype, path) + (kernel == Kernel::Fused     ? " fused"
                                                       : kernel == Kernel::InPlace ? " fused in place"
                                                                                   : "");
  const long N = c.tokens, d = c.dim, V = c.vocab;
  const auto hidden = random_f32(N * d, c.hidden_scale);
  const auto weight = random_f32(V * d, 1.0f / std::sqrt(float(d)));
  const auto labels = random_labels(c);
  auto dlogp = random_f32(N);
  if (N > 3) dlogp[1] = 0.0f;  // a labelled token with no upstream gradient
  const auto weight_bf16 = to_bf16(weight);
  const void* w = dtype == DType::F32 ? static_cast<const void*>(weight.data()) : weight_bf16.data();

  std::vector<float> logp(N), lse(N), dhidden(N * d);
  poison(logp);
  poison(lse);
  poison(dhidden);
  const auto dweight_start = random_f32(V * d);
  auto dweight = dweight_start;
  const cpu::LogprobShape shape{N, d, V};
  if (kernel == Kernel::Fused) {
    cpu::logprob_forward_backward(shape, hidden.data(), w, dtype, labels.data(), dlogp.data(),
                                  logp.data(), dhidden.data(), dweight.data(), {}, path);
  } else if (kernel == Kernel::InPlace) {
    std::vector<float> workspace(cpu::logprob_fused_workspace_floats(shape, 16) + 5);
    poison(workspace);
    dhidden = hidden;
    cpu::logprob_forward_backward(shape, dhidden.data(), w, dtype, labels.data(), dlogp.data(),
                                  logp.data(), dhidden.data(), dweight.data(),
                                  {workspace.data(), workspace.size()}, path);
  } else {
    cpu::logprob_forward(shape, hidden.data(), w, dtype, labels.data(), logp.data(), lse.data(), path);
    cpu::logprob_backward(shape, hidden.data(), w, dtype, labels.data(), lse.data(), dlogp.data(),
                          dhidden.data(), dweight.data(), path);
  }
  std::vector<float> dweight_delta(V * d);
  for (long i = 0; i < V * d; ++i) dweight_delta[i] = dweight[i] - dweight_start[i];

  const auto g = to_f64(dlogp);
  if (dtype == DType::F32) {
    const auto ref = reference(c, to_f64(hidden), to_f64(weight), labels, g);
    expect_close(logp, ref.logp, kF32RelTol, "logprob logp " + what);
    if (!fused) expect_close(lse, ref.lse, kF32RelTol, "logprob lse " + what);
    expect_close(dhidden, ref.dhidden, kF32RelTol, "logprob dhidden " + what);
    expect_close(dweight_delta, ref.dweight, kF32RelTol, "logprob dweight " + what);
  } else {
    // The GEMM multiplies bf16-rounded hidden states and weights exactly: against a reference
    // fed the same rounded inputs, the forward and dweight keep f32 accuracy; dhidden's GEMM
    // also rounds dlogits to bf16. Against the unrounded inputs, bf16 tolerance.
    const auto rounded = reference(c, to_f64(round_bf16(hidden)), to_f64(round_bf16(weight)), labels, g);
    expect_close(logp, rounded.logp, kF32RelTol, "logprob logp (rounded inputs) " + what);
    if (!fused) expect_close(lse, rounded.lse, kF32RelTol, "logprob lse (rounded inputs) " + what);
    expect_close(dweight_delta, rounded.dweight, kF32RelTol, "logprob dweight (rounded inputs) " + what);
    expect_close(dhidden, rounded.dhidden, kBf16RelTol, "logprob dhidden (rounded inputs) " + what);
    const auto exact = reference(c, to_f64(hidden), to_f64(weight), labels, g);
    expect_close(logp, exact.logp, kBf16RelTol, "logprob logp " + what);
    expect_close(dhidden, exact.dhidden, kBf16RelTol, "logprob dhidden " + what);
    expect_close(dweight_delta, exact.dweight, kBf16RelTol, "logprob dweight " + what);
  }
  for (long n = 0; n < N; ++n) {
    if (labels[n] != cpu::kIgnoreIndex && dlogp[n] != 0.0f) continue;
    if (labels[n] == cpu::kIgnoreIndex) EXPECT(logp[n] == 0.0f, what, " ignored token ", n, " logp ", logp[n]);
    for (long k = 0; k < d; ++k) EXPECT(dhidden[n * d + k] == 0.0f, what, " token ", n, " dhidden");
  }
}

// Every case through both kernels, on the scalar path and, where the CPU has it, the AVX2 one.
void check_case(const Case& c, DType dtype) {
  for (Kernel kernel : {Kernel::Separate, Kernel::Fused, Kernel::InPlace}) {
    check_case(c, dtype, CpuPath::Scalar, kernel);
    if (cpu_features().avx2 && cpu_features().fma) check_case(c, dtype, CpuPath::Avx2, kernel);
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

ZN_TEST("logprob.single_tile") {
  check_case({1, 1, 1}, DType::F32);
  check_case({5, 7, 11}, DType::F32);
  check_case({9, 19, 50, 1.0f, 0.0}, DType::BF16);
}

ZN_TEST("logprob.tile_edges") {
  // N not a multiple of the 256-token chunk (and > 256 labelled tokens, so the backward packs
  // two panels); V not a multiple of the 2048-entry vocabulary chunk, with a 1-wide last tile.
  check_case({600, 19, 2085}, DType::F32);
  check_case({300, 8, 4097, 1.0f, 0.1}, DType::F32);
  check_case({300, 13, 2049}, DType::BF16);
}

ZN_TEST("logprob.large_logits_online_lse") {
  // Logits in the hundreds: a naive sum of exp overflows f32; the running max must rescale.
  check_case({40, 16, 2500, 60.0f}, DType::F32);
}

ZN_TEST("logprob.all_ignored") {
  check_case({7, 5, 9, 1.0f, 1.0}, DType::F32);
}

ZN_TEST("logprob.finite_differences") {
  // The analytic float64 gradients the other cases rely on, against central differences of the
  // float64 loss L = sum_n g[n] logp[n].
  const Case c{4, 3, 6, 1.0f, 0.25};
  const auto h = to_f64(random_f32(c.tokens * c.dim)), w = to_f64(random_f32(c.vocab * c.dim));
  auto labels = random_labels(c);
  labels[0] = 2;
  labels[1] = cpu::kIgnoreIndex;
  const auto g = to_f64(random_f32(c.tokens));
  auto loss = [&](const std::vector<double>& hv, const std::vector<double>& wv) {
    const auto r = reference(c, hv, wv, labels, g);
    double s = 0;
    for (long n = 0; n < c.tokens; ++n) s += g[n] * r.logp[n];
    return s;
  };
  const auto ref = reference(c, h, w, labels, g);
  expect_close(ref.dhidden, finite_difference([&](const std::vector<double>& hv) { return loss(hv, w); }, h),
               kFdRelTol, "logprob analytic dhidden vs finite differences");
  expect_close(ref.dweight, finite_difference([&](const std::vector<double>& wv) { return loss(h, wv); }, w),
               kFdRelTol, "logprob analytic dweight vs finite differences");
}

ZN_TEST("logprob.bad_labels_name_the_token") {
  const long N = 3, d = 2, V = 5;
  std::vector<float> h(N * d, 0.5f), w(V * d, 0.25f), logp(N), lse(N), dh(N * d), dw(V * d, 0.0f);
  std::vector<int32_t> labels{1, cpu::kIgnoreIndex, 5};
  const cpu::LogprobShape shape{N, d, V};
  const std::string forward = error_of([&] {
    cpu::logprob_forward(shape, h.data(), w.data(), DType::F32, labels.data(), logp.data(), lse.data());
  });
  EXPECT(forward.find("token 2") != std::string::npos && forward.find("label 5") != std::string::npos,
         "message: ", forward);
  labels = {-1, 0, 0};
  const std::string backward = error_of([&] {
    cpu::logprob_backward(shape, h.data(), w.data(), DType::F32, labels.data(), lse.data(),
                          logp.data(), dh.data(), dw.data());
  });
  EXPECT(backward.find("token 0") != std::string::npos && backward.find("label -1") != std::string::npos,
         "message: ", backward);
  labels = {0, 0, 7};
  const std::string fused = error_of([&] {
    cpu::logprob_forward_backward(shape, h.data(), w.data(), DType::F32, labels.data(), lse.data(),
                                  logp.data(), dh.data(), dw.data());
  });
  EXPECT(fused.find("logprob_forward_backward") != std::string::npos &&
             fused.find("token 2") != std::string::npos && fused.find("label 7") != std::string::npos,
         "message: ", fused);
}

ZN_TEST("logprob.scratch_is_small") {
  // The target: at V = 32000, T = 2048 (d = 4096) at least 10x less than the
  // materialised f32 logits.
  const cpu::LogprobShape shape{2048, 4096, 32000};
  const double logits_bytes = 4.0 * 2048 * 32000;
  const size_t forward = cpu::logprob_scratch_bytes(shape, false);
  const size_t backward = cpu::logprob_scratch_bytes(shape, true);
  EXPECT(logits_bytes / double(forward) >= 10 && logits_bytes / double(backward) >= 10,
         "forward ", forward, " backward ", backward, " bytes vs ", logits_bytes);
  // The one-pass kernel holds a 256-token panel's logits over the whole vocabulary: bounded by
  // the panel, not the batch (the same at 4x the tokens, bar the token index list).
  const size_t fused = cpu::logprob_fused_scratch_bytes(shape);
  const size_t fused_long = cpu::logprob_fused_scratch_bytes({4 * 2048, 4096, 32000});
  EXPECT(logits_bytes / double(fused) >= 6 && fused_long - fused == 3 * 2048 * sizeof(long),
         "fused ", fused, " bytes (", fused_long, " at 4x the tokens) vs ", logits_bytes);
}
