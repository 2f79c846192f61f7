// DPO losses (see dpo.h; the math is kernels/cpu/dpo.cpp's). With z = beta * logits:
//   sigmoid: dL/dz = -(1 - ls) sigmoid(-z) + ls sigmoid(z);  dL/dpi_c = beta dL/dz = -dL/dpi_r
//   ipo:     dL/dpi_c = 2 (delta - 1/(2 beta)) / n_c,  dL/dpi_r = -2 (delta - 1/(2 beta)) / n_r
//   hinge:   dL/dpi_c = -beta if 1 - z > 0 else 0;  dL/dpi_r = -dL/dpi_c
// One block: a batch has a few hundred pairs at most, and the metrics need a block-wide sum.
#include "kernels/cuda/dpo.h"

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.cuh"

namespace zn::cuda {

namespace {

constexpr int kThreads = 256;

__device__ double log_sigmoid(double x) { return fmin(x, 0.0) - log1p(exp(-fabs(x))); }
__device__ double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  const double e = exp(x);
  return e / (1.0 + e);
}

__device__ double token_count(const int32_t* tokens, long i) {
  return tokens ? fmax(1.0, double(tokens[i])) : 1.0;
}

__global__ void __launch_bounds__(kThreads) dpo_kernel(
    long pairs, DpoLossType type, float beta, float ls, const float* pc, const float* pr,
    const float* rc, const float* rr, float* losses, float* dpc, float* dpr,
    const int32_t* chosen_tokens, const int32_t* rejected_tokens, DpoMetrics* metrics) {
  __shared__ double scratch[32];
  double sums[7] = {};
  for (long i = threadIdx.x; i < pairs; i += blockDim.x) {
    const float chosen = pc[i] - rc[i], rejected = pr[i] - rr[i];  // f32, as TRL's tensors
    double loss = 0, dchosen = 0, drejected = 0;
    if (type == DpoLossType::Sigmoid) {
      const double z = double(beta) * double(chosen - rejected);
      loss = -(1 - double(ls)) * log_sigmoid(z) - double(ls) * log_sigmoid(-z);
      const double dz = -(1 - double(ls)) * sigmoid(-z) + double(ls) * sigmoid(z);
      dchosen = double(beta) * dz;
      drejected = -double(beta) * dz;
    } else if (type == DpoLossType::Ipo) {
      const double nc = token_count(chosen_tokens, i), nr = token_count(rejected_tokens, i);
      const double gap = chosen / nc - rejected / nr - 1 / (2 * double(beta));
      loss = gap * gap;
      dchosen = 2 * gap / nc;
      drejected = -2 * gap / nr;
    } else {
      const double margin = 1 - double(beta) * double(chosen - rejected);
      if (margin > 0) {
        loss = margin;
        dchosen = -double(beta);
        drejected = double(beta);
      }
    }
    losses[i] = float(loss);
    dpc[i] = float(dchosen);
    dpr[i] = float(drejected);
    const float reward_chosen = beta * chosen, reward_rejected = beta * rejected;
    sums[0] += loss;
    sums[1] += reward_chosen;
    sums[2] += reward_rejected;
    sums[3] += reward_chosen > reward_rejected ? 1.0 : 0.0;
    sums[4] += double(reward_chosen) - double(reward_rejected);
    sums[5] += pc[i];
    sums[6] += pr[i];
  }
  if (!metrics) return;  // uniform across the block: no barrier is skipped by part of it
#pragma unroll
  for (int s = 0; s < 7; ++s) sums[s] = device::block_sum(sums[s], scratch) / double(pairs);
  if (threadIdx.x == 0)
    *metrics = DpoMetrics{sums[0], sums[1], sums[2], sums[3], sums[4], sums[5], sums[6]};
}

}  // namespace

void dpo_loss(long pairs, DpoLossType type, float beta, float label_smoothing,
              const float* policy_chosen, const float* policy_rejected, const float* ref_chosen,
              const float* ref_rejected, float* losses, float* dpolicy_chosen,
              float* dpolicy_rejected, const int32_t* chosen_tokens,
              const int32_t* rejected_tokens, DpoMetrics* metrics, cudaStream_t stream) {
  ZN_CHECK(pairs > 0, "dpo_loss: need at least one pair, got ", pairs);
  ZN_CHECK(beta > 0, "dpo_loss: beta must be positive, got ", beta);
  ZN_CHECK(label_smoothing >= 0 && label_smoothing <= 1,
           "dpo_loss: label_smoothing must lie in [0, 1], got ", label_smoothing);
  dpo_kernel<<<1, kThreads, 0, stream>>>(pairs, type, beta, label_smoothing, policy_chosen,
                                         policy_rejected, ref_chosen, ref_rejected, losses,
                                         dpolicy_chosen, dpolicy_rejected, chosen_tokens,
                                         rejected_tokens, metrics);
  ZN_CUDA_CHECK_LAUNCH();
}

}  // namespace zn::cuda
