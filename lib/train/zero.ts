/**
 * ZeRO stages on data-parallel ranks (`zero_stage`, DeepSpeed's name and numbering; the sharding
 * itself is native/model/zero_shard.h's, the same ranges on CPU and GPU ranks, so shard files
 * written by either resume on the other):
 *
 * - 0: every rank holds the whole optimizer state; the gradients are all-reduced and every rank
 *   takes the same whole step (plain data parallel).
 * - 1: each rank holds AdamW's moments (and in bf16 mode the f32 master) of its 1/N element range
 *   of each trained group only. The gradients are all-reduced as in stage 0, so the grad norm is
 *   the same number; each rank steps its range, then the ranks all-gather the updated weights in
 *   place (f32 mode: the f32 weights, which are the master; bf16 mode: the bf16 rounding each
 *   rank's step wrote, and the f32 norm weights), so every rank's weights are bit for bit those
 *   of stage 0.
 * - 2: as 1, but the gradients are reduce-scattered: each rank receives the sum of its own range
 *   only, the grad norm is the all-reduced sum of the ranks' shard sums of squares (the same
 *   value to float rounding: the sum is grouped differently), and each rank steps its range
 *   from it. The whole gradient buffer still accumulates the micro-batches (the reduce-scatter
 *   follows the last one), on CPU ranks and on the GPU, so what stage 2 saves is communication
 *   (a reduce-scatter moves half an all-reduce's bytes), not gradient memory. With
 *   offload_optimizer on a GPU, stages 1 and 2 both cut the step's PCIe traffic to 1/N: only the
 *   rank's range of the gradients comes down to the host AdamW and only its range of the
 *   weights goes up.
 *
 * Collectives: CPU ranks run MPI over the model's host buffers (gradientBuffers, weightSegments);
 * GPU ranks run NCCL over the device buffers through the model's own calls (sumGradientsItself,
 * reduceScatterItself, allGatherItself: native/parallel/nccl_collectives.h), while MPI carries
 * the small ones (stage 2's sums of squares). With one rank every stage is the one-process
 * computation (zero_stage is accepted and changes nothing).
 */
import { UsageError } from '../errors.js';
import type { Ranks } from '../model/ranks.js';
import type { OptimizerSettings } from './loop.js';

export type ZeroStage = 0 | 1 | 2;

/** What a sharded data-parallel step needs of the model (MistralModel, lib/model/model.ts, on either device). */
export interface DataParallelModel {
  /** The gradient buffers data-parallel ranks sum in place (asked for only with several ranks). */
  gradientBuffers(): Float32Array[];
  /** GPU ranks: the model sums its device gradients itself (NCCL), instead of MPI over gradientBuffers(). */
  sumGradientsItself?(): Promise<void>;
  /** GPU ranks, stage 2: the model reduce-scatters its device gradients itself (NCCL). */
  reduceScatterItself?(): Promise<void>;
  /** GPU ranks, stages 1 and 2: the model all-gathers its updated device weights itself (NCCL), instead of MPI over weightSegments(). */
  allGatherItself?(): Promise<void>;
  gradientShardCounts(): number[][];
  shardGradSumOfSquares(): Promise<number>;
  weightSegments(): { data: Float32Array | Uint16Array; counts: number[] }[];
  clipAndStep(options: OptimizerSettings & { lr: number; gradSumOfSquares?: number }): Promise<{ gradNorm: number }>;
}

/** zero_stage as configured (CPU and GPU ranks alike). */
export function zeroStage(value: number): ZeroStage {
  if (value !== 0 && value !== 1 && value !== 2) throw new UsageError(`zero_stage must be 0, 1 or 2, got ${value}`);
  return value;
}

/** The stage that takes effect: one rank has nothing to shard. */
export function effectiveZeroStage(stage: ZeroStage, ranks: Pick<Ranks, 'size'>): ZeroStage {
  return ranks.size > 1 ? stage : 0;
}

/** The model options that shard the optimizer state across the ranks (none for stage 0 or one rank). */
export function shardOption(stage: ZeroStage, ranks: Pick<Ranks, 'rank' | 'size'>): { shard?: { rank: number; count: number } } {
  return effectiveZeroStage(stage, ranks) > 0 ? { shard: { rank: ranks.rank, count: ranks.size } } : {};
}

/**
 * After the last micro-batch: the gradients summed across the ranks (stages 0 and 1: all of
 * them on every rank; stage 2: each rank's own range). Returns stage 2's global sum of squared
 * gradients, which the step then clips by (undefined otherwise: the model computes it).
 */
export async function reduceGradients(model: DataParallelModel, ranks: Ranks, stage: ZeroStage): Promise<number | undefined> {
  if (ranks.size === 1) return undefined;
  if (stage < 2) {
    await sumGradients(model, ranks);
    return undefined;
  }
  if (model.reduceScatterItself) {
    await model.reduceScatterItself();
  } else {
    const buffers = model.gradientBuffers();
    const counts = model.gradientShardCounts();
    for (let i = 0; i < buffers.length; i++) await ranks.reduceScatterInPlace(buffers[i], counts[i], 'the gradient reduce-scatter');
  }
  const squares = Float64Array.of(await model.shardGradSumOfSquares());
  await ranks.allReduceSum([squares], "the gradient shards' sums of squares");
  return squares[0];
}

/** Every gradient summed across the ranks, before the clip: the model's own sum (GPU ranks: NCCL), else MPI over its host buffers. */
export async function sumGradients(model: Pick<DataParallelModel, 'gradientBuffers' | 'sumGradientsItself'>, ranks: Ranks): Promise<void> {
  if (ranks.size === 1) return;
  if (model.sumGradientsItself) return model.sumGradientsItself();
  await ranks.allReduceSum(model.gradientBuffers(), 'the gradient all-reduce');
}

/** The optimizer step (this rank's range under ZeRO), then the updated weights all-gathered. */
export async function stepAndGather(
  model: DataParallelModel,
  ranks: Ranks,
  stage: ZeroStage,
  hp: OptimizerSettings & { lr: number },
  gradSumOfSquares: number | undefined,
): Promise<{ gradNorm: number }> {
  const result = await model.clipAndStep(gradSumOfSquares === undefined ? hp : { ...hp, gradSumOfSquares });
  if (effectiveZeroStage(stage, ranks) === 0) return result;
  if (model.allGatherItself) {
    await model.allGatherItself();
  } else {
    for (const segment of model.weightSegments()) await ranks.allGatherInPlace(segment.data, segment.counts, 'the updated weights all-gather');
  }
  return result;
}
