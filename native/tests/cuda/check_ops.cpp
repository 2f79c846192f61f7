// Kernel checks of the device check: each CUDA op on fresh random inputs (quantized to the storage
// dtype, so the references see exactly what the kernel saw) with poisoned outputs, compared with
// a float64 reference written here and, where the CPU kernel of the family is built
// (ZN_HAVE_CPU_<FAMILY>), with the CPU kernel.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "check.h"
#include "core/bf16.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/dpo.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/logprob.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/dpo.h"
#include "kernels/cuda/dropout.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/logprob.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/swiglu.h"
#include "tests/attention_sequences.h"

namespace zn::cuda::check {

namespace {

const char* dt(DType t) { return dtype_name(t); }
double tol_for(DType out) { return out == DType::BF16 ? kBf16Tol : kF32Tol; }

// ---------------------------------------------------------------- GEMM

struct GemmCase {
  long M, N, K;
  bool ta, tb;
  DType a, b, c;
  float alpha, beta;
  long pad;  // extra elements per stored row (unaligned leading dimensions when odd)
};

std::vector<double> gemm_reference(const GemmCase& g, const std::vector<float>& A, long lda,
                                   const std::vector<float>& B, long ldb,
                                   const std::vector<float>& C0, long ldc) {
  std::vector<double> C(static_cast<size_t>(g.M * ldc), 0.0);
  for (long i = 0; i < g.M; ++i)
    for (long j = 0; j < g.N; ++j) {
      double sum = 0;
      for (long p = 0; p < g.K; ++p)
        sum += double(g.ta ? A[p * lda + i] : A[i * lda + p]) * double(g.tb ? B[j * ldb + p] : B[p * ldb + j]);
      C[i * ldc + j] = g.alpha * sum + (g.beta == 0.0f ? 0.0 : double(g.beta) * C0[i * ldc + j]);
    }
  return C;
}

// Only the M x N window of C (padding columns are not part of the result).
std::vector<float> window(const std::vector<float>& C, long M, long N, long ldc) {
  std::vector<float> out;
  for (long i = 0; i < M; ++i) out.insert(out.end(), C.begin() + i * ldc, C.begin() + i * ldc + N);
  return out;
}
std::vector<double> window(const std::vector<double>& C, long M, long N, long ldc) {
  std::vector<double> out;
  for (long i = 0; i < M; ++i) out.insert(out.end(), C.begin() + i * ldc, C.begin() + i * ldc + N);
  return out;
}

void check_gemm_case(Report& report, cudaStream_t stream, const GemmCase& g, GemmImpl impl) {
  const std::string what = std::string(gemm_impl_name(impl)) + " " + (g.ta ? "T" : "N") + (g.tb ? "T" : "N") +
                           " " + std::to_string(g.M) + "x" + std::to_string(g.N) + "x" + std::to_string(g.K) +
                           " " + dt(g.a) + "*" + dt(g.b) + "->" + dt(g.c) + (g.beta != 0 ? " beta" : "") +
                           (g.pad % 2 ? " unaligned" : "");
  guarded(report, "gemm", what, [&] {
    const bool round = g.a == DType::BF16 || g.b == DType::BF16;
    const long lda = (g.ta ? g.M : g.K) + g.pad, ldb = (g.tb ? g.K : g.N) + g.pad, ldc = g.N + g.pad;
    const std::vector<float> A = quantize(random_normal(static_cast<size_t>((g.ta ? g.K : g.M) * lda)), round ? DType::BF16 : g.a);
    const std::vector<float> B = quantize(random_normal(static_cast<size_t>((g.tb ? g.N : g.K) * ldb)), round ? DType::BF16 : g.b);
    const std::vector<float> C0 = quantize(random_normal(static_cast<size_t>(g.M * ldc)), g.c);
    DeviceArray dA(A, g.a), dB(B, g.b);
    DeviceArray dC = g.beta != 0 ? DeviceArray(C0, g.c) : DeviceArray(C0.size(), g.c);
    gemm(g.ta, g.tb, g.M, g.N, g.K, g.alpha, Matrix{dA.data(), g.a, lda}, Matrix{dB.data(), g.b, ldb},
         g.beta, OutMatrix{dC.data(), g.c, ldc}, stream, impl);
    const std::vector<float> out = window(dC.read(), g.M, g.N, ldc);
    const std::vector<double> ref = window(gemm_reference(g, A, lda, B, ldb, C0, ldc), g.M, g.N, ldc);
    report.compare("gemm", what, "f64", rel_error(out, ref), tol_for(g.c));
#ifdef ZN_HAVE_CPU_GEMM
    if (g.c == DType::F32) {
      std::vector<bf16> Ab = std::vector<bf16>(A.size()), Bb = std::vector<bf16>(B.size());
      for (size_t i = 0; i < A.size(); ++i) Ab[i] = f32_to_bf16(A[i]);
      for (size_t i = 0; i < B.size(); ++i) Bb[i] = f32_to_bf16(B[i]);
      std::vector<float> C = C0;
      cpu::gemm(g.ta, g.tb, g.M, g.N, g.K, g.alpha,
                cpu::Matrix{g.a == DType::BF16 ? static_cast<const void*>(Ab.data()) : A.data(), g.a, lda},
                cpu::Matrix{g.b == DType::BF16 ? static_cast<const void*>(Bb.data()) : B.data(), g.b, ldb},
                g.beta, C.data(), ldc);
      report.compare("gemm", what, "cpu", rel_error(out, window(C, g.M, g.N, ldc)), kF32Tol);
    }
#endif
  });
}

// The tensor-core kernel against cuBLASLt at a size with many tiles (f32 outputs: the two differ
// only in summation order).
void check_gemm_cross(Report& report, cudaStream_t stream, bool ta, bool tb, long M, long N, long K) {
  const std::string what = std::string("mma vs cublaslt ") + (ta ? "T" : "N") + (tb ? "T" : "N") + " " +
                           std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K);
  guarded(report, "gemm", what, [&] {
    DeviceArray A(random_normal(static_cast<size_t>(M * K)), DType::BF16), B(random_normal(static_cast<size_t>(K * N)), DType::BF16);
    DeviceArray C1(static_cast<size_t>(M * N), DType::F32), C2(static_cast<size_t>(M * N), DType::F32);
    const Matrix a{A.data(), DType::BF16, ta ? M : K}, b{B.data(), DType::BF16, tb ? K : N};
    gemm(ta, tb, M, N, K, 1.0f, a, b, 0.0f, OutMatrix{C1.data(), DType::F32, N}, stream, GemmImpl::TensorCore);
    gemm(ta, tb, M, N, K, 1.0f, a, b, 0.0f, OutMatrix{C2.data(), DType::F32, N}, stream, GemmImpl::CublasLt);
    report.compare("gemm", what, "cublas", rel_error(C1.read(), C2.read()), kF32Tol);
  });
}

void check_gemm(Report& report, cudaStream_t stream) {
  const DType F = DType::F32, H = DType::BF16;
  for (int trans = 0; trans < 4; ++trans) {
    const bool ta = trans & 1, tb = trans & 2;
    if (have_cublaslt()) {
      check_gemm_case(report, stream, {200, 136, 72, ta, tb, H, H, F, 0.75f, 0.5f, 0}, GemmImpl::CublasLt);
      check_gemm_case(report, stream, {200, 136, 72, ta, tb, H, H, H, 1.0f, 0.0f, 8}, GemmImpl::CublasLt);
      check_gemm_case(report, stream, {129, 67, 40, ta, tb, F, F, F, 1.0f, 1.0f, 0}, GemmImpl::CublasLt);
    }
    check_gemm_case(report, stream, {200, 136, 72, ta, tb, H, H, F, 0.75f, 0.5f, 0}, GemmImpl::TensorCore);
    check_gemm_case(report, stream, {300, 260, 104, ta, tb, H, H, H, 1.0f, 0.0f, 8}, GemmImpl::TensorCore);
    check_gemm_case(report, stream, {37, 45, 29, ta, tb, H, H, F, 1.0f, 1.0f, 3}, GemmImpl::TensorCore);
    check_gemm_case(report, stream, {70, 33, 50, ta, tb, F, F, F, 1.0f, 0.5f, 1}, GemmImpl::Simple);
    check_gemm_case(report, stream, {70, 33, 50, ta, tb, H, F, F, 1.0f, 0.0f, 0}, GemmImpl::Simple);
    if (have_cublaslt()) check_gemm_cross(report, stream, ta, tb, 1024, 768, 1536);
  }
}

// ---------------------------------------------------------------- attention

struct AttentionCase {
  long tokens;
  int heads, kv_heads, head_dim;
  long window;
  std::vector<int32_t> cu_seqlens;
};

std::string describe(const AttentionCase& c, DType t, AttentionImpl impl) {
  return std::string(attention_impl_name(impl)) + " " + dt(t) + " T" + std::to_string(c.tokens) + " H" +
         std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " D" + std::to_string(c.head_dim) +
         " w" + std::to_string(c.window) + " docs" + std::to_string(c.cu_seqlens.size() - 1);
}

struct AttentionReference {
  std::vector<double> out, lse, dq, dk, dv;
};

AttentionReference attention_reference(const AttentionCase& c, const std::vector<float>& q,
                                       const std::vector<float>& k, const std::vector<float>& v,
                                       const std::vector<float>& dout) {
  const long T = c.tokens;
  const int H = c.heads, Hkv = c.kv_heads, D = c.head_dim, group = H / Hkv;
  const double scale = 1.0 / std::sqrt(double(D));
  AttentionReference r;
  r.out.assign(static_cast<size_t>(T * H * D), 0.0);
  r.lse.assign(static_cast<size_t>(H * T), 0.0);
  r.dq.assign(static_cast<size_t>(T * H * D), 0.0);
  r.dk.assign(static_cast<size_t>(T * Hkv * D), 0.0);
  r.dv.assign(static_cast<size_t>(T * Hkv * D), 0.0);
  std::vector<double> p, dp;
  for (size_t doc = 0; doc + 1 < c.cu_seqlens.size(); ++doc) {
    for (long i = c.cu_seqlens[doc]; i < c.cu_seqlens[doc + 1]; ++i) {
      long lo = c.cu_seqlens[doc];
      if (c.window > 0) lo = std::max(lo, i - c.window + 1);
      for (int h = 0; h < H; ++h) {
        const int kvh = h / group;
        const float* qi = &q[size_t((i * H + h) * D)];
        const float* gi = &dout[size_t((i * H + h) * D)];
        p.assign(static_cast<size_t>(i - lo + 1), 0.0);
        double m = -INFINITY;
        for (long j = lo; j <= i; ++j) {
          double s = 0;
          for (int d = 0; d < D; ++d) s += double(qi[d]) * k[size_t((j * Hkv + kvh) * D + d)];
          p[j - lo] = s * scale;
          m = std::max(m, p[j - lo]);
        }
        double sum = 0;
        for (double& x : p) sum += (x = std::exp(x - m));
        r.lse[size_t(h * T + i)] = m + std::log(sum);
        dp.assign(p.size(), 0.0);
        double dsum = 0;
        for (long j = lo; j <= i; ++j) {
          p[j - lo] /= sum;
          for (int d = 0; d < D; ++d) {
            const double vj = v[size_t((j * Hkv + kvh) * D + d)];
            r.out[size_t((i * H + h) * D + d)] += p[j - lo] * vj;
            dp[j - lo] += double(gi[d]) * vj;
          }
          dsum += p[j - lo] * dp[j - lo];
        }
        for (long j = lo; j <= i; ++j) {
          const double ds = p[j - lo] * (dp[j - lo] - dsum) * scale;
          for (int d = 0; d < D; ++d) {
            r.dq[size_t((i * H + h) * D + d)] += ds * k[size_t((j * Hkv + kvh) * D + d)];
            r.dk[size_t((j * Hkv + kvh) * D + d)] += ds * qi[d];
            r.dv[size_t((j * Hkv + kvh) * D + d)] += p[j - lo] * gi[d];
          }
        }
      }
    }
  }
  return r;
}

struct AttentionRun {
  std::vector<float> out, lse, dq, dk, dv;
};

AttentionRun run_attention(const AttentionCase& c, DType t, AttentionImpl impl, cudaStream_t stream,
                           const std::vector<float>& q, const std::vector<float>& k,
                           const std::vector<float>& v, const std::vector<float>& dout) {
  const AttentionShape shape{c.tokens, c.heads, c.kv_heads, c.head_dim, c.window,
                             float(1.0 / std::sqrt(double(c.head_dim)))};
  const int n_docs = int(c.cu_seqlens.size()) - 1;
  DeviceArray dq_in(q, t), dk_in(k, t), dv_in(v, t), dgrad(dout, t);
  DeviceArray out(q.size(), t), lse(static_cast<size_t>(c.tokens * c.heads), DType::F32);
  DeviceArray dq(q.size(), t), dk(k.size(), t), dv(v.size(), t);
  DeviceBuffer<int32_t> cu = upload_i32(c.cu_seqlens);
  DeviceBuffer<unsigned char> workspace(attention_backward_workspace_bytes(shape));
  attention_forward(shape, dq_in.carray(), dk_in.carray(), dv_in.carray(), cu.data(), n_docs,
                    out.array(), lse.f32(), stream, impl);
  attention_backward(shape, dq_in.carray(), dk_in.carray(), dv_in.carray(), cu.data(), n_docs,
                     out.carray(), lse.f32(), dgrad.carray(), dq.array(), dk.array(), dv.array(),
                     workspace.data(), stream, impl);
  return {out.read(), lse.read(), dq.read(), dk.read(), dv.read()};
}

void check_attention_case(Report& report, cudaStream_t stream, const AttentionCase& c, DType t,
                          AttentionImpl impl) {
  const std::string what = describe(c, t, impl);
  guarded(report, "attention", what, [&] {
    const size_t nq = size_t(c.tokens * c.heads * c.head_dim), nkv = size_t(c.tokens * c.kv_heads * c.head_dim);
    const std::vector<float> q = quantize(random_normal(nq), t), k = quantize(random_normal(nkv), t),
                             v = quantize(random_normal(nkv), t), dout = quantize(random_normal(nq), t);
    const AttentionRun got = run_attention(c, t, impl, stream, q, k, v, dout);
    const AttentionReference ref = attention_reference(c, q, k, v, dout);
    const double tol = tol_for(t);
    report.compare("attention", what + " out", "f64", rel_error(got.out, ref.out), tol);
    report.compare("attention", what + " lse", "f64", rel_error(got.lse, ref.lse), kF32Tol * 10);
    report.compare("attention", what + " dq", "f64", rel_error(got.dq, ref.dq), tol);
    report.compare("attention", what + " dk", "f64", rel_error(got.dk, ref.dk), tol);
    report.compare("attention", what + " dv", "f64", rel_error(got.dv, ref.dv), tol);
#ifdef ZN_HAVE_CPU_ATTENTION
    const cpu::AttentionShape shape{c.tokens, c.heads, c.kv_heads, c.head_dim, c.window,
                                    float(1.0 / std::sqrt(double(c.head_dim)))};
    const int n_docs = int(c.cu_seqlens.size()) - 1;
    std::vector<float> out(nq), lse(static_cast<size_t>(c.tokens * c.heads)), dq(nq), dk(nkv), dv(nkv);
    cpu::attention_forward(shape, q.data(), k.data(), v.data(), c.cu_seqlens.data(), n_docs, out.data(), lse.data());
    cpu::attention_backward(shape, q.data(), k.data(), v.data(), c.cu_seqlens.data(), n_docs, out.data(),
                            lse.data(), dout.data(), dq.data(), dk.data(), dv.data());
    report.compare("attention", what + " out", "cpu", rel_error(got.out, out), tol);
    report.compare("attention", what + " dq", "cpu", rel_error(got.dq, dq), tol);
    report.compare("attention", what + " dk", "cpu", rel_error(got.dk, dk), tol);
    report.compare("attention", what + " dv", "cpu", rel_error(got.dv, dv), tol);
#endif
  });
}

// Flash against the simple kernels at a size with many tiles, windows and document boundaries
// inside tiles (too large for a quick float64 reference).
void check_attention_cross(Report& report, cudaStream_t stream, const AttentionCase& c) {
  const std::string what = "flash vs simple T" + std::to_string(c.tokens) + " D" +
                           std::to_string(c.head_dim) + " w" + std::to_string(c.window);
  guarded(report, "attention", what, [&] {
    const size_t nq = size_t(c.tokens * c.heads * c.head_dim), nkv = size_t(c.tokens * c.kv_heads * c.head_dim);
    const DType t = DType::BF16;
    const std::vector<float> q = quantize(random_normal(nq), t), k = quantize(random_normal(nkv), t),
                             v = quantize(random_normal(nkv), t), dout = quantize(random_normal(nq), t);
    const AttentionRun flash = run_attention(c, t, AttentionImpl::Flash, stream, q, k, v, dout);
    const AttentionRun simple = run_attention(c, t, AttentionImpl::Simple, stream, q, k, v, dout);
    report.compare("attention", what + " out", "simple", rel_error(flash.out, simple.out), kBf16Tol);
    report.compare("attention", what + " lse", "simple", rel_error(flash.lse, simple.lse), kF32Tol * 10);
    report.compare("attention", what + " dq", "simple", rel_error(flash.dq, simple.dq), kBf16Tol);
    report.compare("attention", what + " dk", "simple", rel_error(flash.dk, simple.dk), kBf16Tol);
    report.compare("attention", what + " dv", "simple", rel_error(flash.dv, simple.dv), kBf16Tol);
  });
}

// Queries over separate keys (a KV cache) against the CPU kernel of the same contract.
#ifdef ZN_HAVE_CPU_ATTENTION
struct SequencesCase {
  std::string name;
  int heads, kv_heads, head_dim;
  long window;
  std::vector<test::SequenceRows> seqs;
};

void check_attention_sequences_case(Report& report, cudaStream_t stream, const SequencesCase& c, DType t) {
  const std::string what = std::string("sequences ") + dt(t) + " " + c.name;
  guarded(report, "attention", what, [&] {
    const test::SequenceArrays host(c.seqs);
    const long rows = host.query_rows;
    const size_t nq = size_t(rows * c.heads * c.head_dim), nkv = size_t(host.key_rows * c.kv_heads * c.head_dim);
    const std::vector<float> q = quantize(random_normal(nq), t), k = quantize(random_normal(nkv), t),
                             v = quantize(random_normal(nkv), t);
    const AttentionShape shape{rows, c.heads, c.kv_heads, c.head_dim, c.window,
                               float(1.0 / std::sqrt(double(c.head_dim)))};
    std::vector<float> cpu_out(nq), cpu_lse(size_t(rows * c.heads));
    cpu::attention_forward(shape, host.view(), q.data(), k.data(), v.data(), cpu_out.data(), cpu_lse.data());
    DeviceBuffer<int32_t> cu_q = upload_i32(host.cu_seqlens_q), q_pos = upload_i32(host.q_positions),
                          k_begin = upload_i32(host.k_begin), k_len = upload_i32(host.k_len),
                          k_pos = upload_i32(host.k_positions);
    DeviceArray dq(q, t), dk(k, t), dv(v, t), out(nq, t), lse(cpu_lse.size(), DType::F32);
    const AttentionSequences seqs{int(host.k_begin.size()), cu_q.data(), q_pos.data(), k_begin.data(),
                                  k_len.data(), k_pos.data(), host.key_rows};
    attention_forward(shape, seqs, dq.carray(), dk.carray(), dv.carray(), out.array(), lse.f32(), stream);
    const std::vector<float> got_lse = lse.read();
    // Rows that see no key: lse -inf on both sides; the rest compared as numbers.
    std::vector<float> seen_lse, seen_cpu_lse;
    size_t unseen_mismatches = 0;
    for (size_t r = 0; r < cpu_lse.size(); ++r) {
      if (std::isinf(cpu_lse[r]) || std::isinf(got_lse[r])) {
        unseen_mismatches += !(cpu_lse[r] == -INFINITY && got_lse[r] == -INFINITY);
      } else {
        seen_lse.push_back(got_lse[r]);
        seen_cpu_lse.push_back(cpu_lse[r]);
      }
    }
    report.compare("attention", what + " out", "cpu", rel_error(out.read(), cpu_out), tol_for(t));
    report.compare("attention", what + " lse", "cpu", rel_error(seen_lse, seen_cpu_lse), kF32Tol * 10);
    report.compare("attention", what + " rows without keys", "cpu", double(unseen_mismatches), 0.0);
  });
}

void check_attention_sequences(Report& report, cudaStream_t stream) {
  const DType F = DType::F32, H = DType::BF16;
  using test::positions;
  using test::rolling_buffer;
  // A prompt chunk after a cached prefix, and single-token decodes of different lengths (one
  // in a buffer with unused rows), GQA 4.
  const SequencesCase chunk_and_decodes{"chunk+decodes H8/2 D64", 8, 2, 64, 0,
                                        {{positions(70, 80), positions(0, 80)},
                                         {{0}, positions(0, 1)},
                                         {{99}, positions(0, 100)},
                                         {{40}, positions(0, 41), 64}}};
  // Wrapped rolling buffers (window = slots, and slots larger than the window for a chunk), a
  // sequence without keys, one whose keys are all in the future, one whose window has passed.
  const SequencesCase rolling_window{"rolling w24 H4/1 D40", 4, 1, 40, 24,
                                     {{{149}, rolling_buffer(150, 24)},
                                      {positions(60, 64), rolling_buffer(64, 32)},
                                      {{3}, {}},
                                      {{5}, positions(10, 20)},
                                      {{50, 9}, positions(0, 12)}}};
  const SequencesCase mistral{"decode H4/1 D128 w4096", 4, 1, 128, 4096,
                              {{{199}, positions(0, 200)}, {positions(196, 200), positions(0, 200)}}};
  for (DType t : {F, H}) {
    check_attention_sequences_case(report, stream, chunk_and_decodes, t);
    check_attention_sequences_case(report, stream, rolling_window, t);
  }
  check_attention_sequences_case(report, stream, mistral, H);
}
#endif

void check_attention(Report& report, cudaStream_t stream, bool quick) {
  const DType F = DType::F32, H = DType::BF16;
  // Several 64-row tiles, windows and document boundaries (one a 1-token document) inside tiles.
  const AttentionCase small_d128 = quick ? AttentionCase{150, 4, 2, 128, 40, {0, 60, 61, 150}}
                                         : AttentionCase{517, 8, 2, 128, 100, {0, 130, 131, 400, 517}};
  const AttentionCase full_d64 = quick ? AttentionCase{130, 2, 1, 64, 0, {0, 130}}
                                       : AttentionCase{300, 4, 2, 64, 0, {0, 300}};
  const AttentionCase mha_d128 = quick ? AttentionCase{100, 2, 2, 128, 30, {0, 100}}
                                       : AttentionCase{256, 2, 2, 128, 64, {0, 256}};
  const AttentionCase odd_d40 = quick ? AttentionCase{70, 2, 1, 40, 20, {0, 27, 70}}
                                      : AttentionCase{200, 4, 1, 40, 50, {0, 77, 200}};
  for (const AttentionCase* c : {&small_d128, &full_d64, &mha_d128}) {
    check_attention_case(report, stream, *c, H, AttentionImpl::Flash);
    check_attention_case(report, stream, *c, H, AttentionImpl::Simple);
  }
  check_attention_case(report, stream, small_d128, F, AttentionImpl::Simple);
  check_attention_case(report, stream, odd_d40, F, AttentionImpl::Auto);
  check_attention_case(report, stream, odd_d40, H, AttentionImpl::Auto);
#ifdef ZN_HAVE_CPU_ATTENTION
  check_attention_sequences(report, stream);
#endif
  if (quick) return;
  check_attention_cross(report, stream, {2048, 8, 2, 128, 700, {0, 600, 601, 1500, 2048}});
  check_attention_cross(report, stream, {1100, 4, 1, 64, 0, {0, 1100}});
}

// ---------------------------------------------------------------- RMSNorm

void check_rmsnorm_case(Report& report, cudaStream_t stream, DType x_t, DType w_t, DType y_t) {
  const long rows = 37, dim = 1000;
  const float eps = 1e-5f;
  const std::string what = std::string("x ") + dt(x_t) + " w " + dt(w_t) + " y " + dt(y_t);
  guarded(report, "rmsnorm", what, [&] {
    const std::vector<float> x = quantize(random_normal(static_cast<size_t>(rows * dim)), x_t);
    const std::vector<float> w = quantize(random_normal(static_cast<size_t>(dim), 0.5f), w_t);
    const std::vector<float> dy = quantize(random_normal(static_cast<size_t>(rows * dim)), y_t);
    const std::vector<float> dw0 = random_normal(static_cast<size_t>(dim));
    DeviceArray dx_in(x, x_t), dw_in(w, w_t), ddy(dy, y_t), y(x.size(), y_t), dx(x.size(), x_t);
    DeviceArray rstd(static_cast<size_t>(rows), DType::F32), dweight(dw0, DType::F32);
    rmsnorm_forward(rows, dim, eps, dx_in.carray(), dw_in.carray(), y.array(), rstd.f32(), stream);
    rmsnorm_backward(rows, dim, dx_in.carray(), dw_in.carray(), rstd.f32(), ddy.carray(), dx.array(),
                     dweight.f32(), stream);
    std::vector<double> ry(x.size()), rr(static_cast<size_t>(rows)), rdx(x.size()), rdw(dw0.begin(), dw0.end());
    for (long r = 0; r < rows; ++r) {
      double ss = 0, dot = 0;
      for (long i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
      const double inv = 1.0 / std::sqrt(ss / dim + eps);
      rr[r] = inv;
      for (long i = 0; i < dim; ++i) {
        ry[r * dim + i] = w[i] * x[r * dim + i] * inv;
        dot += double(dy[r * dim + i]) * w[i] * x[r * dim + i];
      }
      for (long i = 0; i < dim; ++i) {
        rdx[r * dim + i] = inv * dy[r * dim + i] * w[i] - inv * inv * inv * dot / dim * x[r * dim + i];
        rdw[i] += double(dy[r * dim + i]) * x[r * dim + i] * inv;
      }
    }
    report.compare("rmsnorm", what + " y", "f64", rel_error(y.read(), ry), tol_for(y_t));
    report.compare("rmsnorm", what + " rstd", "f64", rel_error(rstd.read(), rr), kF32Tol);
    report.compare("rmsnorm", what + " dx", "f64", rel_error(dx.read(), rdx), tol_for(x_t));
    report.compare("rmsnorm", what + " dweight", "f64", rel_error(dweight.read(), rdw), kF32Tol);
#ifdef ZN_HAVE_CPU_RMSNORM
    std::vector<float> cy(x.size()), cr(static_cast<size_t>(rows)), cdx(x.size()), cdw = dw0;
    cpu::rmsnorm_forward(rows, dim, eps, x.data(), w.data(), cy.data(), cr.data());
    cpu::rmsnorm_backward(rows, dim, x.data(), w.data(), cr.data(), dy.data(), cdx.data(), cdw.data());
    report.compare("rmsnorm", what + " y", "cpu", rel_error(y.read(), cy), tol_for(y_t));
    report.compare("rmsnorm", what + " dx", "cpu", rel_error(dx.read(), cdx), tol_for(x_t));
    report.compare("rmsnorm", what + " dweight", "cpu", rel_error(dweight.read(), cdw), kF32Tol);
#endif
  });
}

void check_rmsnorm(Report& report, cudaStream_t stream) {
  const DType F = DType::F32, H = DType::BF16;
  check_rmsnorm_case(report, stream, F, F, F);
  check_rmsnorm_case(report, stream, H, H, H);
  check_rmsnorm_case(report, stream, F, H, H);
}

// ---------------------------------------------------------------- RoPE

void check_rope_case(Report& report, cudaStream_t stream, DType t) {
  const long T = 300;
  const int H = 4, D = 128;
  const float theta = 10000.0f;
  const std::string what = std::string(dt(t)) + " T300 H4 D128 positions < 2048";
  guarded(report, "rope", what, [&] {
    std::vector<int32_t> positions(static_cast<size_t>(T));
    std::uniform_int_distribution<int32_t> start(0, 1800);
    for (long i = 0; i < T; ++i) positions[i] = i % 100 == 0 ? start(rng()) : positions[i - 1] + 1;
    const std::vector<float> x = quantize(random_normal(static_cast<size_t>(T * H * D)), t);
    const std::vector<float> g = quantize(random_normal(static_cast<size_t>(T * H * D)), t);
    DeviceArray dx(x, t), dg(g, t);
    DeviceBuffer<int32_t> pos = upload_i32(positions);
    rope_forward(T, H, D, theta, pos.data(), dx.array(), stream);
    rope_backward(T, H, D, theta, pos.data(), dg.array(), stream);
    std::vector<double> rx(x.size()), rg(g.size());
    for (long i = 0; i < T; ++i)
      for (int k = 0; k < D / 2; ++k) {
        // The f32 angle of HF (and of both kernels), then exact trigonometry.
        const float inv_freq = 1.0f / float(std::pow(double(theta), double(float(2 * k) / float(D))));
        const double angle = double(float(positions[i]) * inv_freq);
        const double c = std::cos(angle), s = std::sin(angle);
        for (int h = 0; h < H; ++h) {
          const size_t a = size_t((i * H + h) * D + k), b = a + D / 2;
          rx[a] = x[a] * c - x[b] * s;
          rx[b] = x[b] * c + x[a] * s;
          rg[a] = g[a] * c + g[b] * s;
          rg[b] = g[b] * c - g[a] * s;
        }
      }
    report.compare("rope", what + " forward", "f64", rel_error(dx.read(), rx), tol_for(t));
    report.compare("rope", what + " backward", "f64", rel_error(dg.read(), rg), tol_for(t));
#ifdef ZN_HAVE_CPU_ROPE
    std::vector<float> cx = x, cg = g;
    cpu::rope_forward(T, H, D, theta, positions.data(), cx.data());
    cpu::rope_backward(T, H, D, theta, positions.data(), cg.data());
    report.compare("rope", what + " forward", "cpu", rel_error(dx.read(), cx), tol_for(t));
    report.compare("rope", what + " backward", "cpu", rel_error(dg.read(), cg), tol_for(t));
#endif
  });
}

// ---------------------------------------------------------------- SwiGLU

void check_swiglu_case(Report& report, cudaStream_t stream, DType t) {
  const long n = 10007;
  const std::string what = std::string(dt(t)) + " n10007";
  guarded(report, "swiglu", what, [&] {
    const std::vector<float> gate = quantize(random_normal(static_cast<size_t>(n), 3.0f), t), up = quantize(random_normal(static_cast<size_t>(n)), t),
                             dout = quantize(random_normal(static_cast<size_t>(n)), t);
    DeviceArray dgate_in(gate, t), dup_in(up, t), ddout(dout, t), out(static_cast<size_t>(n), t), dgate(static_cast<size_t>(n), t), dup(static_cast<size_t>(n), t);
    swiglu_forward(n, dgate_in.carray(), dup_in.carray(), out.array(), stream);
    swiglu_backward(n, dgate_in.carray(), dup_in.carray(), ddout.carray(), dgate.array(), dup.array(), stream);
    std::vector<double> ro(static_cast<size_t>(n)), rdg(static_cast<size_t>(n)), rdu(static_cast<size_t>(n));
    for (long i = 0; i < n; ++i) {
      const double g = gate[i], s = 1.0 / (1.0 + std::exp(-g));
      ro[i] = g * s * up[i];
      rdg[i] = dout[i] * up[i] * s * (1 + g * (1 - s));
      rdu[i] = dout[i] * g * s;
    }
    report.compare("swiglu", what + " out", "f64", rel_error(out.read(), ro), tol_for(t));
    report.compare("swiglu", what + " dgate", "f64", rel_error(dgate.read(), rdg), tol_for(t));
    report.compare("swiglu", what + " dup", "f64", rel_error(dup.read(), rdu), tol_for(t));
#ifdef ZN_HAVE_CPU_SWIGLU
    std::vector<float> co(static_cast<size_t>(n)), cdg(static_cast<size_t>(n)), cdu(static_cast<size_t>(n));
    cpu::swiglu_forward(n, gate.data(), up.data(), co.data());
    cpu::swiglu_backward(n, gate.data(), up.data(), dout.data(), cdg.data(), cdu.data());
    report.compare("swiglu", what + " out", "cpu", rel_error(out.read(), co), tol_for(t));
    report.compare("swiglu", what + " dgate", "cpu", rel_error(dgate.read(), cdg), tol_for(t));
#endif
  });
}

// ---------------------------------------------------------------- dropout

// The masks are the CPU's, bit for bit: the expected values are the spec's (kernels/cpu/dropout.h,
// header-only, so no CPU kernel needs to be built), f32 arithmetic rounded to y's dtype.
void check_dropout_case(Report& report, cudaStream_t stream, DType x_t, DType y_t) {
  const long rows = 97, cols = 211;
  const std::string what = std::string("x ") + dt(x_t) + " y " + dt(y_t);
  guarded(report, "dropout", what, [&] {
    const size_t n = static_cast<size_t>(rows * cols);
    const std::vector<float> x = quantize(random_normal(n), x_t), y0 = quantize(random_normal(n), y_t);
    const cpu::DropoutMask mask = cpu::dropout_mask(0.1, counter_stream_key(7, 3));
    DeviceArray dx(x, x_t), dy(n, y_t), acc(y0, y_t);
    dropout_forward(rows, cols, mask, dx.carray(), dy.array(), false, stream);
    dropout_forward(rows, cols, mask, dx.carray(), acc.array(), true, stream);
    std::vector<float> want(n), want_acc(n);
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i) {
      const float value = cpu::dropout_keeps(mask, i) ? x[i] * mask.scale : 0.0f;
      kept += cpu::dropout_keeps(mask, i);
      want[i] = value;
      want_acc[i] = y0[i] + value;
    }
    want = quantize(want, y_t);
    want_acc = quantize(want_acc, y_t);
    const std::vector<float> got = dy.read(), got_acc = acc.read();
    size_t differing = 0;
    for (size_t i = 0; i < n; ++i) differing += got[i] != want[i] || got_acc[i] != want_acc[i];
    report.compare("dropout", what + " elements differing from the spec's masks", "bits", double(differing), 0.0);
    report.compare("dropout", what + " kept fraction vs 0.9", "1", std::fabs(double(kept) / double(n) - 0.9), 0.01);
  });
}

// ---------------------------------------------------------------- embedding

void check_embedding_case(Report& report, cudaStream_t stream, DType table_t, DType out_t) {
  const long vocab = 1000, dim = 96, tokens = 300, pad = 3;
  const std::string what = std::string("table ") + dt(table_t) + " out " + dt(out_t);
  guarded(report, "embedding", what, [&] {
    std::vector<int32_t> ids(static_cast<size_t>(tokens));
    std::uniform_int_distribution<int32_t> id(0, int32_t(vocab - 1));
    for (long i = 0; i < tokens; ++i) ids[i] = i % 7 == 0 ? int32_t(pad) : i % 5 == 0 ? 42 : id(rng());
    const std::vector<float> table = quantize(random_normal(static_cast<size_t>(vocab * dim)), table_t);
    const std::vector<float> dout = quantize(random_normal(static_cast<size_t>(tokens * dim)), out_t);
    const std::vector<float> dtable0 = random_normal(static_cast<size_t>(vocab * dim));
    DeviceArray dtab(table, table_t), ddout(dout, out_t), out(static_cast<size_t>(tokens * dim), out_t), dtable(dtable0, DType::F32);
    DeviceBuffer<int32_t> dids = upload_i32(ids);
    embedding_forward(tokens, dim, vocab, dids.data(), dtab.carray(), out.array(), stream);
    embedding_backward(tokens, dim, vocab, dids.data(), ddout.carray(), pad, dtable.f32(), stream);
    std::vector<double> ro(static_cast<size_t>(tokens * dim)), rdt(dtable0.begin(), dtable0.end());
    for (long t = 0; t < tokens; ++t)
      for (long d = 0; d < dim; ++d) {
        ro[t * dim + d] = table[ids[t] * dim + d];
        if (ids[t] != pad) rdt[ids[t] * dim + d] += dout[t * dim + d];
      }
    report.compare("embedding", what + " forward", "f64", rel_error(out.read(), ro), 0.0);
    report.compare("embedding", what + " backward", "f64", rel_error(dtable.read(), rdt), kF32Tol);
#ifdef ZN_HAVE_CPU_EMBEDDING
    std::vector<bf16> table_bf16(table.size());
    for (size_t i = 0; i < table.size(); ++i) table_bf16[i] = f32_to_bf16(table[i]);
    std::vector<float> co(static_cast<size_t>(tokens * dim)), cdt = dtable0;
    cpu::embedding_forward(tokens, dim, vocab, ids.data(),
                           table_t == DType::BF16 ? static_cast<const void*>(table_bf16.data()) : table.data(),
                           table_t, co.data());
    cpu::embedding_backward(tokens, dim, vocab, ids.data(), dout.data(), pad, cdt.data());
    report.compare("embedding", what + " forward", "cpu", rel_error(out.read(), co), 0.0);
    report.compare("embedding", what + " backward", "cpu", rel_error(dtable.read(), cdt), kF32Tol);
#endif
  });
}

void check_embedding_bad_id(Report& report, cudaStream_t stream) {
  guarded(report, "embedding", "id out of range is an error", [&] {
    const std::vector<int32_t> ids = {1, 2, 1000, 3};
    DeviceArray table(random_normal(static_cast<size_t>(1000 * 8)), DType::F32), out(static_cast<size_t>(4 * 8), DType::F32);
    DeviceBuffer<int32_t> dids = upload_i32(ids);
    std::string message;
    try {
      embedding_forward(4, 8, 1000, dids.data(), table.carray(), out.array(), stream);
    } catch (const Error& e) {
      message = e.what();
    }
    const bool named = message.find("ids[2] = 1000") != std::string::npos;
    std::printf("     embedding bad id message: %s\n", message.c_str());
    report.compare("embedding", "id out of range is an error", "text", named ? 0.0 : 1.0, 0.0);
  });
}

// ---------------------------------------------------------------- log-probs

void check_logprob_case(Report& report, cudaStream_t stream, DType t, LogprobChunks chunks) {
  const LogprobShape shape{300, 64, 3000};
  const std::string what = std::string(dt(t)) + " N300 d64 V3000 chunks " + std::to_string(chunks.tokens) +
                           "x" + std::to_string(chunks.vocab);
  guarded(report, "logprob", what, [&] {
    const long N = shape.tokens, d = shape.dim, V = shape.vocab;
    const std::vector<float> hidden = quantize(random_normal(static_cast<size_t>(N * d)), t);
    const std::vector<float> weight = quantize(random_normal(static_cast<size_t>(V * d), 0.3f), t);
    const std::vector<float> dlogp = random_normal(static_cast<size_t>(N));
    const std::vector<float> dweight0 = random_normal(static_cast<size_t>(V * d), 0.1f);
    std::vector<int32_t> labels(static_cast<size_t>(N));
    std::uniform_int_distribution<int32_t> label(0, int32_t(V - 1));
    for (long n = 0; n < N; ++n) labels[n] = n % 11 == 0 ? kIgnoreIndex : label(rng());
    DeviceArray dh(hidden, t), dw(weight, t), ddl(dlogp, DType::F32), logp(static_cast<size_t>(N), DType::F32),
        lse(static_cast<size_t>(N), DType::F32), dhidden(static_cast<size_t>(N * d), DType::F32), dweight(dweight0, DType::F32);
    DeviceBuffer<int32_t> dlabels = upload_i32(labels);
    DeviceBuffer<unsigned char> workspace(logprob_workspace_bytes(shape, chunks));
    logprob_forward(shape, dh.carray(), dw.carray(), dlabels.data(), logp.f32(), lse.f32(), workspace.data(),
                    stream, true, chunks);
    logprob_backward(shape, dh.carray(), dw.carray(), dlabels.data(), lse.f32(), ddl.f32(), dhidden.f32(),
                     dweight.f32(), workspace.data(), stream, chunks);
    std::vector<double> rl(static_cast<size_t>(N)), rlse(static_cast<size_t>(N)), rdh(static_cast<size_t>(N * d), 0.0), rdw(dweight0.begin(), dweight0.end());
    std::vector<double> z(static_cast<size_t>(V));
    for (long n = 0; n < N; ++n) {
      double m = -INFINITY;
      for (long v = 0; v < V; ++v) {
        double s = 0;
        for (long k = 0; k < d; ++k) s += double(hidden[n * d + k]) * weight[v * d + k];
        z[v] = s;
        m = std::max(m, s);
      }
      double sum = 0;
      for (long v = 0; v < V; ++v) sum += std::exp(z[v] - m);
      rlse[n] = m + std::log(sum);
      rl[n] = labels[n] == kIgnoreIndex ? 0.0 : z[labels[n]] - rlse[n];
      const double g = labels[n] == kIgnoreIndex ? 0.0 : dlogp[n];
      for (long v = 0; v < V; ++v) {
        const double dz = g * ((v == labels[n] ? 1.0 : 0.0) - std::exp(z[v] - rlse[n]));
        if (dz == 0.0) continue;
        for (long k = 0; k < d; ++k) {
          rdh[n * d + k] += dz * weight[v * d + k];
          rdw[v * d + k] += dz * hidden[n * d + k];
        }
      }
    }
    // The one-pass kernel on the same inputs, outputs poisoned, dweight from the same start.
    DeviceArray logp1(static_cast<size_t>(N), DType::F32), dhidden1(static_cast<size_t>(N * d), DType::F32),
        dweight1(dweight0, DType::F32);
    logprob_forward_backward(shape, dh.carray(), dw.carray(), dlabels.data(), ddl.f32(), logp1.f32(), dhidden1.f32(),
                             dweight1.f32(), workspace.data(), stream, true, chunks);
    const double tol = t == DType::BF16 ? kBf16Tol : kF32Tol * 10;
    report.compare("logprob", what + " logp", "f64", rel_error(logp.read(), rl), t == DType::BF16 ? kBf16InputTol : kF32Tol);
    report.compare("logprob", what + " lse", "f64", rel_error(lse.read(), rlse), kF32Tol);
    report.compare("logprob", what + " dhidden", "f64", rel_error(dhidden.read(), rdh), tol);
    report.compare("logprob", what + " dweight", "f64", rel_error(dweight.read(), rdw), tol);
    report.compare("logprob", what + " one-pass logp", "f64", rel_error(logp1.read(), rl),
                   t == DType::BF16 ? kBf16InputTol : kF32Tol);
    report.compare("logprob", what + " one-pass dhidden", "f64", rel_error(dhidden1.read(), rdh), tol);
    report.compare("logprob", what + " one-pass dweight", "f64", rel_error(dweight1.read(), rdw), tol);
#ifdef ZN_HAVE_CPU_LOGPROB
    std::vector<bf16> weight_bf16(weight.size());
    for (size_t i = 0; i < weight.size(); ++i) weight_bf16[i] = f32_to_bf16(weight[i]);
    const void* w = t == DType::BF16 ? static_cast<const void*>(weight_bf16.data()) : weight.data();
    std::vector<float> cl(static_cast<size_t>(N)), clse(static_cast<size_t>(N)), cdh(static_cast<size_t>(N * d)), cdw = dweight0;
    cpu::logprob_forward(shape, hidden.data(), w, t, labels.data(), cl.data(), clse.data());
    cpu::logprob_backward(shape, hidden.data(), w, t, labels.data(), clse.data(), dlogp.data(), cdh.data(), cdw.data());
    report.compare("logprob", what + " logp", "cpu", rel_error(logp.read(), cl), t == DType::BF16 ? kBf16InputTol : kF32Tol);
    report.compare("logprob", what + " dhidden", "cpu", rel_error(dhidden.read(), cdh), tol);
    report.compare("logprob", what + " dweight", "cpu", rel_error(dweight.read(), cdw), tol);
    std::vector<float> fl(static_cast<size_t>(N)), fdh(static_cast<size_t>(N * d)), fdw = dweight0;
    cpu::logprob_forward_backward(shape, hidden.data(), w, t, labels.data(), dlogp.data(), fl.data(), fdh.data(),
                                  fdw.data());
    report.compare("logprob", what + " one-pass logp", "cpu", rel_error(logp1.read(), fl),
                   t == DType::BF16 ? kBf16InputTol : kF32Tol);
    report.compare("logprob", what + " one-pass dhidden", "cpu", rel_error(dhidden1.read(), fdh), tol);
    report.compare("logprob", what + " one-pass dweight", "cpu", rel_error(dweight1.read(), fdw), tol);
#endif
  });
}

// ---------------------------------------------------------------- DPO

void check_dpo_case(Report& report, cudaStream_t stream, DpoLossType type, bool counts) {
  const long pairs = 77;
  const float beta = 0.1f, ls = type == DpoLossType::Sigmoid ? 0.1f : 0.0f;
  const char* names[] = {"sigmoid", "ipo", "hinge"};
  const std::string what = std::string(names[int(type)]) + (counts ? " with token counts" : "");
  guarded(report, "dpo", what, [&] {
    std::vector<float> pc = random_normal(static_cast<size_t>(pairs), 20.0f), pr = random_normal(static_cast<size_t>(pairs), 20.0f);
    std::vector<float> rc = random_normal(static_cast<size_t>(pairs), 20.0f), rr = random_normal(static_cast<size_t>(pairs), 20.0f);
    for (long i = 0; i < pairs; ++i) pc[i] -= 100, pr[i] -= 100, rc[i] -= 100, rr[i] -= 100;
    std::vector<int32_t> nc(static_cast<size_t>(pairs)), nr(static_cast<size_t>(pairs));
    std::uniform_int_distribution<int32_t> count(0, 200);
    for (long i = 0; i < pairs; ++i) nc[i] = count(rng()), nr[i] = count(rng());
    DeviceArray dpc(pc, DType::F32), dpr(pr, DType::F32), drc(rc, DType::F32), drr(rr, DType::F32);
    DeviceArray losses(static_cast<size_t>(pairs), DType::F32), gc(static_cast<size_t>(pairs), DType::F32), gr(static_cast<size_t>(pairs), DType::F32);
    DeviceBuffer<int32_t> dnc = upload_i32(nc), dnr = upload_i32(nr);
    DeviceBuffer<DpoMetrics> metrics(1);
    dpo_loss(pairs, type, beta, ls, dpc.f32(), dpr.f32(), drc.f32(), drr.f32(), losses.f32(), gc.f32(), gr.f32(),
             counts ? dnc.data() : nullptr, counts ? dnr.data() : nullptr, metrics.data(), stream);
    DpoMetrics got{};
    ZN_CUDA_CHECK(cudaStreamSynchronize(stream));
    metrics.download(&got, 1);
    std::vector<double> rl(static_cast<size_t>(pairs)), rgc(static_cast<size_t>(pairs)), rgr(static_cast<size_t>(pairs)), rm(7, 0.0);
    for (long i = 0; i < pairs; ++i) {
      const float chosen = pc[i] - rc[i], rejected = pr[i] - rr[i];
      const double z = double(beta) * double(chosen - rejected);
      const double n_c = counts ? std::max(1.0, double(nc[i])) : 1.0, n_r = counts ? std::max(1.0, double(nr[i])) : 1.0;
      auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
      if (type == DpoLossType::Sigmoid) {
        rl[i] = -(1 - ls) * std::log(sig(z)) - ls * std::log(sig(-z));
        const double dz = -(1 - ls) * sig(-z) + ls * sig(z);
        rgc[i] = beta * dz;
        rgr[i] = -beta * dz;
      } else if (type == DpoLossType::Ipo) {
        const double gap = chosen / n_c - rejected / n_r - 1 / (2 * double(beta));
        rl[i] = gap * gap;
        rgc[i] = 2 * gap / n_c;
        rgr[i] = -2 * gap / n_r;
      } else {
        const double margin = 1 - z;
        rl[i] = margin > 0 ? margin : 0;
        rgc[i] = margin > 0 ? -beta : 0;
        rgr[i] = margin > 0 ? beta : 0;
      }
      const float reward_c = beta * chosen, reward_r = beta * rejected;
      rm[0] += rl[i];
      rm[1] += reward_c;
      rm[2] += reward_r;
      rm[3] += reward_c > reward_r ? 1 : 0;
      rm[4] += double(reward_c) - reward_r;
      rm[5] += pc[i];
      rm[6] += pr[i];
    }
    for (double& m : rm) m /= pairs;
    const std::vector<float> gm = {float(got.loss_mean), float(got.rewards_chosen), float(got.rewards_rejected),
                                   float(got.rewards_accuracies), float(got.rewards_margins),
                                   float(got.logps_chosen), float(got.logps_rejected)};
    report.compare("dpo", what + " losses", "f64", rel_error(losses.read(), rl), kF32Tol);
    report.compare("dpo", what + " dchosen", "f64", rel_error(gc.read(), rgc), kF32Tol);
    report.compare("dpo", what + " drejected", "f64", rel_error(gr.read(), rgr), kF32Tol);
    report.compare("dpo", what + " metrics", "f64", rel_error(gm, rm), kF32Tol);
#ifdef ZN_HAVE_CPU_DPO
    std::vector<float> cl(static_cast<size_t>(pairs)), cgc(static_cast<size_t>(pairs)), cgr(static_cast<size_t>(pairs));
    cpu::dpo_loss(pairs, type, beta, ls, pc.data(), pr.data(), rc.data(), rr.data(), cl.data(), cgc.data(), cgr.data(),
                  counts ? nc.data() : nullptr, counts ? nr.data() : nullptr);
    report.compare("dpo", what + " losses", "cpu", rel_error(losses.read(), cl), kF32Tol);
    report.compare("dpo", what + " dchosen", "cpu", rel_error(gc.read(), cgc), kF32Tol);
#endif
  });
}

// ---------------------------------------------------------------- AdamW

void check_adamw(Report& report, cudaStream_t stream) {
  const std::string what = "5 tensors, 2 steps, clip on device";
  guarded(report, "adamw", what, [&] {
    const std::vector<long> sizes = {1000, 4096, 7, 100000, 33};
    const int count = int(sizes.size());
    std::vector<std::vector<float>> p, g, m, v;
    std::vector<DeviceArray> dp, dg, dm, dv, dbf;
    for (int t = 0; t < count; ++t) {
      p.push_back(random_normal(static_cast<size_t>(sizes[t])));
      g.push_back(random_normal(static_cast<size_t>(sizes[t]), 0.01f));
      m.push_back(random_normal(static_cast<size_t>(sizes[t]), 0.001f));
      std::vector<float> v0 = random_normal(static_cast<size_t>(sizes[t]), 1e-4f);
      for (float& x : v0) x = x * x;
      v.push_back(v0);
      dp.emplace_back(p[t], DType::F32);
      dg.emplace_back(g[t], DType::F32);
      dm.emplace_back(m[t], DType::F32);
      dv.emplace_back(v[t], DType::F32);
      dbf.emplace_back(static_cast<size_t>(sizes[t]), DType::BF16);
    }
    std::vector<AdamWTensor> tensors;
    std::vector<GradSpan> grads;
    for (int t = 0; t < count; ++t) {
      tensors.push_back({dp[t].f32(), dg[t].f32(), dm[t].f32(), dv[t].f32(),
                         t % 2 == 0 ? static_cast<bf16*>(dbf[t].data()) : nullptr, sizes[t]});
      grads.push_back({dg[t].f32(), sizes[t]});
    }
    DeviceBuffer<double> sumsq(1);
    DeviceBuffer<float> coef(1);
    const double max_norm = 1.0;
    AdamWStep hp{1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1, 1.0f};
    for (long step = 1; step <= 2; ++step) {
      hp.step = step;
      sum_of_squares(grads.data(), count, sumsq.data(), stream);
      clip_coefficient(sumsq.data(), max_norm, coef.data(), stream);
      adamw_update(tensors.data(), count, hp, coef.data(), stream);
    }
    ZN_CUDA_CHECK(cudaStreamSynchronize(stream));
    double got_sumsq = 0;
    sumsq.download(&got_sumsq, 1);
    // float64 reference of the same two steps
    double ref_sumsq = 0;
    for (int t = 0; t < count; ++t)
      for (float x : g[t]) ref_sumsq += double(x) * x;
    const double clip = std::min(1.0, max_norm / (std::sqrt(ref_sumsq) + 1e-6));
    std::vector<double> rp, rm, rv, rbf;
    std::vector<float> gp, gm, gv, gbf;
    for (int t = 0; t < count; ++t) {
      std::vector<double> pt(p[t].begin(), p[t].end()), mt(m[t].begin(), m[t].end()), vt(v[t].begin(), v[t].end());
      for (long step = 1; step <= 2; ++step) {
        // The hyperparameters are f32 (cpu/adamw.h): 1 - beta is that of the f32 betas.
        const double b1 = hp.beta1, b2 = hp.beta2, lr = hp.lr, wd = hp.weight_decay, eps = hp.eps;
        const double c1 = 1.0f - hp.beta1, c2 = 1.0f - hp.beta2;
        const double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
        for (size_t i = 0; i < pt.size(); ++i) {
          const double gi = double(g[t][i]) * clip;
          pt[i] *= 1 - lr * wd;
          mt[i] = b1 * mt[i] + c1 * gi;
          vt[i] = b2 * vt[i] + c2 * gi * gi;
          pt[i] -= lr / bc1 * mt[i] / (std::sqrt(vt[i]) / std::sqrt(bc2) + eps);
        }
      }
      rp.insert(rp.end(), pt.begin(), pt.end());
      rm.insert(rm.end(), mt.begin(), mt.end());
      rv.insert(rv.end(), vt.begin(), vt.end());
      const std::vector<float> a = dp[t].read(), b = dm[t].read(), c = dv[t].read();
      gp.insert(gp.end(), a.begin(), a.end());
      gm.insert(gm.end(), b.begin(), b.end());
      gv.insert(gv.end(), c.begin(), c.end());
      if (t % 2 == 0) {
        const std::vector<float> w = dbf[t].read();
        gbf.insert(gbf.end(), w.begin(), w.end());
        const std::vector<float> rounded = quantize(a, DType::BF16);  // the copy is the rounded weight
        rbf.insert(rbf.end(), rounded.begin(), rounded.end());
      }
    }
    report.compare("adamw", "sum of squares", "f64", std::fabs(got_sumsq - ref_sumsq) / ref_sumsq, 1e-12);
    report.compare("adamw", what + " param", "f64", rel_error(gp, rp), kF32Tol);
    report.compare("adamw", what + " m", "f64", rel_error(gm, rm), kF32Tol);
    report.compare("adamw", what + " v", "f64", rel_error(gv, rv), kF32Tol);
    report.compare("adamw", what + " bf16 copy", "param", rel_error(gbf, rbf), 0.0);
#ifdef ZN_HAVE_CPU_ADAMW
    std::vector<float> cp, cm, cv;
    for (int t = 0; t < count; ++t) {
      std::vector<float> pt = p[t], mt = m[t], vt = v[t];
      for (long step = 1; step <= 2; ++step) {
        AdamWStep h = hp;
        h.step = step;
        h.grad_scale = cpu::clip_coefficient(std::sqrt(ref_sumsq), max_norm);
        cpu::adamw_update(sizes[t], h, pt.data(), g[t].data(), mt.data(), vt.data(), nullptr);
      }
      cp.insert(cp.end(), pt.begin(), pt.end());
      cm.insert(cm.end(), mt.begin(), mt.end());
      cv.insert(cv.end(), vt.begin(), vt.end());
    }
    report.compare("adamw", what + " param", "cpu", rel_error(gp, cp), kF32Tol);
    report.compare("adamw", what + " m", "cpu", rel_error(gm, cm), kF32Tol);
    report.compare("adamw", what + " v", "cpu", rel_error(gv, cv), kF32Tol);
#endif
  });
}

bool selected(const std::string& only, const char* op) { return only.empty() || std::string(op).rfind(only, 0) == 0; }

}  // namespace

void run_op_checks(Report& report, cudaStream_t stream, const std::string& only, bool quick) {
  std::printf("\n== kernel checks (CPU kernels compared where built:");
#define ZN_LIST(name, flag) std::printf(" %s=%s", name, flag ? "yes" : "no")
#ifdef ZN_HAVE_CPU_GEMM
  ZN_LIST("gemm", 1);
#else
  ZN_LIST("gemm", 0);
#endif
#ifdef ZN_HAVE_CPU_ATTENTION
  ZN_LIST("attention", 1);
#else
  ZN_LIST("attention", 0);
#endif
#ifdef ZN_HAVE_CPU_LOGPROB
  ZN_LIST("logprob", 1);
#else
  ZN_LIST("logprob", 0);
#endif
#ifdef ZN_HAVE_CPU_ADAMW
  ZN_LIST("adamw", 1);
#else
  ZN_LIST("adamw", 0);
#endif
#undef ZN_LIST
  std::printf(")\n");
  const DType F = DType::F32, H = DType::BF16;
  if (selected(only, "gemm")) check_gemm(report, stream);
  if (selected(only, "attention")) check_attention(report, stream, quick);
  if (selected(only, "rmsnorm")) check_rmsnorm(report, stream);
  if (selected(only, "rope")) {
    check_rope_case(report, stream, F);
    check_rope_case(report, stream, H);
  }
  if (selected(only, "swiglu")) {
    check_swiglu_case(report, stream, F);
    check_swiglu_case(report, stream, H);
  }
  if (selected(only, "dropout")) {
    check_dropout_case(report, stream, F, F);
    check_dropout_case(report, stream, H, H);
    check_dropout_case(report, stream, H, F);
  }
  if (selected(only, "embedding")) {
    check_embedding_case(report, stream, F, F);
    check_embedding_case(report, stream, H, H);
    check_embedding_case(report, stream, H, F);
    check_embedding_bad_id(report, stream);
  }
  if (selected(only, "logprob")) {
    check_logprob_case(report, stream, F, {128, 1000});
    check_logprob_case(report, stream, H, {128, 1000});
    if (!quick) check_logprob_case(report, stream, H, {});
    // A token chunk x vocab chunk smaller than one vocabulary row: the one-pass kernel's panel
    // is then the one row the workspace always has room for.
    if (!quick) check_logprob_case(report, stream, F, {2, 1000});
  }
  if (selected(only, "dpo"))
    for (DpoLossType type : {DpoLossType::Sigmoid, DpoLossType::Ipo, DpoLossType::Hinge}) {
      check_dpo_case(report, stream, type, false);
      if (type == DpoLossType::Ipo) check_dpo_case(report, stream, type, true);
    }
  if (selected(only, "adamw")) check_adamw(report, stream);
}

}  // namespace zn::cuda::check
