// GEMM: C = alpha * op(A) · op(B) + beta * C (contract in gemm.h), blocked as BLIS does:
//   for jc over N in NC columns, pc over K in KC steps: pack the KC x NC block of op(B) once
//     for ic over M in MC rows (spread over the thread pool): pack the MC x KC block of op(A)
//       for jr over NR-wide panels of B (one stays in L1), ir over MR-tall panels of A (in L2):
//         the micro-kernel keeps an MR x NR tile of C in registers for the whole KC sweep.
// Packed panels are lane-major: a panel of W lanes (rows of op(A) or columns of op(B)) stores,
// for each step along K, its W lane values side by side, so the micro-kernel reads both
// operands sequentially whatever the transposes, dtypes and leading dimensions were.
//   F32Lanes:  one f32 per (lane, k). bf16 inputs are widened exactly while packing, so the
//              AVX2 kernel runs bf16 GEMMs at f32 speed with bf16-exact products.
//   Bf16Pairs: one u32 per (lane, k pair), bf16(k) in the low half and bf16(k+1) in the high
//              half: the operand format of vdpbf16ps, which adds both exact products to f32.
// Paths (zn::cpu_path(), chosen at run time; no -march anywhere):
//   scalar      portable C++ micro-kernels on both layouts
//   avx2        6 x 16 FMA micro-kernel on F32Lanes for f32 and bf16 GEMMs
//   avx512bf16  12 x 32 vdpbf16ps micro-kernel on Bf16Pairs for bf16 GEMMs; f32 GEMMs run an
//               8 x 32 zmm FMA kernel, bit-identical to the AVX2 one (the same FMA per k, in k
//               order, per output; the same KC)
// The bf16 blocking, per thread (Zen 5: 48 KiB L1d, 1 MiB L2 per core; vdpbf16ps 2 per cycle,
// each 16 lanes x 2 products):
//   registers  12 x 32 tile = 24 zmm accumulators + 2 B vectors + 1 broadcast A pair; per k
//              pair 2 loads (128 B of B) and 12 broadcasts (48 B of A) feed 24 vdpbf16ps, i.e.
//              12 cycles of the two pipes for 176 bytes from L1/L2
//   KC = KD    2048 k (1024 pairs): the tile sums a whole packed pass in registers, so C is read
//              and written once per pass (K <= 2048: once) and the call's fixed cost (C update,
//              24 loads + 24 stores) is spread over up to 24576 vdpbf16ps
//   MC = 144   the A block, 144 x 2048 x 2 B = 576 KiB, stays in L2 while every B panel passes
//   NR panel   32 x 2048 x 2 B = 128 KiB of B, streamed from L2/L3 by each of the 12 A panels
//   NC = 3072  the packed B block (up to 12 MiB at K = 2048) lives in L3; 768 (3 MiB) when M
//              is at most 4 MC, A then being cheap to pack again for each B block
// Measured on one Zen 5 core (thread CPU time, beside the vdpbf16ps loop, 2026-12-07): the
// micro-kernel on L2-resident panels at 97% of the loop; whole GEMMs at the bench shapes at
// 78-93%, the rest being packing (2-12%, bound by reading the sources from memory) and B panels
// coming from L3 (README, "Performance").
// The scalar path packs bf16 GEMMs as Bf16Pairs too, so everything around the AVX-512 micro-
// kernel (packing, blocking, edges) is tested on machines without AVX-512.
// Up to 8 rows against a transposed B (decoding: y = x·Wᵀ for one row per sequence, W [N, K] as
// HF stores it) skip the blocking: each output is a dot product of an A row with one contiguous
// row of W, so the weights stream through once (packing them would read and write all of W
// first, each step). Rows of W are split over the threads, four at a time swept by pairs of A
// rows; each output is one thread's fixed-order sum, so results do not depend on the thread count.
#include "kernels/cpu/gemm.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "core/cpu_features.h"
#include "core/errors.h"
#include "core/simd_math.h"
#include "core/thread_pool.h"
#include "kernels/cpu/gemm_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ZN_GEMM_X86 1
#endif

namespace zn::cpu {

namespace {

enum class Layout { F32Lanes, Bf16Pairs };

long ceil_div(long a, long b) { return (a + b - 1) / b; }
long round_up(long a, long b) { return ceil_div(a, b) * b; }

// Writes C = alpha * acc + beta * C over an m x n tile; C is not read when beta == 0, so NaN
// garbage in an output buffer never leaks into the result.
void update_tile(const float* acc, long acc_ld, long m, long n, float* c, long ldc, float alpha,
                 float beta) {
  for (long r = 0; r < m; ++r) {
    for (long j = 0; j < n; ++j) {
      float& out = c[r * ldc + j];
      const float product = alpha * acc[r * acc_ld + j];
      out = beta == 0.0f ? product : product + beta * out;
    }
  }
}

// ---- Micro-kernels: C_tile = alpha * (A panel · B panel) + beta * C_tile over `steps` packed
// ---- steps (k values for F32Lanes, k pairs for Bf16Pairs).

template <int MR, int NR>
void tile_scalar_f32(long steps, const float* a, const float* b, float* c, long ldc, float alpha,
                     float beta) {
  float acc[MR][NR] = {};
  for (long p = 0; p < steps; ++p, a += MR, b += NR) {
    for (int r = 0; r < MR; ++r) {
      for (int j = 0; j < NR; ++j) acc[r][j] += a[r] * b[j];
    }
  }
  update_tile(&acc[0][0], NR, MR, NR, c, ldc, alpha, beta);
}

float low_bf16(uint32_t pair) { return bf16_to_f32(bf16{uint16_t(pair)}); }
float high_bf16(uint32_t pair) { return bf16_to_f32(bf16{uint16_t(pair >> 16)}); }

// What vdpbf16ps computes, one lane at a time: products of bf16 values are exact in f32.
template <int MR, int NR>
void tile_scalar_bf16_pairs(long steps, const uint32_t* a, const uint32_t* b, float* c, long ldc,
                            float alpha, float beta) {
  float acc[MR][NR] = {};
  for (long q = 0; q < steps; ++q, a += MR, b += NR) {
    for (int r = 0; r < MR; ++r) {
      const float a_low = low_bf16(a[r]), a_high = high_bf16(a[r]);
      for (int j = 0; j < NR; ++j) {
        acc[r][j] += a_high * high_bf16(b[j]);
        acc[r][j] += a_low * low_bf16(b[j]);
      }
    }
  }
  update_tile(&acc[0][0], NR, MR, NR, c, ldc, alpha, beta);
}

#ifdef ZN_GEMM_X86

// 6 x 16: 12 accumulators + 2 B vectors + 1 broadcast of the 16 ymm registers; per k step
// 2 loads and 6 broadcasts feed 12 FMAs, which keeps both FMA pipes of a core busy.
__attribute__((target("avx2,fma"))) void tile_avx2_6x16(long steps, const float* a,
                                                         const float* b, float* c, long ldc,
                                                         float alpha, float beta) {
  constexpr int MR = 6;
  // Every loop over the accumulators is fully unrolled so that they live in registers.
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  // The C tile is only touched after the K sweep: start fetching it now.
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 15), _MM_HINT_T0);
  }
#pragma GCC unroll 4
  for (long p = 0; p < steps; ++p, a += MR, b += 16) {
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r);
      acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
    }
  }
  const __m256 va = _mm256_set1_ps(alpha);
  const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      float* out = c + r * ldc + 8 * h;
      __m256 v = _mm256_mul_ps(va, acc[r][h]);
      if (beta != 0.0f) v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(out), v);
      _mm256_storeu_ps(out, v);
    }
  }
}

// MR x NR: MR * NR / 16 zmm accumulators, NR / 16 B vectors (16 columns x 1 k pair each) and
// one broadcast A pair per row; each vdpbf16ps does 32 multiply-adds. 12 x 32 (24 accumulators,
// 2 loads and 12 broadcasts per 24 vdpbf16ps) measured within 1% of the instruction's peak on
// one Zen 5 core from L1/L2-resident panels; 8 x 48, 6 x 64 and 14 x 32 measured the same.
// Written as a template, GCC keeps every accumulator in a register (the hand-unrolled 12 x 32
// it replaces spilled a B vector to the stack each k step, 5% slower).
template <int MR, int NR>
__attribute__((target("avx512f,avx512bw,avx512bf16,avx512vl"))) void tile_avx512bf16(
    long steps, const uint32_t* a, const uint32_t* b, float* c, long ldc, float alpha,
    float beta) {
  constexpr int NV = NR / 16;
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int h = 0; h < NV; ++h) acc[r][h] = _mm512_setzero_ps();
  }
  for (long q = 0; q < steps; ++q, a += MR, b += NR) {
    __m512bh bv[NV];
#pragma GCC unroll 4
    for (int h = 0; h < NV; ++h) bv[h] = (__m512bh)_mm512_loadu_si512(b + 16 * h);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(int(a[r]));
#pragma GCC unroll 4
      for (int h = 0; h < NV; ++h) acc[r][h] = _mm512_dpbf16_ps(acc[r][h], ar, bv[h]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
  const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int h = 0; h < NV; ++h) {
      float* out = c + r * ldc + 16 * h;
      __m512 v = _mm512_mul_ps(va, acc[r][h]);
      if (beta != 0.0f) v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(out), v);
      _mm512_storeu_ps(out, v);
    }
  }
}

// MR x NR with NR / 16 zmm vectors of B per k step and one broadcast A value per row: the AVX2
// kernel's arithmetic (one FMA per k, in k order, per output) on 16-lane vectors.
template <int MR, int NR>
__attribute__((target("avx512f"))) void tile_avx512f32(long steps, const float* a, const float* b,
                                                       float* c, long ldc, float alpha, float beta) {
  constexpr int NV = NR / 16;
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int h = 0; h < NV; ++h) acc[r][h] = _mm512_setzero_ps();
  }
  for (long p = 0; p < steps; ++p, a += MR, b += NR) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int h = 0; h < NV; ++h) bv[h] = _mm512_loadu_ps(b + 16 * h);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r]);
#pragma GCC unroll 4
      for (int h = 0; h < NV; ++h) acc[r][h] = _mm512_fmadd_ps(ar, bv[h], acc[r][h]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
  const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int h = 0; h < NV; ++h) {
      float* out = c + r * ldc + 16 * h;
      __m512 v = _mm512_mul_ps(va, acc[r][h]);
      if (beta != 0.0f) v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(out), v);
      _mm512_storeu_ps(out, v);
    }
  }
}

#endif  // ZN_GEMM_X86

// ---- Kernels: a packed layout, a register tile, cache blocks and a micro-kernel.
// KC is the summation block and KD the most packed at once (see gemm_blocked): MC x KD of A
// (up to 576 KiB) stays in L2 and a KD x NR panel of B in L2 too, of which the KC x NR part a
// tile is using in L1 (sized for 1 MiB L2 / 32 KiB L1 and up). The bf16 kernels sum whole
// passes (KC == KD; the header has their blocking).

template <typename P>
using TileFn = void (*)(long steps, const P* a, const P* b, float* c, long ldc, float alpha,
                        float beta);

struct ScalarF32 {
  using Packed = float;
  static constexpr Layout layout = Layout::F32Lanes;
  static constexpr bool simd_packing = false;
  static constexpr int MR = 6, NR = 16;
  static constexpr long MC = 144, KC = 256, KD = 1024, NC = 3072, NC_FEW_ROWS = NC;
  static constexpr TileFn<Packed> tile = tile_scalar_f32<MR, NR>;
};

struct ScalarBf16Pairs {
  using Packed = uint32_t;
  static constexpr Layout layout = Layout::Bf16Pairs;
  static constexpr bool simd_packing = false;
  static constexpr int MR = 12, NR = 32;
  // KC == KD: each packed pass is summed in registers in one micro-kernel call (see gemm_blocked).
  // NC_FEW_ROWS: the B block width when M is at most 4 MC (see gemm_blocked).
  static constexpr long MC = 144, KC = 2048, KD = 2048, NC = 3072, NC_FEW_ROWS = 768;
  static constexpr TileFn<Packed> tile = tile_scalar_bf16_pairs<MR, NR>;
};

#ifdef ZN_GEMM_X86
struct Avx2F32 : ScalarF32 {
  static constexpr bool simd_packing = true;
  static constexpr TileFn<Packed> tile = tile_avx2_6x16;
};

// 8 x 32: measured 2x the AVX2 6 x 16 kernel on Zen 5 (full-width 512-bit FMA); 8 x 48,
// 12 x 32 and 6 x 64 measured the same. 8 and 32 lanes keep the AVX2 transposing packers.
struct Avx512F32 : ScalarF32 {
  static constexpr bool simd_packing = true;
  static constexpr int MR = 8, NR = 32;
  static constexpr TileFn<Packed> tile = tile_avx512f32<MR, NR>;
};

struct Avx512Bf16Pairs : ScalarBf16Pairs {
  static constexpr bool simd_packing = true;
  static constexpr TileFn<Packed> tile = tile_avx512bf16<MR, NR>;
};
#endif

// ---- Packing.

// Element (lane, depth) of an operand as the kernels see it: lanes are rows of op(A) or
// columns of op(B), depth runs along K. One of the two directions is contiguous in memory.
struct Source {
  const void* data;
  DType dtype;
  long stride;            // the row stride of the stored matrix
  bool lanes_contiguous;  // element (l, d) at d * stride + l, else at l * stride + d
};

Source a_source(const Matrix& A, bool trans_a) { return {A.data, A.dtype, A.ld, trans_a}; }
Source b_source(const Matrix& B, bool trans_b) { return {B.data, B.dtype, B.ld, !trans_b}; }

struct KeepF32 {
  float operator()(float x) const { return x; }
};
struct RoundF32ToBf16 {
  float operator()(float x) const { return bf16_to_f32(f32_to_bf16(x)); }
};
struct WidenBf16 {
  float operator()(bf16 x) const { return bf16_to_f32(x); }
};
struct Bf16BitsOfF32 {
  uint32_t operator()(float x) const { return f32_to_bf16(x).bits; }
};
struct Bf16Bits {
  uint32_t operator()(bf16 x) const { return x.bits; }
};

// dst[d * W + l] = convert(src(l, d)) for l < lanes, 0 for the padding lanes up to W.
template <int W, typename T, typename Convert>
void pack_f32_lanes(const T* src, long stride, bool lanes_contiguous, long lanes, long depth,
                    Convert convert, float* dst) {
  if (lanes_contiguous) {  // a straight copy, one packed row per depth step
    for (long d = 0; d < depth; ++d) {
      const T* s = src + d * stride;
      float* out = dst + d * W;
      long l = 0;
      for (; l < lanes; ++l) out[l] = convert(s[l]);
      for (; l < W; ++l) out[l] = 0.0f;
    }
    return;
  }
  // Depth contiguous: a transpose, done through an L1-resident W x 8 block so that the reads
  // run along each lane and the writes along each packed row.
  constexpr long kBlock = 8;
  float block[W][kBlock];
  for (long d0 = 0; d0 < depth; d0 += kBlock) {
    const long n = std::min(kBlock, depth - d0);
    for (long l = 0; l < W; ++l) {
      const T* s = src + l * stride + d0;
      if (l < lanes && n == kBlock) {
        for (long j = 0; j < kBlock; ++j) block[l][j] = convert(s[j]);
      } else {
        for (long j = 0; j < kBlock; ++j) block[l][j] = l < lanes && j < n ? convert(s[j]) : 0.0f;
      }
    }
    for (long j = 0; j < n; ++j) {
      for (long l = 0; l < W; ++l) dst[(d0 + j) * W + l] = block[l][j];
    }
  }
}

#ifdef ZN_GEMM_X86

// Eight consecutive source values as f32, converted exactly as the scalar functors do.
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* s, KeepF32) {
  return _mm256_loadu_ps(s);
}

__attribute__((target("avx2,fma"))) inline __m256 load8(const float* s, RoundF32ToBf16) {
  return simd::round_to_bf16_avx2(_mm256_loadu_ps(s));
}

__attribute__((target("avx2,fma"))) inline __m256 load8(const bf16* s, WidenBf16) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// In-register 8 x 8 transpose: r[i][j] becomes r[j][i].
__attribute__((target("avx2,fma"))) inline void transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// pack_f32_lanes for a full panel (lanes == W) of a depth-contiguous source (op(B) with B
// transposed, as in y = x·Wᵀ): 8 x 8 blocks transposed in registers.
template <int W, typename T, typename Convert>
__attribute__((target("avx2,fma"))) void pack_f32_lanes_transposing_avx2(
    const T* src, long stride, long depth, Convert convert, float* dst) {
  static_assert(W % 8 == 0, "whole 8-lane blocks");
  long d0 = 0;
  for (; d0 + 8 <= depth; d0 += 8) {
    for (int l0 = 0; l0 < W; l0 += 8) {
      __m256 rows[8];
#pragma GCC unroll 8
      for (int l = 0; l < 8; ++l) rows[l] = load8(src + (l0 + l) * stride + d0, convert);
      transpose8x8(rows);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (d0 + j) * W + l0, rows[j]);
    }
  }
  for (; d0 < depth; ++d0) {
    for (int l = 0; l < W; ++l) dst[d0 * W + l] = convert(src[l * stride + d0]);
  }
}

// The same for the 6-lane A panels of the 6x16 kernel (x in y = x·Wᵀ, dy in dx = dy·W): six
// rows and two zero rows transposed as 8 x 8; the packed panel holds 6 floats per depth step,
// so each transposed row is stored 8 wide at a 6-float pitch, the next store overwriting the
// 2 spilled floats, and the block's last store masked to 6 lanes.
template <typename T, typename Convert>
__attribute__((target("avx2,fma"))) void pack_f32_lanes6_transposing_avx2(
    const T* src, long stride, long depth, Convert convert, float* dst) {
  constexpr int W = 6;
  const __m256i six_lanes = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
  long d0 = 0;
  for (; d0 + 8 <= depth; d0 += 8) {
    __m256 rows[8];
#pragma GCC unroll 6
    for (int l = 0; l < W; ++l) rows[l] = load8(src + l * stride + d0, convert);
    rows[6] = rows[7] = _mm256_setzero_ps();
    transpose8x8(rows);
#pragma GCC unroll 7
    for (int j = 0; j < 7; ++j) _mm256_storeu_ps(dst + (d0 + j) * W, rows[j]);
    _mm256_maskstore_ps(dst + (d0 + 7) * W, six_lanes, rows[7]);
  }
  for (; d0 < depth; ++d0) {
    for (int l = 0; l < W; ++l) dst[d0 * W + l] = convert(src[l * stride + d0]);
  }
}

// Full panels of a depth-contiguous source through the transposing AVX2 packers.
template <int W, typename T, typename Convert>
__attribute__((target("avx2,fma"))) void pack_transposing_avx2(const T* src, long stride, long depth,
                                                                 Convert convert, float* dst) {
  if constexpr (W == 6) pack_f32_lanes6_transposing_avx2(src, stride, depth, convert, dst);
  else pack_f32_lanes_transposing_avx2<W>(src, stride, depth, convert, dst);
}

#endif  // ZN_GEMM_X86

// dst[q * W + l] = bf16(src(l, 2q)) | bf16(src(l, 2q + 1)) << 16, zero past `lanes` and `depth`.
template <int W, typename T, typename Bits>
void pack_bf16_pairs(const T* src, long stride, bool lanes_contiguous, long lanes, long depth,
                     Bits bits, uint32_t* dst) {
  const long pairs = ceil_div(depth, 2);
  const long lane_step = lanes_contiguous ? 1 : stride, depth_step = lanes_contiguous ? stride : 1;
  auto pair = [&](long l, long q) {
    if (l >= lanes) return uint32_t(0);
    const T* s = src + l * lane_step + 2 * q * depth_step;
    const uint32_t high = 2 * q + 1 < depth ? bits(s[depth_step]) : 0;
    return bits(s[0]) | (high << 16);
  };
  if (lanes_contiguous) {  // read along lanes: two source rows per packed row
    for (long q = 0; q < pairs; ++q) {
      for (long l = 0; l < W; ++l) dst[q * W + l] = pair(l, q);
    }
  } else {
    for (long l = 0; l < W; ++l) {
      for (long q = 0; q < pairs; ++q) dst[q * W + l] = pair(l, q);
    }
  }
}

#ifdef ZN_GEMM_X86
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_epi32() (`__m512i __Y = __Y;`), which
// -Wmaybe-uninitialized reports once inlined (GCC bug 105593, fixed in 12.3 and 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define ZN_TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512bf16,avx512vl")))

// f32_to_bf16 on 16 lanes, the bf16 bits left in the high half of each lane (low half zero).
ZN_TARGET_AVX512BF16 inline __m512i bf16_high_halves(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i high_half = _mm512_set1_epi32(int(0xffff0000u));
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), high_half);
  const __m512i quiet_nan = _mm512_or_si512(_mm512_and_si512(u, high_half), _mm512_set1_epi32(0x400000));
  const __mmask16 is_nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_mask_blend_epi32(is_nan, rounded, quiet_nan);
}

// 16 lanes of two consecutive depth rows as pairs: bf16(first) | bf16(second) << 16.
ZN_TARGET_AVX512BF16 inline __m512i pairs_of_rows(const bf16* first, const bf16* second, __mmask16 lanes) {
  const __m512i low = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, first));
  if (!second) return low;
  const __m512i high = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, second));
  return _mm512_or_si512(low, _mm512_slli_epi32(high, 16));
}

ZN_TARGET_AVX512BF16 inline __m512i pairs_of_rows(const float* first, const float* second, __mmask16 lanes) {
  const __m512i low = _mm512_srli_epi32(bf16_high_halves(_mm512_maskz_loadu_ps(lanes, first)), 16);
  if (!second) return low;
  return _mm512_or_si512(low, bf16_high_halves(_mm512_maskz_loadu_ps(lanes, second)));
}

// 16 consecutive pairs (32 depth values) of one lane as 16 u32 pairs.
ZN_TARGET_AVX512BF16 inline __m512i pairs_along_depth(const bf16* s) { return _mm512_loadu_si512(s); }

ZN_TARGET_AVX512BF16 inline __m512i pairs_along_depth(const float* s) {
  const __m512i first = bf16_high_halves(_mm512_loadu_ps(s));
  const __m512i second = bf16_high_halves(_mm512_loadu_ps(s + 16));
  // The high 16-bit half of every f32 lane, in order: 16-bit element 2i + 1 of (first, second).
  const __m512i odd_halves = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
                                              31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  return _mm512_permutex2var_epi16(first, odd_halves, second);
}

// In-register 16 x 16 transpose of 32-bit elements: r[i][j] becomes r[j][i].
ZN_TARGET_AVX512BF16 inline void transpose16x16(__m512i r[16]) {
  __m512i t[16], u[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + j], 128-bit lane k: rows 4i..4i+3 of column 4k + j.
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512i even0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);
    const __m512i even1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);
    const __m512i odd0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xdd);
    const __m512i odd1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xdd);
    r[j] = _mm512_shuffle_i32x4(even0, even1, 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(even0, even1, 0xdd);
    r[4 + j] = _mm512_shuffle_i32x4(odd0, odd1, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(odd0, odd1, 0xdd);
  }
}

// pack_bf16_pairs for a full panel (lanes == W), 16 lanes per vector: the same bits as the
// scalar packer (the f32 rounding is f32_to_bf16's, NaN included).
template <int W, typename T>
ZN_TARGET_AVX512BF16 void pack_bf16_pairs_avx512(const T* src, long stride, bool lanes_contiguous, long depth,
                                                 uint32_t* dst) {
  constexpr int kVectors = (W + 15) / 16;
  const long pairs = ceil_div(depth, 2);
  if (lanes_contiguous) {  // two source rows per packed row
    for (long q = 0; q < pairs; ++q) {
      const T* first = src + 2 * q * stride;
      const T* second = 2 * q + 1 < depth ? first + stride : nullptr;
#pragma GCC unroll 2
      for (int v = 0; v < kVectors; ++v) {
        const int n = std::min(16, W - 16 * v);
        const __mmask16 lanes = __mmask16((1u << n) - 1);
        _mm512_mask_storeu_epi32(dst + q * W + 16 * v, lanes,
                                 pairs_of_rows(first + 16 * v, second ? second + 16 * v : nullptr, lanes));
      }
    }
    return;
  }
  // Depth contiguous: 16 pairs of 16 lanes at a time through a 16 x 16 transpose.
  long q0 = 0;
  for (; 2 * (q0 + 16) <= depth; q0 += 16) {
#pragma GCC unroll 2
    for (int v = 0; v < kVectors; ++v) {
      const int n = std::min(16, W - 16 * v);
      __m512i rows[16];
#pragma GCC unroll 16
      for (int l = 0; l < 16; ++l) {
        rows[l] = l < n ? pairs_along_depth(src + (16 * v + l) * stride + 2 * q0) : _mm512_setzero_si512();
      }
      transpose16x16(rows);
      const __mmask16 lanes = __mmask16((1u << n) - 1);
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) _mm512_mask_storeu_epi32(dst + (q0 + j) * W + 16 * v, lanes, rows[j]);
    }
  }
  if (q0 < pairs) {  // the last few pairs (and half a pair at odd depth): the scalar packer
    const long done = 2 * q0;
    if constexpr (std::is_same_v<T, bf16>)
      pack_bf16_pairs<W>(src + done, stride, false, W, depth - done, Bf16Bits{}, dst + q0 * W);
    else pack_bf16_pairs<W>(src + done, stride, false, W, depth - done, Bf16BitsOfF32{}, dst + q0 * W);
  }
}
#pragma GCC diagnostic pop
#endif  // ZN_GEMM_X86

// Packs lanes [lane0, lane0 + lanes) x depth [depth0, depth0 + depth) of `src` as one panel.
// With `simd`, full panels take the vector packers of the kernel's instruction set (AVX2 for
// F32Lanes, AVX-512 for Bf16Pairs), which write the same bits as the scalar ones.
template <Layout L, int W, bool simd, typename P>
void pack_panel(const Source& src, long lane0, long depth0, long lanes, long depth,
                bool round_to_bf16, P* dst) {
  const long offset = src.lanes_contiguous ? depth0 * src.stride + lane0
                                           : lane0 * src.stride + depth0;
  const long stride = src.stride;
  const bool lc = src.lanes_contiguous;
  const float* f32 = static_cast<const float*>(src.data) + offset;
  const bf16* b16 = static_cast<const bf16*>(src.data) + offset;
  if constexpr (L == Layout::F32Lanes) {
#ifdef ZN_GEMM_X86
    if constexpr (simd && (W % 8 == 0 || W == 6)) {
      if (!lc && lanes == W) {
        if (src.dtype == DType::BF16)
          pack_transposing_avx2<W>(b16, stride, depth, WidenBf16{}, dst);
        else if (round_to_bf16)
          pack_transposing_avx2<W>(f32, stride, depth, RoundF32ToBf16{}, dst);
        else pack_transposing_avx2<W>(f32, stride, depth, KeepF32{}, dst);
        return;
      }
    }
#endif
    if (src.dtype == DType::BF16) pack_f32_lanes<W>(b16, stride, lc, lanes, depth, WidenBf16{}, dst);
    else if (round_to_bf16) pack_f32_lanes<W>(f32, stride, lc, lanes, depth, RoundF32ToBf16{}, dst);
    else pack_f32_lanes<W>(f32, stride, lc, lanes, depth, KeepF32{}, dst);
  } else {
#ifdef ZN_GEMM_X86
    if constexpr (simd) {
      if (lanes == W) {
        if (src.dtype == DType::BF16) pack_bf16_pairs_avx512<W>(b16, stride, lc, depth, dst);
        else pack_bf16_pairs_avx512<W>(f32, stride, lc, depth, dst);
        return;
      }
    }
#endif
    if (src.dtype == DType::BF16) pack_bf16_pairs<W>(b16, stride, lc, lanes, depth, Bf16Bits{}, dst);
    else pack_bf16_pairs<W>(f32, stride, lc, lanes, depth, Bf16BitsOfF32{}, dst);
  }
}

// ---- Driver.

// A growable 64-byte-aligned buffer, kept between calls.
class Scratch {
 public:
  template <typename T>
  T* get(long count) {
    const size_t bytes = size_t(round_up(count * long(sizeof(T)), 64));
    if (bytes > size_) {
      data_.reset();
      size_ = 0;
      data_.reset(static_cast<char*>(std::aligned_alloc(64, bytes)));
      ZN_CHECK(data_ != nullptr, "gemm: cannot allocate ", bytes, " bytes of packing buffer");
      size_ = bytes;
    }
    return reinterpret_cast<T*>(data_.get());
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> data_;
  size_t size_ = 0;
};

// Packing buffers of one role for every thread: a GEMM takes its B block, and each of its tasks
// an A block, from the pool and gives it back, so the next call reuses them whichever thread
// makes it. (Per-thread buffers kept a set for every thread that ever called, and Node's libuv
// workers take turns calling the model: 8 MiB more peak RSS on the small bench's SFT step.)
class ScratchPool {
 public:
  class Lease {
   public:
    explicit Lease(ScratchPool& pool) : pool_(pool), scratch_(pool.take()) {}
    ~Lease() { pool_.give_back(std::move(scratch_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Scratch& operator*() { return *scratch_; }

   private:
    ScratchPool& pool_;
    std::unique_ptr<Scratch> scratch_;
  };

 private:
  std::unique_ptr<Scratch> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.empty()) return std::make_unique<Scratch>();
    std::unique_ptr<Scratch> scratch = std::move(free_.back());
    free_.pop_back();
    return scratch;
  }
  void give_back(std::unique_ptr<Scratch> scratch) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(scratch));
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<Scratch>> free_;
};

ScratchPool a_blocks;
ScratchPool b_blocks;

struct Problem {
  long M, N, K;
  float alpha, beta;
  Source a, b;
  bool round_to_bf16;
  float* C;
  long ldc;
};

// Below this many multiply-adds a parallel region costs more than it saves.
constexpr double kParallelMacs = double(1 << 20);

template <class Kernel>
void gemm_blocked(const Problem& pr) {
  using P = typename Kernel::Packed;
  constexpr Layout L = Kernel::layout;
  constexpr int MR = Kernel::MR, NR = Kernel::NR;
  constexpr long k_per_step = L == Layout::Bf16Pairs ? 2 : 1;
  const bool threaded = double(pr.M) * double(pr.N) * double(pr.K) >= kParallelMacs;
  const long threads = threaded ? num_threads() : 1;
  // Row blocks of A are the parallel work items: as many as MC allows, rounded up to a
  // multiple of the thread count and evened out, so that no thread idles on a short last block.
  const long mc = round_up(ceil_div(pr.M, round_up(ceil_div(pr.M, Kernel::MC), threads)), MR);
  const long m_blocks = ceil_div(pr.M, mc);
  // With few rows, A is cheap to pack again for each block of B, and a narrower B block (768 x
  // 2048 x 2 B = 3 MiB) stays in L3 for the few A blocks that reuse it: 512 x 4096 x 4096 and
  // 512 x 14336 x 4096 nt ran 2-3% of the vdpbf16ps peak faster on one Zen 5 core than at 3072.
  const long nc = std::min(pr.M <= 4 * Kernel::MC ? Kernel::NC_FEW_ROWS : Kernel::NC, round_up(pr.N, NR));
  // The summation order: every output sums K in KC-deep blocks, each from zero, adding each
  // block to C. Up to KD deep (several blocks) is packed at once and each C tile takes all of
  // its blocks in turn, so it stays in L1 between them instead of going to memory and back once
  // per block (the order of the sums, hence the bits, is the same). K is split into equal
  // packed depths (whole KC blocks): on one Zen 5 core, K = 1408 in one 1408-deep pass ran
  // 4-10% faster than 1024 + 384, K = 2048 as 2 x 1024 faster than 4 x 512 or 1536 + 512.
  // A kernel with KC == KD sums each whole pass in registers (the bf16 kernels: one call per
  // tile and pass instead of one per 256 k, measured 3.5% of the vdpbf16ps peak on Zen 5), and
  // its passes need only be whole vectors of pairs.
  constexpr long depth_unit = Kernel::KC >= Kernel::KD ? 32 : Kernel::KC;
  const long kc = std::min(Kernel::KC, pr.K);
  const long kd = std::min(pr.K, round_up(ceil_div(pr.K, ceil_div(pr.K, Kernel::KD)), depth_unit));
  ScratchPool::Lease b_scratch(b_blocks);
  P* const b_block = (*b_scratch).get<P>(ceil_div(kd, k_per_step) * nc);

  for (long jc = 0; jc < pr.N; jc += nc) {
    const long cols = std::min(nc, pr.N - jc);
    const long b_panels = ceil_div(cols, NR);
    for (long pd = 0; pd < pr.K; pd += kd) {
      const long depth = std::min(kd, pr.K - pd);
      const long steps = ceil_div(depth, k_per_step);  // of a packed panel

      auto pack_b = [&](size_t jr) {
        pack_panel<L, NR, Kernel::simd_packing>(pr.b, jc + long(jr) * NR, pd, std::min<long>(NR, cols - long(jr) * NR),
                                                depth, pr.round_to_bf16, b_block + long(jr) * steps * NR);
      };
      if (threaded) parallel_for_each(size_t(b_panels), pack_b);
      else for (long jr = 0; jr < b_panels; ++jr) pack_b(size_t(jr));

      // When M alone gives too few blocks (small M), the B panels are split too; each part
      // repacks its A block, which is small in that case. Items are handed out dynamically, so
      // a thread the OS delays does not hold the others up.
      const long n_parts =
          threaded ? std::clamp<long>(ceil_div(2 * threads, m_blocks), 1, b_panels) : 1;
      auto block = [&](size_t item) {
        const long ic = long(item) / n_parts * mc;
        const long part = long(item) % n_parts;
        const long rows = std::min(mc, pr.M - ic);
        const long a_panels = ceil_div(rows, MR);
        ScratchPool::Lease a_scratch(a_blocks);
        P* const a_block = (*a_scratch).get<P>(a_panels * steps * MR);
        for (long ir = 0; ir < a_panels; ++ir) {
          pack_panel<L, MR, Kernel::simd_packing>(pr.a, ic + ir * MR, pd, std::min<long>(MR, rows - ir * MR), depth,
                                                  pr.round_to_bf16, a_block + ir * steps * MR);
        }
        for (long jr = b_panels * part / n_parts; jr < b_panels * (part + 1) / n_parts; ++jr) {
          const long n = std::min<long>(NR, cols - jr * NR);
          for (long ir = 0; ir < a_panels; ++ir) {
            const long m = std::min<long>(MR, rows - ir * MR);
            float* c = pr.C + (ic + ir * MR) * pr.ldc + jc + jr * NR;
            for (long p0 = 0; p0 < depth; p0 += kc) {
              const long s0 = p0 / k_per_step, s = ceil_div(std::min(kc, depth - p0), k_per_step);
              const P* a_panel = a_block + ir * steps * MR + s0 * MR;
              const P* b_panel = b_block + jr * steps * NR + s0 * NR;
              const float beta = pd + p0 == 0 ? pr.beta : 1.0f;  // later K blocks accumulate
              if (m == MR && n == NR) {
                Kernel::tile(s, a_panel, b_panel, c, pr.ldc, pr.alpha, beta);
              } else {  // edge tile: compute it whole, write back only the part inside C
                alignas(64) float tile[MR * NR];
                Kernel::tile(s, a_panel, b_panel, tile, NR, 1.0f, 0.0f);
                update_tile(tile, NR, m, n, c, pr.ldc, pr.alpha, beta);
              }
            }
          }
        }
      };
      const size_t items = size_t(m_blocks * n_parts);
      if (threaded) parallel_for_each(items, block);
      else for (size_t item = 0; item < items; ++item) block(item);
    }
  }
}

// ---- few rows against Wᵀ (see the header)

// 8, not more: with 32, the log-prob test with logits in the hundreds exceeded its f32 tolerance
// against float64 for 3 of 41 seeds (its panels of labelled tokens took this path), 0 of 61 at 8.
constexpr long kRowsDotMaxM = 8;

bool rows_dot_applies(bool trans_a, bool trans_b, long M) { return !trans_a && trans_b && M <= kRowsDotMaxM; }

// Row m of op(A) as f32, rounded to bf16 first when the product is computed in bf16.
std::vector<float> a_rows_f32(const Matrix& A, long M, long K, bool bf16_compute) {
  std::vector<float> rows(static_cast<size_t>(M * K));
  for (long m = 0; m < M; ++m) {
    for (long k = 0; k < K; ++k) {
      float x = A.dtype == DType::BF16 ? bf16_to_f32(static_cast<const bf16*>(A.data)[m * A.ld + k])
                                       : static_cast<const float*>(A.data)[m * A.ld + k];
      if (bf16_compute) x = bf16_to_f32(f32_to_bf16(x));
      rows[size_t(m * K + k)] = x;
    }
  }
  return rows;
}

// acc[m] = sum_k x[m][k] * w[k] for one row w of B (bf16 widened exactly, or f32 rounded to
// bf16 when the product is bf16).
void rows_dot_scalar(long M, long K, const float* x, const void* w, DType wdt, bool bf16_compute, float* acc) {
  for (long m = 0; m < M; ++m) acc[m] = 0.0f;
  for (long k = 0; k < K; ++k) {
    float wk = wdt == DType::BF16 ? bf16_to_f32(static_cast<const bf16*>(w)[k]) : static_cast<const float*>(w)[k];
    if (bf16_compute && wdt == DType::F32) wk = bf16_to_f32(f32_to_bf16(wk));
    for (long m = 0; m < M; ++m) acc[m] += x[m * K + k] * wk;
  }
}

#ifdef ZN_GEMM_X86
ZN_TARGET_AVX2 inline float sum8(__m256 v) {
  const __m128 pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
  return _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)));
}

// Four rows of W against every row of op(A): the W rows are widened to f32 once into `w` (4 x K,
// rows past `nw` zero), then pairs of A rows sweep them from L1 with 2 x 4 accumulators, so each
// vector of W loaded feeds two FMAs and each vector of A four. Each output is still one 8-lane
// accumulator over k in order, then its lanes and the tail: the same sum for any blocking.
ZN_TARGET_AVX2 void rows_dot_avx2(long M, long K, const float* x, const float* w, float* acc /* M x 4 */) {
  const long full = K / 8 * 8;
  for (long m0 = 0; m0 < M; m0 += 2) {
    const bool pair = m0 + 1 < M;
    const float* x0 = x + m0 * K;
    const float* x1 = pair ? x0 + K : x0;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    for (long k = 0; k < full; k += 8) {
      const __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + K + k);
      const __m256 w2 = _mm256_loadu_ps(w + 2 * K + k), w3 = _mm256_loadu_ps(w + 3 * K + k);
      const __m256 v0 = _mm256_loadu_ps(x0 + k), v1 = _mm256_loadu_ps(x1 + k);
      a00 = _mm256_fmadd_ps(v0, w0, a00);
      a01 = _mm256_fmadd_ps(v0, w1, a01);
      a02 = _mm256_fmadd_ps(v0, w2, a02);
      a03 = _mm256_fmadd_ps(v0, w3, a03);
      a10 = _mm256_fmadd_ps(v1, w0, a10);
      a11 = _mm256_fmadd_ps(v1, w1, a11);
      a12 = _mm256_fmadd_ps(v1, w2, a12);
      a13 = _mm256_fmadd_ps(v1, w3, a13);
    }
    const __m256 sums[2][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}};
    for (long i = 0; i < (pair ? 2 : 1); ++i) {
      const float* xr = x + (m0 + i) * K;
      for (long j = 0; j < 4; ++j) {
        float tail = 0.0f;
        for (long k = full; k < K; ++k) tail += xr[k] * w[j * K + k];
        acc[(m0 + i) * 4 + j] = sum8(sums[i][j]) + tail;
      }
    }
  }
}
#endif

// Row n of B as f32 (bf16 widened exactly; f32 rounded to bf16 when the product is bf16).
void widen_row(const void* w, DType wdt, bool bf16_compute, long K, float* out) {
  for (long k = 0; k < K; ++k) {
    const float v = wdt == DType::BF16 ? bf16_to_f32(static_cast<const bf16*>(w)[k]) : static_cast<const float*>(w)[k];
    out[k] = bf16_compute && wdt == DType::F32 ? bf16_to_f32(f32_to_bf16(v)) : v;
  }
}

void gemm_rows_dot(bool avx2, long M, long N, long K, float alpha, const Matrix& A, const Matrix& B, float beta,
                   float* C, long ldc, bool bf16_compute) {
  const std::vector<float> x = a_rows_f32(A, M, K, bf16_compute);
  const size_t w_row_bytes = size_t(B.ld) * dtype_size(B.dtype);
  auto store = [&](long m, long n, float value) {
    float& out = C[m * ldc + n];
    out = beta == 0.0f ? alpha * value : alpha * value + beta * out;
  };
  parallel_for(size_t(N), 64, [&](size_t begin, size_t end) {
    std::vector<float> acc(static_cast<size_t>(M * 4));
#ifdef ZN_GEMM_X86
    if (avx2) {
      std::vector<float> w(static_cast<size_t>(4 * K));
      for (size_t n0 = begin; n0 < end; n0 += 4) {
        const long nw = long(std::min<size_t>(4, end - n0));
        for (long j = 0; j < 4; ++j) {
          if (j < nw) widen_row(static_cast<const char*>(B.data) + (n0 + size_t(j)) * w_row_bytes, B.dtype, bf16_compute, K, w.data() + j * K);
          else std::fill_n(w.data() + j * K, K, 0.0f);
        }
        rows_dot_avx2(M, K, x.data(), w.data(), acc.data());
        for (long m = 0; m < M; ++m)
          for (long j = 0; j < nw; ++j) store(m, long(n0) + j, acc[size_t(m * 4 + j)]);
      }
      return;
    }
#endif
    for (size_t n = begin; n < end; ++n) {
      rows_dot_scalar(M, K, x.data(), static_cast<const char*>(B.data) + n * w_row_bytes, B.dtype, bf16_compute, acc.data());
      for (long m = 0; m < M; ++m) store(m, long(n), acc[size_t(m)]);
    }
  });
}

// C = beta * C (alpha == 0 or K == 0: the product contributes nothing and A, B are not read).
void scale_output(long M, long N, float beta, float* C, long ldc) {
  for (long i = 0; i < M; ++i) {
    for (long j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
  }
}

void check_operand(const char* name, const Matrix& X, bool trans, long rows, long cols) {
  const long stored_rows = trans ? cols : rows, stored_cols = trans ? rows : cols;
  ZN_CHECK(X.data != nullptr, "gemm: ", name, " is null for a ", stored_rows, "x", stored_cols,
           " operand");
  ZN_CHECK(X.ld >= stored_cols, "gemm: ld", name, "=", X.ld, " is smaller than the ", stored_cols,
           " columns of the stored ", stored_rows, "x", stored_cols, " ", name,
           trans ? " (transposed)" : "");
}

}  // namespace

namespace detail {

void gemm_on_path(CpuPath path, bool trans_a, bool trans_b, long M, long N, long K, float alpha,
                  Matrix A, Matrix B, float beta, float* C, long ldc) {
  ZN_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=", M, " N=", N, " K=", K);
  // (f32 GEMMs on the avx512bf16 path run the AVX2 kernel, which that path's features include.)
  ZN_CHECK(cpu_path_supported(path), "gemm: this CPU cannot run the ", cpu_path_name(path),
           " path (features: ", cpu_features_string(), ")");
  if (M == 0 || N == 0) return;
  ZN_CHECK(C != nullptr, "gemm: C is null for a ", M, "x", N, " output");
  ZN_CHECK(ldc >= N, "gemm: ldc=", ldc, " is smaller than the ", N, " columns of C");
  if (K == 0 || alpha == 0.0f) return scale_output(M, N, beta, C, ldc);
  check_operand("A", A, trans_a, M, K);
  check_operand("B", B, trans_b, K, N);

  const bool bf16_compute = A.dtype == DType::BF16 || B.dtype == DType::BF16;
  if (rows_dot_applies(trans_a, trans_b, M)) {
    return gemm_rows_dot(path != CpuPath::Scalar, M, N, K, alpha, A, B, beta, C, ldc, bf16_compute);
  }
  const Problem problem{M, N, K, alpha, beta, a_source(A, trans_a), b_source(B, trans_b),
                        bf16_compute, C, ldc};
  switch (path) {
#ifdef ZN_GEMM_X86
    case CpuPath::Avx512Bf16:
      if (bf16_compute) return gemm_blocked<Avx512Bf16Pairs>(problem);
      return gemm_blocked<Avx512F32>(problem);
    case CpuPath::Avx2: return gemm_blocked<Avx2F32>(problem);
#endif
    default:
      if (bf16_compute) return gemm_blocked<ScalarBf16Pairs>(problem);
      return gemm_blocked<ScalarF32>(problem);
  }
}

}  // namespace detail

void gemm(bool trans_a, bool trans_b, long M, long N, long K, float alpha, Matrix A, Matrix B,
          float beta, float* C, long ldc) {
  detail::gemm_on_path(cpu_path(), trans_a, trans_b, M, N, K, alpha, A, B, beta, C, ldc);
}

}  // namespace zn::cpu
