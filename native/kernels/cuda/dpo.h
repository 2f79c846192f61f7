// DPO losses on the GPU, the contract and formulas of kernels/cpu/dpo.h (sigmoid with cDPO label
// smoothing, ipo with optional per-pair completion token counts, hinge): per-pair losses and
// d loss_i / d pi_c, d loss_i / d pi_r (the caller averages), computed in f64 from the f32
// log-ratios. The metrics (means over pairs, TRL's names) are written to a device DpoMetrics
// when `metrics` is not null: the caller copies them back when it logs. All pointers are device
// pointers; chosen_tokens / rejected_tokens may be null (every count 1).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/dpo.h"

namespace zn::cuda {

using cpu::DpoLossType;
using cpu::DpoMetrics;

void dpo_loss(long pairs, DpoLossType type, float beta, float label_smoothing,
              const float* policy_chosen, const float* policy_rejected, const float* ref_chosen,
              const float* ref_rejected, float* losses, float* dpolicy_chosen,
              float* dpolicy_rejected, const int32_t* chosen_tokens,
              const int32_t* rejected_tokens, DpoMetrics* metrics, cudaStream_t stream);

}  // namespace zn::cuda
