// Attention against a float64 reference written here: an explicit masked softmax per query for
// the forward, the analytic gradient and central finite differences for the backward.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "core/cpu_features.h"
#include "harness.h"
#include "tests/attention_sequences.h"
#include "kernels/cpu/attention.h"

using namespace zn;
using namespace zn::test;
using zn::cpu::AttentionShape;

namespace {

struct Case {
  long tokens;
  int heads, kv_heads, head_dim;
  long window;
  std::vector<int32_t> doc_lengths;
  float scale = 0;  // 0: 1/sqrt(head_dim)
  float input_scale = 1;

  AttentionShape shape() const {
    return {tokens, heads, kv_heads, head_dim, window,
            scale != 0 ? scale : float(1.0 / std::sqrt(double(head_dim)))};
  }
  std::vector<int32_t> cu_seqlens() const {
    std::vector<int32_t> cu{0};
    for (int32_t n : doc_lengths) cu.push_back(cu.back() + n);
    EXPECT(cu.back() == tokens, "test case lengths must add up to tokens");
    return cu;
  }
  std::string name() const {
    std::string docs;
    for (int32_t n : doc_lengths) docs += (docs.empty() ? "" : ",") + std::to_string(n);
    return "T=" + std::to_string(tokens) + " Hq=" + std::to_string(heads) + " Hkv=" +
           std::to_string(kv_heads) + " D=" + std::to_string(head_dim) + " window=" +
           std::to_string(window) + " docs=[" + docs + "]";
  }
};

struct Inputs {
  std::vector<float> q, k, v, dout;
};

Inputs random_inputs(const Case& c) {
  const size_t nq = size_t(c.tokens) * c.heads * c.head_dim;
  const size_t nkv = size_t(c.tokens) * c.kv_heads * c.head_dim;
  return {random_f32(nq, c.input_scale), random_f32(nkv, c.input_scale), random_f32(nkv),
          random_f32(nq)};
}

// The keys query i sees, straight from the definition: same document, j <= i, i - j < window.
bool visible(const Case& c, const std::vector<int32_t>& cu, long i, long j) {
  size_t doc = 0;
  while (cu[doc + 1] <= i) ++doc;
  const bool in_window = c.window <= 0 || i - j < c.window;
  return j >= cu[doc] && j <= i && in_window;
}

struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

// Probabilities of query i of head h over all keys (0 where hidden), and its log-sum-exp.
std::vector<double> reference_probs(const Case& c, const std::vector<int32_t>& cu,
                                    const std::vector<double>& q, const std::vector<double>& k,
                                    long h, long i, double* lse) {
  const long D = c.head_dim, kh = h / (c.heads / c.kv_heads);
  const double scale = c.shape().scale;
  std::vector<double> s(size_t(c.tokens), -INFINITY);
  double max = -INFINITY;
  for (long j = 0; j < c.tokens; ++j) {
    if (!visible(c, cu, i, j)) continue;
    double dot = 0;
    for (long d = 0; d < D; ++d) {
      dot += q[(i * c.heads + h) * D + d] * k[(j * c.kv_heads + kh) * D + d];
    }
    s[j] = scale * dot;
    max = std::max(max, s[j]);
  }
  double sum = 0;
  for (double x : s) sum += std::exp(x - max);
  for (double& x : s) x = std::exp(x - max) / sum;
  if (lse) *lse = max + std::log(sum);
  return s;
}

Reference reference_forward(const Case& c, const std::vector<double>& q,
                            const std::vector<double>& k, const std::vector<double>& v) {
  const std::vector<int32_t> cu = c.cu_seqlens();
  const long D = c.head_dim, G = c.heads / c.kv_heads;
  Reference ref;
  ref.out.assign(q.size(), 0.0);
  ref.lse.assign(size_t(c.heads * c.tokens), 0.0);
  for (long h = 0; h < c.heads; ++h) {
    for (long i = 0; i < c.tokens; ++i) {
      const std::vector<double> p = reference_probs(c, cu, q, k, h, i, &ref.lse[h * c.tokens + i]);
      for (long j = 0; j < c.tokens; ++j) {
        for (long d = 0; d < D; ++d) {
          ref.out[(i * c.heads + h) * D + d] += p[j] * v[(j * c.kv_heads + h / G) * D + d];
        }
      }
    }
  }
  return ref;
}

// The analytic gradient of sum(dout * out): dV = Pᵀ dO, dS = P∘(dP - Σ_j P dP), dQ = scale·dS·K,
// dK = scale·dSᵀ·Q.
void reference_backward(const Case& c, const std::vector<double>& q, const std::vector<double>& k,
                        const std::vector<double>& v, const std::vector<double>& dout,
                        Reference& ref) {
  const std::vector<int32_t> cu = c.cu_seqlens();
  const long D = c.head_dim, G = c.heads / c.kv_heads;
  const double scale = c.shape().scale;
  ref.dq.assign(q.size(), 0.0);
  ref.dk.assign(k.size(), 0.0);
  ref.dv.assign(v.size(), 0.0);
  for (long h = 0; h < c.heads; ++h) {
    for (long i = 0; i < c.tokens; ++i) {
      const std::vector<double> p = reference_probs(c, cu, q, k, h, i, nullptr);
      const double* dout_i = &dout[(i * c.heads + h) * D];
      std::vector<double> dp(size_t(c.tokens), 0.0);
      double delta = 0;
      for (long j = 0; j < c.tokens; ++j) {
        for (long d = 0; d < D; ++d) dp[j] += dout_i[d] * v[(j * c.kv_heads + h / G) * D + d];
        delta += p[j] * dp[j];
      }
      for (long j = 0; j < c.tokens; ++j) {
        const double ds = p[j] * (dp[j] - delta);
        const long kv = (j * c.kv_heads + h / G) * D, qi = (i * c.heads + h) * D;
        for (long d = 0; d < D; ++d) {
          ref.dq[qi + d] += scale * ds * k[kv + d];
          ref.dk[kv + d] += scale * ds * q[qi + d];
          ref.dv[kv + d] += p[j] * dout_i[d];
        }
      }
    }
  }
}

struct Result {
  std::vector<float> out, lse, dq, dk, dv;
};

Result run_kernel(const Case& c, const Inputs& in, CpuPath path) {
  const std::vector<int32_t> cu = c.cu_seqlens();
  const int n_docs = int(c.doc_lengths.size());
  Result r;
  r.out.resize(in.q.size());
  r.lse.resize(size_t(c.heads * c.tokens));
  r.dq.resize(in.q.size());
  r.dk.resize(in.k.size());
  r.dv.resize(in.v.size());
  for (auto* x : {&r.out, &r.lse, &r.dq, &r.dk, &r.dv}) poison(*x);
  cpu::attention_forward(c.shape(), in.q.data(), in.k.data(), in.v.data(), cu.data(), n_docs,
                         r.out.data(), r.lse.data(), path);
  cpu::attention_backward(c.shape(), in.q.data(), in.k.data(), in.v.data(), cu.data(), n_docs,
                          r.out.data(), r.lse.data(), in.dout.data(), r.dq.data(), r.dk.data(),
                          r.dv.data(), path);
  return r;
}

// Where the exact gradient is zero (window 1: a softmax over one key), relative error is
// meaningless; float rounding leaves values around 1e-8 there, so check them absolutely.
void expect_gradient_close(const std::vector<float>& out, const std::vector<double>& ref,
                           const std::string& what) {
  double ref_norm = 0, out_norm = 0;
  for (double x : ref) ref_norm += x * x;
  if (ref_norm > 0) return expect_close(out, ref, kF32RelTol, what);
  for (float x : out) out_norm += double(x) * x;
  const double rms = std::sqrt(out_norm / double(std::max<size_t>(1, out.size())));
  EXPECT(rms <= kF32RelTol, what, ": exact gradient is zero, but rms = ", rms);
}

// Each of `paths` on the same inputs, against one float64 reference.
void check_against_reference(const Case& c, const std::vector<CpuPath>& paths) {
  const Inputs in = random_inputs(c);
  const std::vector<double> q = to_f64(in.q), k = to_f64(in.k), v = to_f64(in.v);
  Reference ref = reference_forward(c, q, k, v);
  reference_backward(c, q, k, v, to_f64(in.dout), ref);
  for (CpuPath path : paths) {
    const Result r = run_kernel(c, in, path);
    const std::string what = c.name() + " path=" + cpu_path_name(path) + ": ";
    expect_close(r.out, ref.out, kF32RelTol, what + "out");
    expect_close(r.lse, ref.lse, kF32RelTol, what + "lse");
    expect_gradient_close(r.dq, ref.dq, what + "dq");
    expect_gradient_close(r.dk, ref.dk, what + "dk");
    expect_gradient_close(r.dv, ref.dv, what + "dv");
  }
}

// Shapes that are not multiples of the kernel's tiles (64 keys, 64 query rows, 16 columns).
const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      // GQA ratio 1, full causal, one document.
      {77, 4, 4, 16, 0, {77}},
      // Ratio 4, window smaller than the documents, length-1 documents between longer ones.
      {100, 8, 2, 24, 17, {1, 40, 1, 58}},
      // Ratio 8, window equal to the sequence (= full causal).
      {150, 8, 1, 40, 150, {150}},
      // Ratio 8 over two kv heads, window larger than the sequence, peaked softmax.
      {90, 16, 2, 16, 1000, {30, 60}, 0, 2.5f},
      // Ratio 4, several key tiles and query blocks, a window that cuts through tiles.
      {260, 4, 1, 32, 100, {1, 259}},
      // Mistral's head_dim, window equal to a document's length and to the key tile.
      {200, 2, 1, 128, 64, {136, 64}},
      // Window 1: every query sees only itself; an arbitrary scale.
      {70, 2, 2, 3, 1, {1, 1, 68}, 0.7f},
      // Many short documents of different lengths (one empty), ratio 2.
      {64, 4, 2, 20, 5, {3, 1, 7, 1, 12, 0, 2, 30, 8}},
  };
  return all;
}

}  // namespace

ZN_TEST("attention.matches_float64_reference") {
  for (const Case& c : cases()) check_against_reference(c, {cpu_path()});
}

ZN_TEST("attention.scalar_path_matches_float64_reference") {
  for (const Case& c : cases()) check_against_reference(c, {CpuPath::Scalar});
}

namespace {

// Shapes for the SIMD paths' register tiles and their tails (the AVX-512 matmul tile is 6 rows ×
// 64 columns, the AVX2 one 6 × 16): odd head counts and GQA ratios (3, 5, 7), head_dim
// padded to 1, 3, 5 and 6 panels of 16, windows shorter than the documents, several documents.
const std::vector<Case>& path_cases() {
  static const std::vector<Case> all = {
      {133, 7, 7, 72, 50, {60, 73}},
      {97, 12, 3, 40, 33, {1, 45, 51}},
      {211, 6, 2, 96, 64, {100, 111}},
      {70, 5, 1, 8, 9, {13, 57}},
      {300, 4, 2, 128, 70, {150, 1, 149}},
  };
  return all;
}

// The SIMD paths this CPU can run, each forced through the CpuPath argument.
std::vector<CpuPath> simd_paths() {
  std::vector<CpuPath> paths;
  for (CpuPath path : {CpuPath::Avx2, CpuPath::Avx512Bf16}) {
    if (cpu_path_supported(path)) paths.push_back(path);
  }
  return paths;
}

std::vector<CpuPath> every_path() {
  std::vector<CpuPath> paths = simd_paths();
  paths.push_back(CpuPath::Scalar);
  return paths;
}

void expect_same_bits(const std::vector<float>& x, const std::vector<float>& y,
                      const std::string& what) {
  EXPECT(x.size() == y.size(), what, ": sizes differ");
  size_t differ = 0;
  for (size_t i = 0; i < x.size(); ++i) differ += std::memcmp(&x[i], &y[i], sizeof(float)) != 0;
  EXPECT(differ == 0, what, ": ", differ, " of ", x.size(), " values differ");
}

}  // namespace

ZN_TEST("attention.every_simd_path_matches_float64_reference") {
  std::printf("     paths run: ");
  for (CpuPath path : simd_paths()) std::printf("%s ", cpu_path_name(path));
  std::printf("(this CPU: %s)\n", cpu_features_string().c_str());
  for (const Case& c : path_cases()) check_against_reference(c, simd_paths());
}

// The float64 reference's analytic gradient, and the kernel's, against central differences of
// the scalar loss sum(dout * out).
ZN_TEST("attention.backward_matches_finite_differences") {
  const std::vector<Case> small = {
      {9, 4, 1, 5, 2, {1, 3, 5}},
      {8, 2, 2, 6, 0, {8}},
      {10, 4, 2, 3, 4, {6, 1, 3}},
  };
  for (const Case& c : small) {
    const Inputs in = random_inputs(c);
    const std::vector<double> dout = to_f64(in.dout);
    const size_t nq = in.q.size(), nkv = in.k.size();
    std::vector<double> x = to_f64(in.q);
    for (const auto* part : {&in.k, &in.v}) x.insert(x.end(), part->begin(), part->end());
    auto split = [&](const std::vector<double>& all, size_t from, size_t n) {
      return std::vector<double>(all.begin() + long(from), all.begin() + long(from + n));
    };
    auto loss = [&](const std::vector<double>& all) {
      const Reference r = reference_forward(c, split(all, 0, nq), split(all, nq, nkv),
                                            split(all, nq + nkv, nkv));
      double sum = 0;
      for (size_t i = 0; i < nq; ++i) sum += dout[i] * r.out[i];
      return sum;
    };
    const std::vector<double> fd = finite_difference(loss, x);
    Reference ref = reference_forward(c, to_f64(in.q), to_f64(in.k), to_f64(in.v));
    reference_backward(c, to_f64(in.q), to_f64(in.k), to_f64(in.v), dout, ref);
    const Result r = run_kernel(c, in, cpu_path());
    const std::string what = c.name() + ": ";
    const std::vector<double> fd_q = split(fd, 0, nq), fd_k = split(fd, nq, nkv),
                              fd_v = split(fd, nq + nkv, nkv);
    expect_close(ref.dq, fd_q, kFdRelTol, what + "reference dq vs finite differences");
    expect_close(ref.dk, fd_k, kFdRelTol, what + "reference dk vs finite differences");
    expect_close(ref.dv, fd_v, kFdRelTol, what + "reference dv vs finite differences");
    expect_close(r.dq, fd_q, kF32RelTol, what + "kernel dq vs finite differences");
    expect_close(r.dk, fd_k, kF32RelTol, what + "kernel dk vs finite differences");
    expect_close(r.dv, fd_v, kF32RelTol, what + "kernel dv vs finite differences");
  }
}

// Same inputs, same bits: no thread-order-dependent sums.
ZN_TEST("attention.results_are_deterministic") {
  for (const Case& c : {Case{300, 8, 1, 24, 0, {300}}, Case{200, 8, 4, 16, 50, {120, 80}}}) {
    const Inputs in = random_inputs(c);
    const Result a = run_kernel(c, in, cpu_path()), b = run_kernel(c, in, cpu_path());
    for (auto [x, y, name] : {std::tuple{&a.out, &b.out, "out"}, {&a.dq, &b.dq, "dq"},
                              {&a.dk, &b.dk, "dk"}, {&a.dv, &b.dv, "dv"}}) {
      EXPECT(std::memcmp(x->data(), y->data(), x->size() * sizeof(float)) == 0, c.name(), " ", name);
    }
  }
}

// With two or more threads the backward computes dQ alongside dK/dV when there are enough
// (kv head, document) items to share out (here: two kv heads), and in a separate pass otherwise
// (one kv head). Kv head 0 of the first problem is the whole second problem, so the two schemes
// must agree bit for bit.
ZN_TEST("attention.backward_schemes_agree_bitwise") {
  const Case two{150, 8, 2, 24, 40, {150}}, one{150, 4, 1, 24, 40, {150}};
  const Inputs a = random_inputs(two);
  Inputs b;
  for (long t = 0; t < two.tokens; ++t) {
    const auto q = a.q.begin() + t * 8 * 24, dout = a.dout.begin() + t * 8 * 24;
    b.q.insert(b.q.end(), q, q + 4 * 24);
    b.dout.insert(b.dout.end(), dout, dout + 4 * 24);
    b.k.insert(b.k.end(), a.k.begin() + t * 2 * 24, a.k.begin() + t * 2 * 24 + 24);
    b.v.insert(b.v.end(), a.v.begin() + t * 2 * 24, a.v.begin() + t * 2 * 24 + 24);
  }
  const Result ra = run_kernel(two, a, cpu_path()), rb = run_kernel(one, b, cpu_path());
  for (long t = 0; t < two.tokens; ++t) {
    EXPECT(std::memcmp(&ra.dq[t * 8 * 24], &rb.dq[t * 4 * 24], 4 * 24 * sizeof(float)) == 0, "dq token ", t);
    EXPECT(std::memcmp(&ra.dk[t * 2 * 24], &rb.dk[t * 24], 24 * sizeof(float)) == 0, "dk token ", t);
    EXPECT(std::memcmp(&ra.dv[t * 2 * 24], &rb.dv[t * 24], 24 * sizeof(float)) == 0, "dv token ", t);
  }
}

// ---- Queries over separate keys (a KV cache) ----------------------------------------------

namespace {

struct CachedCase {
  std::string name;
  int heads, kv_heads, head_dim;
  long window;
  std::vector<SequenceRows> seqs;
  float scale = 0;  // 0: 1/sqrt(head_dim)
};

// The sequences' arrays, and inputs with NaN in the unused key rows.
struct CachedInputs : SequenceArrays {
  std::vector<float> q, k, v;
  using SequenceArrays::SequenceArrays;
};

CachedInputs cached_inputs(const CachedCase& c) {
  CachedInputs in(c.seqs);
  const size_t kv_row = size_t(c.kv_heads * c.head_dim);
  in.q = random_f32(size_t(in.query_rows) * c.heads * c.head_dim);
  in.k = random_f32(size_t(in.key_rows) * kv_row);
  in.v = random_f32(size_t(in.key_rows) * kv_row);
  for (size_t row = 0; row < size_t(in.key_rows); ++row) {
    if (in.k_positions[row] >= 0) continue;
    std::fill_n(in.k.begin() + long(row * kv_row), kv_row, NAN);
    std::fill_n(in.v.begin() + long(row * kv_row), kv_row, NAN);
  }
  return in;
}

AttentionShape cached_shape(const CachedCase& c, long query_rows) {
  return {query_rows, c.heads, c.kv_heads, c.head_dim, c.window,
          c.scale != 0 ? c.scale : float(1.0 / std::sqrt(double(c.head_dim)))};
}

// Straight from the definition: query at pq sees key at pk iff pk <= pq and pq - window < pk;
// a row that sees nothing is 0 with lse -inf.
Reference cached_reference(const CachedCase& c, const CachedInputs& in) {
  const long D = c.head_dim, G = c.heads / c.kv_heads;
  const double scale = cached_shape(c, in.query_rows).scale;
  Reference ref;
  ref.out.assign(in.q.size(), 0.0);
  ref.lse.assign(size_t(c.heads * in.query_rows), -INFINITY);
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    for (long i = in.cu_seqlens_q[s]; i < in.cu_seqlens_q[s + 1]; ++i) {
      const long pq = in.q_positions[size_t(i)];
      for (long h = 0; h < c.heads; ++h) {
        std::vector<std::pair<long, double>> scores;  // (key row, score)
        double max = -INFINITY;
        for (long j = in.k_begin[s]; j < in.k_begin[s] + in.k_len[s]; ++j) {
          const long pk = in.k_positions[size_t(j)];
          if (pk > pq || (c.window > 0 && pq - c.window >= pk)) continue;
          double dot = 0;
          for (long d = 0; d < D; ++d) {
            dot += double(in.q[size_t((i * c.heads + h) * D + d)]) *
                   in.k[size_t((j * c.kv_heads + h / G) * D + d)];
          }
          scores.push_back({j, scale * dot});
          max = std::max(max, scale * dot);
        }
        if (scores.empty()) continue;
        double sum = 0;
        for (const auto& [j, x] : scores) sum += std::exp(x - max);
        ref.lse[size_t(h * in.query_rows + i)] = max + std::log(sum);
        for (const auto& [j, x] : scores) {
          const double p = std::exp(x - max) / sum;
          for (long d = 0; d < D; ++d) {
            ref.out[size_t((i * c.heads + h) * D + d)] +=
                p * in.v[size_t((j * c.kv_heads + h / G) * D + d)];
          }
        }
      }
    }
  }
  return ref;
}

Result run_cached(const CachedCase& c, const CachedInputs& in, CpuPath path) {
  Result r;
  r.out.resize(in.q.size());
  r.lse.resize(size_t(c.heads * in.query_rows));
  poison(r.out);
  poison(r.lse);
  cpu::attention_forward(cached_shape(c, in.query_rows), in.view(), in.q.data(), in.k.data(),
                         in.v.data(), r.out.data(), r.lse.data(), path);
  return r;
}

void expect_lse_close(const std::vector<float>& lse, const std::vector<double>& ref,
                      const std::string& what) {
  std::vector<float> finite;
  std::vector<double> finite_ref;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isinf(ref[i])) {
      EXPECT(lse[i] == -INFINITY, what, ": row ", i, " sees no key but lse = ", lse[i]);
    } else {
      finite.push_back(lse[i]);
      finite_ref.push_back(ref[i]);
    }
  }
  expect_close(finite, finite_ref, kF32RelTol, what);
}

const std::vector<CachedCase>& cached_cases() {
  static const std::vector<CachedCase> all = {
      {"prompt chunk after a cached prefix", 4, 2, 24, 0,
       {{positions(80, 100), positions(0, 100)}}},
      {"chunk of 100 queries (two query blocks) over 230 keys, window 90", 8, 2, 16, 90,
       {{positions(130, 230), positions(0, 230)}}},
      {"single-token decodes of different lengths", 8, 2, 32, 0,
       {{{0}, positions(0, 1)},
        {{64}, positions(0, 65)},
        {{199}, positions(0, 200)},
        {{129}, positions(0, 130), 160}}},
      {"decode over a wrapped rolling buffer (window = slots)", 8, 1, 40, 48,
       {{{149}, rolling_buffer(150, 48)}, {{30}, rolling_buffer(31, 48), 48}}},
      {"chunk over a wrapped rolling buffer larger than the window", 4, 4, 16, 48,
       {{positions(140, 150), rolling_buffer(150, 64)}, {positions(200, 203), rolling_buffer(203, 64)}}},
      {"sequences without visible keys", 4, 2, 8, 10,
       {{{5, 6}, positions(10, 20)},    // every key in the future
        {{3}, {}},                      // no keys
        {{}, positions(0, 4)},          // no queries
        {{50, 9}, positions(0, 12)},    // the first query's window has passed every key
        {{7}, positions(0, 8)}}},
      {"Mistral head_dim, GQA 4, window 4096, 300-key cache", 8, 2, 128, 4096,
       {{{299}, positions(0, 300)}, {positions(290, 300), positions(0, 300)}}},
  };
  return all;
}

// The packed forward's documents as sequences: k_begin = cu_seqlens, positions within documents.
CachedCase packed_as_sequences(const Case& c) {
  CachedCase cached{c.name(), c.heads, c.kv_heads, c.head_dim, c.window, {}, c.shape().scale};
  for (int32_t n : c.doc_lengths) cached.seqs.push_back({positions(0, n), positions(0, n)});
  return cached;
}

}  // namespace

ZN_TEST("attention.cached_matches_float64_reference") {
  for (const CachedCase& c : cached_cases()) {
    const CachedInputs in = cached_inputs(c);
    const Reference ref = cached_reference(c, in);
    for (CpuPath path : every_path()) {
      const Result r = run_cached(c, in, path);
      const std::string what = c.name + " path=" + cpu_path_name(path) + ": ";
      expect_close(r.out, ref.out, kF32RelTol, what + "out");
      expect_lse_close(r.lse, ref.lse, what + "lse");
    }
  }
}

// A row that sees no key is exactly 0 (not NaN); lse may be left out.
ZN_TEST("attention.cached_rows_without_keys_are_zero") {
  const CachedCase& c = cached_cases()[5];
  const CachedInputs in = cached_inputs(c);
  Result r = run_cached(c, in, cpu_path());
  for (long i : {0L, 1L, 2L, 3L}) {  // positions 5, 6 (future keys), 3 (no keys), 50 (window passed)
    for (long e = 0; e < c.heads * c.head_dim; ++e) {
      EXPECT(r.out[size_t(i * c.heads * c.head_dim + e)] == 0.0f, "row ", i, " element ", e);
    }
  }
  std::vector<float> out(in.q.size());
  cpu::attention_forward(cached_shape(c, in.query_rows), in.view(), in.q.data(), in.k.data(),
                         in.v.data(), out.data(), nullptr);
  EXPECT(std::memcmp(out.data(), r.out.data(), out.size() * sizeof(float)) == 0);
}

// The packed stream through the sequence form gives the packed forward's bits, on every path.
ZN_TEST("attention.cached_packed_case_equals_packed_forward_bitwise") {
  for (const Case& c : cases()) {
    const Inputs in = random_inputs(c);
    const std::vector<int32_t> cu = c.cu_seqlens();
    CachedInputs cached = cached_inputs(packed_as_sequences(c));
    cached.q = in.q;
    cached.k = in.k;
    cached.v = in.v;
    for (CpuPath path : every_path()) {
      std::vector<float> out(in.q.size()), lse(size_t(c.heads * c.tokens));
      cpu::attention_forward(c.shape(), in.q.data(), in.k.data(), in.v.data(), cu.data(),
                             int(c.doc_lengths.size()), out.data(), lse.data(), path);
      const Result r = run_cached(packed_as_sequences(c), cached, path);
      const std::string what = c.name() + " path=" + cpu_path_name(path);
      EXPECT(std::memcmp(out.data(), r.out.data(), out.size() * sizeof(float)) == 0, what, " out");
      EXPECT(std::memcmp(lse.data(), r.lse.data(), lse.size() * sizeof(float)) == 0, what, " lse");
    }
  }
}

// AVX-512 promises the AVX2 bits (attention_avx512.cpp): packed forward and backward, and the
// cached forward, so a machine's path never changes a training run's or a decode's numbers.
ZN_TEST("attention.avx512_path_gives_the_avx2_bits") {
  if (!cpu_path_supported(CpuPath::Avx512Bf16)) {
    EXPECT(cpu_path() != CpuPath::Avx512Bf16, "the CPU lacks AVX-512 BF16 but cpu_path() takes it");
    std::printf("     no AVX-512 BF16 here (%s): only AVX2 runs\n", cpu_features_string().c_str());
    return;
  }
  std::vector<Case> all = cases();
  all.insert(all.end(), path_cases().begin(), path_cases().end());
  for (const Case& c : all) {
    const Inputs in = random_inputs(c);
    const Result a = run_kernel(c, in, CpuPath::Avx2), b = run_kernel(c, in, CpuPath::Avx512Bf16);
    for (auto [x, y, name] : {std::tuple{&a.out, &b.out, "out"}, {&a.lse, &b.lse, "lse"},
                              {&a.dq, &b.dq, "dq"}, {&a.dk, &b.dk, "dk"}, {&a.dv, &b.dv, "dv"}}) {
      expect_same_bits(*x, *y, c.name() + " " + name);
    }
  }
  for (const CachedCase& c : cached_cases()) {
    const CachedInputs in = cached_inputs(c);
    const Result a = run_cached(c, in, CpuPath::Avx2), b = run_cached(c, in, CpuPath::Avx512Bf16);
    expect_same_bits(a.out, b.out, c.name + " out");
    expect_same_bits(a.lse, b.lse, c.name + " lse");
  }
}

ZN_TEST("attention.cached_results_are_deterministic") {
  const CachedCase c{"many decodes", 8, 2, 32, 64,
                     {{{299}, rolling_buffer(300, 64)}, {{70}, positions(0, 71)},
                      {positions(100, 164), positions(0, 164)}, {{5}, positions(0, 6)}}};
  const CachedInputs in = cached_inputs(c);
  const Result a = run_cached(c, in, cpu_path()), b = run_cached(c, in, cpu_path());
  EXPECT(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)) == 0);
  EXPECT(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)) == 0);
}

ZN_TEST("attention.cached_rejects_bad_arguments") {
  const CachedCase c{"two sequences", 2, 1, 8, 0,
                     {{positions(3, 5), positions(0, 5)}, {{2}, positions(0, 3)}}};
  const CachedInputs good = cached_inputs(c);
  std::vector<float> out(good.q.size()), lse(size_t(2 * good.query_rows));
  auto error_of = [&](const std::function<void(CachedInputs&, AttentionShape&)>& spoil) {
    CachedInputs in = good;
    AttentionShape shape = cached_shape(c, in.query_rows);
    spoil(in, shape);
    try {
      cpu::attention_forward(shape, in.view(), in.q.data(), in.k.data(), in.v.data(),
                             out.data(), lse.data());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  auto expect_error = [&](const std::function<void(CachedInputs&, AttentionShape&)>& spoil,
                          const std::string& part) {
    const std::string message = error_of(spoil);
    EXPECT(message.find(part) != std::string::npos, "expected an error naming '", part,
           "', got '", message, "'");
  };
  EXPECT(error_of([](CachedInputs&, AttentionShape&) {}).empty());
  expect_error([](CachedInputs&, AttentionShape& s) { s.n_kv_heads = 3; }, "n_kv_heads (3)");
  expect_error([](CachedInputs& in, AttentionShape&) { in.cu_seqlens_q = {0, 3, 2}; },
               "cu_seqlens_q must not decrease");
  expect_error([](CachedInputs&, AttentionShape& s) { s.tokens = 4; },
               "cu_seqlens_q[2] = 3 must equal tokens = 4");
  expect_error([](CachedInputs& in, AttentionShape&) { in.q_positions[2] = -1; },
               "q_positions[2] must be >= 0");
  expect_error([](CachedInputs& in, AttentionShape&) { in.k_positions[6] = -7; },
               "k_positions[6] (sequence 1) must be >= 0");
  expect_error([](CachedInputs& in, AttentionShape&) { in.k_len[1] = 4; },
               "k_len[1] = 4, outside the key_rows = 8");
  expect_error([](CachedInputs& in, AttentionShape&) { in.k_begin[0] = -1; }, "k_begin[0] = -1");
  expect_error([](CachedInputs& in, AttentionShape&) { in.key_rows = -1; }, "key_rows must be >= 0");
}

ZN_TEST("attention.accepts_an_empty_batch") {
  const std::vector<int32_t> cu{0};
  const AttentionShape shape{0, 4, 2, 8, 0, 0.3f};
  float none = 0;
  cpu::attention_forward(shape, &none, &none, &none, cu.data(), 0, &none, &none);
  cpu::attention_backward(shape, &none, &none, &none, cu.data(), 0, &none, &none, &none, &none,
                          &none, &none);
  EXPECT(none == 0);
}

ZN_TEST("attention.rejects_bad_arguments") {
  const std::vector<float> x(4 * 2 * 8, 0.5f);
  std::vector<float> out(x.size()), lse(8);
  auto error_of = [&](AttentionShape shape, std::vector<int32_t> cu) -> std::string {
    try {
      cpu::attention_forward(shape, x.data(), x.data(), x.data(), cu.data(), int(cu.size()) - 1,
                             out.data(), lse.data());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT(error_of({4, 2, 3, 8, 0, 0.3f}, {0, 4}).find("n_kv_heads (3)") != std::string::npos);
  EXPECT(error_of({4, 2, 1, 8, 0, 0.3f}, {0, 3}).find("must equal tokens = 4") != std::string::npos);
  EXPECT(error_of({4, 2, 1, 8, 0, 0.3f}, {0, 3, 2, 4}).find("must not decrease") != std::string::npos);
  EXPECT(error_of({4, 2, 1, 0, 0, 0.3f}, {0, 4}).find("head_dim") != std::string::npos);
  EXPECT(error_of({4, 2, 1, 8, 0, 0.3f}, {0, 4}).empty());
}
