// Timings of the device check: GEMM (square and Mistral-7B shapes, cuBLASLt and the tensor-core
// kernel), attention forward and backward (Mistral-7B heads, sliding window and full causal), and
// the memory-bound kernels in GB/s. Median of event-timed runs after warm-up, on random data
// (never zeros: they run faster than real data).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "check.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/logprob.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/swiglu.h"

namespace zn::cuda::check {

namespace {

constexpr int kWarmup = 3, kReps = 10;

struct GemmBench {
  const char* name;
  long M, N, K;
  bool ta, tb;
  DType c;
  float beta;
};

void bench_gemm(Report& report, cudaStream_t stream) {
  const DType H = DType::BF16, F = DType::F32;
  // Mistral-7B at 8192 tokens per step: hidden 4096, 32 q heads + 8 kv heads of 128, MLP 14336.
  const std::vector<GemmBench> cases = {
      {"square", 4096, 4096, 4096, false, true, H, 0.0f},
      {"qkv y=x.Wt", 8192, 6144, 4096, false, true, H, 0.0f},
      {"o y=x.Wt", 8192, 4096, 4096, false, true, H, 0.0f},
      {"gate_up y=x.Wt", 8192, 28672, 4096, false, true, H, 0.0f},
      {"down y=x.Wt", 8192, 4096, 14336, false, true, H, 0.0f},
      {"down dx=dy.W", 8192, 14336, 4096, false, false, H, 0.0f},
      {"down dW+=dyt.x f32", 4096, 14336, 8192, true, false, F, 1.0f},
  };
  std::vector<GemmImpl> impls;
  if (have_cublaslt()) impls.push_back(GemmImpl::CublasLt);
  impls.push_back(GemmImpl::TensorCore);
  for (const GemmBench& g : cases) {
    const std::string shape = std::string(g.name) + " " + std::to_string(g.M) + "x" + std::to_string(g.N) +
                              "x" + std::to_string(g.K);
    guarded(report, "gemm-bench", shape, [&] {
      DeviceArray A = random_device(static_cast<size_t>(g.M * g.K), H), B = random_device(static_cast<size_t>(g.K * g.N), H);
      DeviceArray C = random_device(static_cast<size_t>(g.M * g.N), g.c);
      const Matrix a{A.data(), H, g.ta ? g.M : g.K}, b{B.data(), H, g.tb ? g.K : g.N};
      for (GemmImpl impl : impls) {
        const double ms = time_ms([&] {
          gemm(g.ta, g.tb, g.M, g.N, g.K, 1.0f, a, b, g.beta, OutMatrix{C.data(), g.c, g.N}, stream, impl);
        }, stream, kWarmup, kReps);
        report.timing("gemm", shape, gemm_impl_name(impl), ms, 2.0 * g.M * g.N * g.K, 0);
      }
    });
  }
}

// Number of (query, key) pairs the mask lets through: the work of one head.
double visible_pairs(const std::vector<int32_t>& cu, long window) {
  double pairs = 0;
  for (size_t d = 0; d + 1 < cu.size(); ++d)
    for (long i = 0; i < cu[d + 1] - cu[d]; ++i) pairs += double(window > 0 ? std::min(i + 1, window) : i + 1);
  return pairs;
}

void bench_attention(Report& report, cudaStream_t stream) {
  struct Case {
    long tokens, window;
    int docs;
  };
  const std::vector<Case> cases = {{4096, 0, 1}, {8192, 4096, 1}, {8192, 0, 1}, {8192, 0, 8}};
  const int H = 32, Hkv = 8, D = 128;
  for (const Case& c : cases) {
    const std::string shape = "T" + std::to_string(c.tokens) + " H32/8 D128 " +
                              (c.window > 0 ? "window " + std::to_string(c.window) : std::string("causal")) +
                              (c.docs > 1 ? " " + std::to_string(c.docs) + " docs" : std::string());
    guarded(report, "attn-bench", shape, [&] {
      const DType t = DType::BF16;
      std::vector<int32_t> cu;
      for (int d = 0; d <= c.docs; ++d) cu.push_back(int32_t(c.tokens * d / c.docs));
      const AttentionShape s{c.tokens, H, Hkv, D, c.window, float(1.0 / std::sqrt(double(D)))};
      DeviceArray q = random_device(static_cast<size_t>(c.tokens * H * D), t), k = random_device(static_cast<size_t>(c.tokens * Hkv * D), t),
                  v = random_device(static_cast<size_t>(c.tokens * Hkv * D), t), dout = random_device(static_cast<size_t>(c.tokens * H * D), t);
      DeviceArray out(q.size(), t), lse(static_cast<size_t>(c.tokens * H), DType::F32);
      DeviceArray dq(q.size(), t), dk(k.size(), t), dv(v.size(), t);
      DeviceBuffer<int32_t> dcu = upload_i32(cu);
      DeviceBuffer<unsigned char> workspace(attention_backward_workspace_bytes(s));
      const int n_docs = c.docs;
      auto forward = [&] {
        attention_forward(s, q.carray(), k.carray(), v.carray(), dcu.data(), n_docs, out.array(), lse.f32(), stream);
      };
      auto backward = [&] {
        attention_backward(s, q.carray(), k.carray(), v.carray(), dcu.data(), n_docs, out.carray(), lse.f32(),
                           dout.carray(), dq.array(), dk.array(), dv.array(), workspace.data(), stream);
      };
      const double fwd_flops = 4.0 * visible_pairs(cu, c.window) * D * H;
      const double fwd_ms = time_ms(forward, stream, kWarmup, kReps);
      report.timing("attention", shape + " fwd", "flash", fwd_ms, fwd_flops, 0);
      const double bwd_ms = time_ms(backward, stream, kWarmup, kReps);
      report.timing("attention", shape + " bwd", "flash", bwd_ms, 2.5 * fwd_flops, 0);
      report.timing("attention", shape + " fwd+bwd", "flash", fwd_ms + bwd_ms, 3.5 * fwd_flops, 0);
    });
  }
}

void bench_memory_bound(Report& report, cudaStream_t stream) {
  const DType H = DType::BF16;
  const long tokens = 8192, hidden = 4096, mlp = 14336;
  guarded(report, "rmsnorm-bench", "8192x4096 bf16", [&] {
    DeviceArray x = random_device(static_cast<size_t>(tokens * hidden), H), w = random_device(static_cast<size_t>(hidden), H);
    DeviceArray y(x.size(), H), dx(x.size(), H), dy = random_device(x.size(), H);
    DeviceArray rstd(static_cast<size_t>(tokens), DType::F32), dw = random_device(static_cast<size_t>(hidden), DType::F32);
    const double bytes = 2.0 * 2 * tokens * hidden;
    report.timing("rmsnorm", "8192x4096 bf16 fwd", "cuda", time_ms([&] {
      rmsnorm_forward(tokens, hidden, 1e-5f, x.carray(), w.carray(), y.array(), rstd.f32(), stream);
    }, stream, kWarmup, kReps), 0, bytes);
    report.timing("rmsnorm", "8192x4096 bf16 bwd", "cuda", time_ms([&] {
      rmsnorm_backward(tokens, hidden, x.carray(), w.carray(), rstd.f32(), dy.carray(), dx.array(), dw.f32(), stream);
    }, stream, kWarmup, kReps), 0, 1.5 * bytes);
  });
  guarded(report, "swiglu-bench", "8192x14336 bf16", [&] {
    const long n = tokens * mlp;
    DeviceArray g = random_device(static_cast<size_t>(n), H), u = random_device(static_cast<size_t>(n), H), o(static_cast<size_t>(n), H);
    DeviceArray dgate(static_cast<size_t>(n), H), dup(static_cast<size_t>(n), H);
    report.timing("swiglu", "8192x14336 bf16 fwd", "cuda", time_ms([&] {
      swiglu_forward(n, g.carray(), u.carray(), o.array(), stream);
    }, stream, kWarmup, kReps), 0, 3.0 * 2 * n);
    report.timing("swiglu", "8192x14336 bf16 bwd", "cuda", time_ms([&] {
      swiglu_backward(n, g.carray(), u.carray(), o.carray(), dgate.array(), dup.array(), stream);
    }, stream, kWarmup, kReps), 0, 5.0 * 2 * n);
  });
  guarded(report, "rope-bench", "8192x32x128 bf16", [&] {
    DeviceArray x = random_device(static_cast<size_t>(tokens * 32 * 128), H);
    std::vector<int32_t> positions(static_cast<size_t>(tokens));
    for (long i = 0; i < tokens; ++i) positions[i] = int32_t(i % 4096);
    DeviceBuffer<int32_t> pos = upload_i32(positions);
    report.timing("rope", "8192x32x128 bf16 fwd", "cuda", time_ms([&] {
      rope_forward(tokens, 32, 128, 10000.0f, pos.data(), x.array(), stream);
    }, stream, kWarmup, kReps), 0, 2.0 * 2 * x.size());
  });
  guarded(report, "adamw-bench", "256M params", [&] {
    const long n = 256L << 20;  // 7.7 GB moved per step
    DeviceArray p = random_device(static_cast<size_t>(n), DType::F32), g = random_device(static_cast<size_t>(n), DType::F32),
                m = random_device(static_cast<size_t>(n), DType::F32), v = random_device(static_cast<size_t>(n), DType::F32),
                copy(static_cast<size_t>(n), H);
    ZN_CUDA_CHECK(cudaMemset(v.data(), 0, v.size() * 4));
    const AdamWTensor tensor{p.f32(), g.f32(), m.f32(), v.f32(), static_cast<bf16*>(copy.data()), n};
    const AdamWStep hp{1e-5f, 0.9f, 0.999f, 1e-8f, 0.0f, 1, 1.0f};
    report.timing("adamw", "256M params f32 + bf16 copy", "cuda", time_ms([&] {
      adamw_update(&tensor, 1, hp, nullptr, stream);
    }, stream, kWarmup, kReps), 0, 30.0 * n);
  });
  guarded(report, "logprob-bench", "N8192 d4096 V32000 bf16", [&] {
    const LogprobShape s{tokens, hidden, 32000};
    DeviceArray h = random_device(static_cast<size_t>(tokens * hidden), H), w = random_device(static_cast<size_t>(32000 * hidden), H);
    DeviceArray logp(static_cast<size_t>(tokens), DType::F32), lse(static_cast<size_t>(tokens), DType::F32),
        dlogp = random_device(static_cast<size_t>(tokens), DType::F32), dh(static_cast<size_t>(tokens * hidden), DType::F32),
        dw = random_device(static_cast<size_t>(32000 * hidden), DType::F32);
    std::vector<int32_t> labels(static_cast<size_t>(tokens));
    for (long i = 0; i < tokens; ++i) labels[i] = int32_t((i * 7919) % 32000);
    DeviceBuffer<int32_t> dl = upload_i32(labels);
    DeviceBuffer<unsigned char> workspace(logprob_workspace_bytes(s));
    const double gemm_flops = 2.0 * tokens * 32000 * hidden;
    report.timing("logprob", "N8192 d4096 V32000 bf16 fwd", "cuda", time_ms([&] {
      logprob_forward(s, h.carray(), w.carray(), dl.data(), logp.f32(), lse.f32(), workspace.data(), stream, false);
    }, stream, 1, 5), gemm_flops, 0);
    report.timing("logprob", "N8192 d4096 V32000 bf16 bwd", "cuda", time_ms([&] {
      logprob_backward(s, h.carray(), w.carray(), dl.data(), lse.f32(), dlogp.f32(), dh.f32(), dw.f32(),
                       workspace.data(), stream);
    }, stream, 1, 5), 3 * gemm_flops, 0);
  });
}

// One Mistral-7B decoder layer, forward and backward, at 8192 tokens (two 4096-token documents,
// window 4096) as a training step runs it: bf16 weights and activations, f32 weight gradients
// accumulated by the dW GEMMs. The residual adds are left out (no kernel of their own yet).
void bench_layer(Report& report, cudaStream_t stream) {
  const long T = 8192, d = 4096, kv = 1024, ff = 14336;
  const int H = 32, Hkv = 8, D = 128;
  const DType B = DType::BF16, F = DType::F32;
  const std::string shape = "Mistral-7B layer T8192 (2 docs, window 4096)";
  guarded(report, "layer-bench", shape, [&] {
    auto bf = [&](long n) { return random_device(size_t(n), B); };
    auto f32 = [&](long n) { return random_device(size_t(n), F); };
    DeviceArray x = bf(T * d), xn = bf(T * d), q = bf(T * d), k = bf(T * kv), v = bf(T * kv), att = bf(T * d),
                h = bf(T * d), hn = bf(T * d), g = bf(T * ff), u = bf(T * ff), a = bf(T * ff), y = bf(T * d);
    DeviceArray wq = bf(d * d), wk = bf(kv * d), wv = bf(kv * d), wo = bf(d * d), wg = bf(ff * d), wu = bf(ff * d),
                wd = bf(d * ff), n1 = bf(d), n2 = bf(d);
    DeviceArray dy = bf(T * d), da = bf(T * ff), dg = bf(T * ff), du = bf(T * ff), dhn = bf(T * d), dh = bf(T * d),
                datt = bf(T * d), dq = bf(T * d), dk = bf(T * kv), dv = bf(T * kv), dxn = bf(T * d), dx = bf(T * d);
    DeviceArray gq = f32(d * d), gk = f32(kv * d), gv = f32(kv * d), go = f32(d * d), gg = f32(ff * d),
                gu = f32(ff * d), gd = f32(d * ff), gn1 = f32(d), gn2 = f32(d);
    DeviceArray rstd1(size_t(T), F), rstd2(size_t(T), F), lse(size_t(T * H), F);
    std::vector<int32_t> positions(static_cast<size_t>(T));
    for (long i = 0; i < T; ++i) positions[i] = int32_t(i % 4096);
    DeviceBuffer<int32_t> pos = upload_i32(positions), cu = upload_i32({0, 4096, 8192});
    const AttentionShape s{T, H, Hkv, D, 4096, float(1.0 / std::sqrt(double(D)))};
    DeviceBuffer<unsigned char> workspace(attention_backward_workspace_bytes(s));
    auto mm = [&](bool ta, bool tb, long M, long N, long K, const DeviceArray& A, const DeviceArray& Bm, float beta,
                  DeviceArray& C) {
      gemm(ta, tb, M, N, K, 1.0f, Matrix{A.data(), A.dtype(), ta ? M : K}, Matrix{Bm.data(), Bm.dtype(), tb ? K : N},
           beta, OutMatrix{C.data(), C.dtype(), N}, stream);
    };
    auto step = [&] {
      // forward
      rmsnorm_forward(T, d, 1e-5f, x.carray(), n1.carray(), xn.array(), rstd1.f32(), stream);
      mm(false, true, T, d, d, xn, wq, 0, q);
      mm(false, true, T, kv, d, xn, wk, 0, k);
      mm(false, true, T, kv, d, xn, wv, 0, v);
      rope_forward(T, H, D, 1e6f, pos.data(), q.array(), stream);
      rope_forward(T, Hkv, D, 1e6f, pos.data(), k.array(), stream);
      attention_forward(s, q.carray(), k.carray(), v.carray(), cu.data(), 2, att.array(), lse.f32(), stream);
      mm(false, true, T, d, d, att, wo, 0, h);
      rmsnorm_forward(T, d, 1e-5f, h.carray(), n2.carray(), hn.array(), rstd2.f32(), stream);
      mm(false, true, T, ff, d, hn, wg, 0, g);
      mm(false, true, T, ff, d, hn, wu, 0, u);
      swiglu_forward(T * ff, g.carray(), u.carray(), a.array(), stream);
      mm(false, true, T, d, ff, a, wd, 0, y);
      // backward
      mm(false, false, T, ff, d, dy, wd, 0, da);
      mm(true, false, d, ff, T, dy, a, 1, gd);
      swiglu_backward(T * ff, g.carray(), u.carray(), da.carray(), dg.array(), du.array(), stream);
      mm(false, false, T, d, ff, dg, wg, 0, dhn);
      mm(false, false, T, d, ff, du, wu, 1, dhn);
      mm(true, false, ff, d, T, dg, hn, 1, gg);
      mm(true, false, ff, d, T, du, hn, 1, gu);
      rmsnorm_backward(T, d, h.carray(), n2.carray(), rstd2.f32(), dhn.carray(), dh.array(), gn2.f32(), stream);
      mm(false, false, T, d, d, dh, wo, 0, datt);
      mm(true, false, d, d, T, dh, att, 1, go);
      attention_backward(s, q.carray(), k.carray(), v.carray(), cu.data(), 2, att.carray(), lse.f32(), datt.carray(),
                         dq.array(), dk.array(), dv.array(), workspace.data(), stream);
      rope_backward(T, H, D, 1e6f, pos.data(), dq.array(), stream);
      rope_backward(T, Hkv, D, 1e6f, pos.data(), dk.array(), stream);
      mm(false, false, T, d, d, dq, wq, 0, dxn);
      mm(false, false, T, d, kv, dk, wk, 1, dxn);
      mm(false, false, T, d, kv, dv, wv, 1, dxn);
      mm(true, false, d, d, T, dq, xn, 1, gq);
      mm(true, false, kv, d, T, dk, xn, 1, gk);
      mm(true, false, kv, d, T, dv, xn, 1, gv);
      rmsnorm_backward(T, d, x.carray(), n1.carray(), rstd1.f32(), dxn.carray(), dx.array(), gn1.f32(), stream);
    };
    const double params = double(d) * (d + 2 * kv + d) + 3.0 * d * ff;
    const double pairs = 2 * (4096.0 * 4097.0 / 2);
    const double flops = 6.0 * params * T + 3.5 * 4.0 * pairs * D * H;
    const double ms = time_ms(step, stream, 2, 5);
    report.timing("layer", shape + " fwd+bwd", "cuda", ms, flops, 0);
    std::printf("     layer step: %.0f tokens/s per layer\n", T / (ms * 1e-3));
  });
}

bool selected(const std::string& only, const char* op) { return only.empty() || std::string(op).rfind(only, 0) == 0; }

}  // namespace

void run_benchmarks(Report& report, cudaStream_t stream, const std::string& only) {
  std::printf("\n== timings (median of %d after %d warm-up runs)\n", kReps, kWarmup);
  if (selected(only, "gemm")) bench_gemm(report, stream);
  if (selected(only, "attention")) bench_attention(report, stream);
  if (selected(only, "memory")) bench_memory_bound(report, stream);
  if (selected(only, "layer")) bench_layer(report, stream);
}

}  // namespace zn::cuda::check
