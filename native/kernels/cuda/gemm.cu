// GEMM (see gemm.h): cuBLASLt where linked, a tensor-core mma.sync kernel for bf16, and a simple
// tiled kernel for f32 and mixed dtypes. Row-major C = op(A) op(B) is computed as the
// column-major product Cᵀ = op(B)ᵀ op(A)ᵀ, which is how cuBLASLt sees our row-major buffers.
#include "kernels/cuda/gemm.h"

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.cuh"

#ifdef ZN_HAVE_CUBLASLT
#include <cublasLt.h>
#endif

namespace zn::cuda {

using device::cp_async_16;
using device::ldmatrix_x4;
using device::ldmatrix_x4_trans;
using device::mma_bf16_16816;

const char* gemm_impl_name(GemmImpl impl) {
  switch (impl) {
    case GemmImpl::Auto: return "auto";
    case GemmImpl::CublasLt: return "cublaslt";
    case GemmImpl::TensorCore: return "mma";
    case GemmImpl::Simple: return "simple";
  }
  return "?";
}

bool have_cublaslt() {
#ifdef ZN_HAVE_CUBLASLT
  return true;
#else
  return false;
#endif
}

GemmImpl gemm_auto_impl(DType a, DType b, DType c) {
  if (a != b) return GemmImpl::Simple;
  if (a == DType::F32) return have_cublaslt() && c == DType::F32 ? GemmImpl::CublasLt : GemmImpl::Simple;
  return have_cublaslt() ? GemmImpl::CublasLt : GemmImpl::TensorCore;
}

namespace {

// ---- tensor-core kernel: 128x128x32 CTA tile, 8 warps of 64x32, 3-stage cp.async pipeline ----

constexpr int kBM = 128, kBN = 128, kBK = 32, kStages = 3, kThreads = 256;
constexpr int kPad = 8;  // 16 bytes per shared row: ldmatrix rows land in distinct banks

// Shared-memory tile of a stored operand: `Rows` x `Cols` of the matrix as stored in global memory.
template <int Rows, int Cols>
struct Tile {
  static constexpr int rows = Rows, cols = Cols, stride = Cols + kPad, elems = Rows * stride;
};
template <bool TA>
using ATile = Tile<TA ? kBK : kBM, TA ? kBM : kBK>;  // A stored [M][K], or [K][M] when TA
template <bool TB>
using BTile = Tile<TB ? kBN : kBK, TB ? kBK : kBN>;  // B stored [K][N], or [N][K] when TB

// Copies rows [row0, row0 + Rows) x cols [col0, col0 + Cols) of a stored R x C matrix into
// shared memory, zero outside it. `vec` says rows are 16-byte aligned (base and ld).
template <typename T>
__device__ __forceinline__ void load_tile(__nv_bfloat16* smem, const __nv_bfloat16* global, long ld,
                                          long row0, long col0, long R, long C, bool vec) {
  constexpr int chunks_per_row = T::cols / 8;
  for (int c = threadIdx.x; c < T::rows * chunks_per_row; c += kThreads) {
    const int r = c / chunks_per_row, cc = (c % chunks_per_row) * 8;
    const long gr = row0 + r, gc = col0 + cc;
    __nv_bfloat16* dst = smem + r * T::stride + cc;
    if (vec && gr < R && gc + 8 <= C) {
      cp_async_16(dst, global + gr * ld + gc, true);
    } else if (vec && (gr >= R || gc >= C)) {
      cp_async_16(dst, global, false);
    } else {
      for (int e = 0; e < 8; ++e)
        dst[e] = (gr < R && gc + e < C) ? global[gr * ld + gc + e] : __float2bfloat16_rn(0.0f);
    }
  }
}

template <bool TA, bool TB, typename OutT>
__global__ void __launch_bounds__(kThreads) gemm_mma_kernel(
    long M, long N, long K, float alpha, const __nv_bfloat16* A, long lda, bool a_vec,
    const __nv_bfloat16* B, long ldb, bool b_vec, float beta, OutT* C, long ldc) {
  extern __shared__ __align__(16) unsigned char gemm_smem[];
  using AT = ATile<TA>;
  using BT = BTile<TB>;
  __nv_bfloat16* sA = reinterpret_cast<__nv_bfloat16*>(gemm_smem);
  __nv_bfloat16* sB = sA + kStages * AT::elems;

  const long m0 = long(blockIdx.y) * kBM, n0 = long(blockIdx.x) * kBN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
  const int g = lane / 4, t = lane % 4;

  auto load_stage = [&](int stage, long k0) {
    if (TA)
      load_tile<AT>(sA + stage * AT::elems, A, lda, k0, m0, K, M, a_vec);
    else
      load_tile<AT>(sA + stage * AT::elems, A, lda, m0, k0, M, K, a_vec);
    if (TB)
      load_tile<BT>(sB + stage * BT::elems, B, ldb, n0, k0, N, K, b_vec);
    else
      load_tile<BT>(sB + stage * BT::elems, B, ldb, k0, n0, K, N, b_vec);
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const long k_tiles = (K + kBK - 1) / kBK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s * kBK);
    device::cp_async_commit();
  }

  for (long kt = 0; kt < k_tiles; ++kt) {
    device::cp_async_wait<kStages - 2>();
    __syncthreads();
    const long next = kt + kStages - 1;
    if (next < k_tiles) load_stage(int(next % kStages), next * kBK);
    device::cp_async_commit();

    const __nv_bfloat16* a = sA + int(kt % kStages) * AT::elems;
    const __nv_bfloat16* b = sB + int(kt % kStages) * BT::elems;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[4][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int mb = wm + i * 16;
        if (TA)
          ldmatrix_x4_trans(af[i], a + (kk + lane % 8 + (lane / 16) * 8) * AT::stride + mb + ((lane / 8) % 2) * 8);
        else
          ldmatrix_x4(af[i], a + (mb + lane % 16) * AT::stride + kk + (lane / 16) * 8);
      }
#pragma unroll
      for (int jp = 0; jp < 2; ++jp) {
        const int nb = wn + jp * 16;
        uint32_t r[4];
        if (TB)
          ldmatrix_x4(r, b + (nb + lane % 8 + (lane / 16) * 8) * BT::stride + kk + ((lane / 8) % 2) * 8);
        else
          ldmatrix_x4_trans(r, b + (kk + lane % 8 + ((lane / 8) % 2) * 8) * BT::stride + nb + (lane / 16) * 8);
        bf[2 * jp][0] = r[0];
        bf[2 * jp][1] = r[1];
        bf[2 * jp + 1][0] = r[2];
        bf[2 * jp + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_bf16_16816(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
  }
  device::cp_async_wait<0>();

#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const long row = m0 + wm + i * 16 + g + (e / 2) * 8;
        const long col = n0 + wn + j * 8 + 2 * t + (e % 2);
        if (row < M && col < N) {
          OutT* c = C + row * ldc + col;
          float value = alpha * acc[i][j][e];
          if (beta != 0.0f) value += beta * device::to_f32(*c);
          *c = device::from_f32<OutT>(value);
        }
      }
}

template <bool TA, bool TB, typename OutT>
void launch_mma(long M, long N, long K, float alpha, const Matrix& A, const Matrix& B, float beta,
                OutT* C, long ldc, cudaStream_t stream) {
  constexpr size_t smem = kStages * (ATile<TA>::elems + BTile<TB>::elems) * sizeof(__nv_bfloat16);
  static const bool configured = [] {
    ZN_CUDA_CHECK(cudaFuncSetAttribute(gemm_mma_kernel<TA, TB, OutT>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return true;
  }();
  (void)configured;
  auto aligned = [](const Matrix& m) {
    return reinterpret_cast<uintptr_t>(m.data) % 16 == 0 && m.ld % 8 == 0;
  };
  const long grid_y = (M + kBM - 1) / kBM;
  ZN_CHECK(grid_y <= 65535, "gemm: M = ", M, " is too large for the tensor-core kernel");
  dim3 grid(unsigned((N + kBN - 1) / kBN), unsigned(grid_y));
  gemm_mma_kernel<TA, TB, OutT><<<grid, kThreads, smem, stream>>>(
      M, N, K, alpha, static_cast<const __nv_bfloat16*>(A.data), A.ld, aligned(A),
      static_cast<const __nv_bfloat16*>(B.data), B.ld, aligned(B), beta, C, ldc);
  ZN_CUDA_CHECK_LAUNCH();
}

template <typename OutT>
void gemm_mma(bool ta, bool tb, long M, long N, long K, float alpha, const Matrix& A,
              const Matrix& B, float beta, OutT* C, long ldc, cudaStream_t stream) {
  if (ta && tb) launch_mma<true, true>(M, N, K, alpha, A, B, beta, C, ldc, stream);
  else if (ta) launch_mma<true, false>(M, N, K, alpha, A, B, beta, C, ldc, stream);
  else if (tb) launch_mma<false, true>(M, N, K, alpha, A, B, beta, C, ldc, stream);
  else launch_mma<false, false>(M, N, K, alpha, A, B, beta, C, ldc, stream);
}

// ---- simple kernel: 64x64 tile, 4x4 outputs per thread, any operand dtypes ----

constexpr int kSimpleTile = 64, kSimpleK = 16;

__device__ __forceinline__ float load_operand(const void* data, bool is_bf16, long index, bool round) {
  const float x = is_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(data)[index])
                          : static_cast<const float*>(data)[index];
  return round ? __bfloat162float(__float2bfloat16_rn(x)) : x;
}

template <typename OutT>
__global__ void __launch_bounds__(256) gemm_simple_kernel(
    bool ta, bool tb, long M, long N, long K, float alpha, const void* A, bool a_bf16, long lda,
    const void* B, bool b_bf16, long ldb, float beta, OutT* C, long ldc) {
  __shared__ float sA[kSimpleK][kSimpleTile + 1];
  __shared__ float sB[kSimpleK][kSimpleTile + 1];
  const bool round = a_bf16 || b_bf16;
  const long m0 = long(blockIdx.y) * kSimpleTile, n0 = long(blockIdx.x) * kSimpleTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (long k0 = 0; k0 < K; k0 += kSimpleK) {
    for (int e = threadIdx.x; e < kSimpleK * kSimpleTile; e += 256) {
      const int kk = e / kSimpleTile, mm = e % kSimpleTile;
      const long k = k0 + kk, m = m0 + mm, n = n0 + mm;
      sA[kk][mm] = (k < K && m < M) ? load_operand(A, a_bf16, ta ? k * lda + m : m * lda + k, round) : 0.0f;
      sB[kk][mm] = (k < K && n < N) ? load_operand(B, b_bf16, tb ? n * ldb + k : k * ldb + n, round) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSimpleK; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += sA[kk][ty + 16 * i] * sB[kk][tx + 16 * j];
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const long row = m0 + ty + 16 * i, col = n0 + tx + 16 * j;
      if (row < M && col < N) {
        OutT* c = C + row * ldc + col;
        float value = alpha * acc[i][j];
        if (beta != 0.0f) value += beta * device::to_f32(*c);
        *c = device::from_f32<OutT>(value);
      }
    }
}

template <typename OutT>
void gemm_simple(bool ta, bool tb, long M, long N, long K, float alpha, const Matrix& A,
                 const Matrix& B, float beta, OutT* C, long ldc, cudaStream_t stream) {
  const long grid_y = (M + kSimpleTile - 1) / kSimpleTile;
  ZN_CHECK(grid_y <= 65535, "gemm: M = ", M, " is too large for the simple kernel");
  dim3 grid(unsigned((N + kSimpleTile - 1) / kSimpleTile), unsigned(grid_y));
  gemm_simple_kernel<OutT><<<grid, 256, 0, stream>>>(ta, tb, M, N, K, alpha, A.data,
                                                     A.dtype == DType::BF16, A.ld, B.data,
                                                     B.dtype == DType::BF16, B.ld, beta, C, ldc);
  ZN_CUDA_CHECK_LAUNCH();
}

// ---- cuBLASLt ----

#ifdef ZN_HAVE_CUBLASLT

#define ZN_CUBLAS_CHECK(call)                                                             \
  do {                                                                                    \
    const cublasStatus_t zn_cublas_status_ = (call);                                      \
    if (zn_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                       \
      ::zn::fail("cuBLASLt error: ", #call, " at ", __FILE__, ":", __LINE__, ": ",         \
                 cublasLtGetStatusName(zn_cublas_status_), ": ",                          \
                 cublasLtGetStatusString(zn_cublas_status_));                             \
  } while (0)

constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;

// Largest power of two (up to 256) dividing the address: what the heuristic may assume.
uint32_t alignment_of(const void* p) {
  uint32_t a = 256;
  while (a > 1 && reinterpret_cast<uintptr_t>(p) % a != 0) a /= 2;
  return a;
}

// One handle and workspace per device; algorithms cached per problem. The workspace is shared,
// so GEMMs of one device run on one stream at a time (the backend uses one stream).
struct LtDevice {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<std::tuple<bool, bool, long, long, long, long, long, long, int, int, bool, uint32_t,
                      uint32_t, uint32_t>,
           cublasLtMatmulAlgo_t>
      algos;
};

struct LtState {
  std::mutex mutex;
  std::map<int, LtDevice> devices;
};

LtState& lt_state() {
  static LtState state;
  return state;
}

// RAII for the per-call descriptors.
struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t preference = nullptr;
  ~LtDescriptors() {
    if (preference) cublasLtMatmulPreferenceDestroy(preference);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

cudaDataType_t lt_type(DType t) { return t == DType::F32 ? CUDA_R_32F : CUDA_R_16BF; }

void gemm_cublaslt(bool ta, bool tb, long M, long N, long K, float alpha, const Matrix& A,
                   const Matrix& B, float beta, const OutMatrix& C, cudaStream_t stream) {
  // Column-major view: C' (N x M, ld ldc) = op'(B') (N x K) · op'(A') (K x M), with B' = B
  // stored, transposed when tb; A' = A stored, transposed when ta.
  LtDescriptors d;
  const cudaDataType_t in = lt_type(A.dtype), out = lt_type(C.dtype);
  ZN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  ZN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first));
  ZN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second));
  ZN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, in, tb ? K : N, tb ? N : K, B.ld));
  ZN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, in, ta ? M : K, ta ? K : M, A.ld));
  ZN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, out, N, M, C.ld));

  int device = 0;
  ZN_CUDA_CHECK(cudaGetDevice(&device));
  const uint32_t align_first = alignment_of(B.data), align_second = alignment_of(A.data),
                 align_c = alignment_of(C.data);
  cublasLtMatmulAlgo_t algo;
  LtDevice* lt;
  {
    LtState& state = lt_state();
    std::lock_guard<std::mutex> lock(state.mutex);
    lt = &state.devices[device];
    if (!lt->handle) {
      ZN_CUBLAS_CHECK(cublasLtCreate(&lt->handle));
      ZN_CUDA_CHECK(cudaMalloc(&lt->workspace, kLtWorkspaceBytes));
    }
    const auto key = std::make_tuple(ta, tb, M, N, K, A.ld, B.ld, C.ld, int(A.dtype), int(C.dtype),
                                     beta == 0.0f, align_first, align_second, align_c);
    auto found = lt->algos.find(key);
    if (found != lt->algos.end()) {
      algo = found->second;
    } else {
      ZN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d.preference));
      const size_t ws = kLtWorkspaceBytes;
      ZN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          d.preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
      ZN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          d.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_first, sizeof align_first));
      ZN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          d.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_second, sizeof align_second));
      ZN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          d.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof align_c));
      ZN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          d.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof align_c));
      cublasLtMatmulHeuristicResult_t result{};
      int found_count = 0;
      ZN_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt->handle, d.op, d.a, d.b, d.c, d.c,
                                                     d.preference, 1, &result, &found_count));
      ZN_CHECK(found_count > 0, "gemm: cuBLASLt has no algorithm for M=", M, " N=", N, " K=", K,
               " (", dtype_name(A.dtype), " -> ", dtype_name(C.dtype), ")");
      algo = result.algo;
      lt->algos.emplace(key, algo);
    }
  }
  ZN_CUBLAS_CHECK(cublasLtMatmul(lt->handle, d.op, &alpha, B.data, d.a, A.data, d.b, &beta, C.data,
                                 d.c, C.data, d.c, &algo, lt->workspace, kLtWorkspaceBytes, stream));
}

#endif  // ZN_HAVE_CUBLASLT

template <typename OutT>
__global__ void scale_kernel(long M, long N, float beta, OutT* C, long ldc) {
  const long total = M * N;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    OutT* c = C + (i / N) * ldc + i % N;
    *c = device::from_f32<OutT>(beta == 0.0f ? 0.0f : beta * device::to_f32(*c));
  }
}

}  // namespace

void gemm(bool trans_a, bool trans_b, long M, long N, long K, float alpha, Matrix A, Matrix B,
          float beta, OutMatrix C, cudaStream_t stream, GemmImpl impl) {
  ZN_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=", M, " N=", N, " K=", K);
  ZN_CHECK(A.ld >= (trans_a ? M : K) && B.ld >= (trans_b ? K : N) && C.ld >= N,
           "gemm: a leading dimension is smaller than its row (lda=", A.ld, " ldb=", B.ld,
           " ldc=", C.ld, ")");
  if (M == 0 || N == 0) return;
  if (K == 0) {
    dispatch_dtype(C.dtype, [&](auto out) {
      using OutT = decltype(out);
      scale_kernel<OutT><<<grid_size(M * N, 256, 4096), 256, 0, stream>>>(M, N, beta, static_cast<OutT*>(C.data), C.ld);
    });
    ZN_CUDA_CHECK_LAUNCH();
    return;
  }
  if (impl == GemmImpl::Auto) impl = gemm_auto_impl(A.dtype, B.dtype, C.dtype);
  switch (impl) {
    case GemmImpl::CublasLt:
#ifdef ZN_HAVE_CUBLASLT
      ZN_CHECK(A.dtype == B.dtype, "gemm: cuBLASLt needs one operand dtype, got ",
               dtype_name(A.dtype), " and ", dtype_name(B.dtype));
      gemm_cublaslt(trans_a, trans_b, M, N, K, alpha, A, B, beta, C, stream);
      return;
#else
      fail("gemm: this build has no cuBLASLt (configure with ZN_CUBLAS_ROOT or a toolkit that has it)");
#endif
    case GemmImpl::TensorCore:
      ZN_CHECK(A.dtype == DType::BF16 && B.dtype == DType::BF16,
               "gemm: the tensor-core kernel takes bf16 operands, got ", dtype_name(A.dtype),
               " and ", dtype_name(B.dtype));
      dispatch_dtype(C.dtype, [&](auto out) {
        using OutT = decltype(out);
        gemm_mma(trans_a, trans_b, M, N, K, alpha, A, B, beta, static_cast<OutT*>(C.data), C.ld, stream);
      });
      return;
    case GemmImpl::Simple:
    case GemmImpl::Auto:
      dispatch_dtype(C.dtype, [&](auto out) {
        using OutT = decltype(out);
        gemm_simple(trans_a, trans_b, M, N, K, alpha, A, B, beta, static_cast<OutT*>(C.data), C.ld, stream);
      });
      return;
  }
}

}  // namespace zn::cuda
