/**
 * What a micro-batch costs: the SFT and DPO losses and their per-token gradients, as TRL 1.13
 * and transformers 5 normalise them.
 *
 * SFT: loss = (sum over the step's loss-carrying tokens of -log p) / (their count across every
 *   micro-batch of the optimizer step): transformers' num_items_in_batch rule, so batch 8 x
 *   accumulation 1 equals batch 1 x accumulation 8.
 * DPO: each micro-batch's loss is the mean over its pairs, divided by the number of micro-batches
 *   in the step (Trainer's loss / gradient_accumulation_steps, DPOTrainer takes no token counts).
 *   d loss / d logp[t] is d loss / d pi for the completion containing t.
 *
 * With data-parallel ranks each one runs its rows of the step (StepBatches.local) and normalises
 * by the whole step (StepBatches.global): SFT by the step's loss-token count across every rank,
 * DPO by each micro-batch's pair count across every rank; the loop sums the ranks' gradients,
 * losses and metric shares. One rank computes exactly what it did before ranks existed.
 */
import type { PreferenceBatch, TokenBatch } from '../data/batch.js';
import { IGNORE_INDEX } from '../data/batch.js';
import { collatePreference, collateSft } from '../data/collate.js';
import type { PreferencePair } from '../data/dpo-tokenize.js';
import type { SftItem } from '../data/load.js';
import { type Device, dpoLoss } from '../model/model.js';
import { ZnError } from '../errors.js';
import type { EvalTotals, Objective, StepBatches, StepResult } from './loop.js';

/** The model operations objectives use (lib/model/model.ts MistralModel has them). */
export interface ObjectiveModel {
  forward(batch: TokenBatch): Promise<Float32Array>;
  logprobs(batch: TokenBatch): Promise<Float32Array>;
  backward(dlogp: Float32Array): Promise<void>;
  forwardBackward(batch: TokenBatch, dlogp: Float32Array): Promise<Float32Array>;
}

function lossTokens(batch: TokenBatch): number {
  let count = 0;
  for (const target of batch.targets) if (target !== IGNORE_INDEX) count++;
  return count;
}

export class SftObjective implements Objective<SftItem> {
  constructor(private readonly model: ObjectiveModel) {}

  async accumulate({ global, local }: StepBatches<SftItem>): Promise<StepResult> {
    // All micro-batches are collated up front: the step's loss-token count (every rank's rows)
    // normalises every one.
    const batches = local.filter((items) => items.length > 0).map(collateSft);
    const counted = global === local ? batches : global.map(collateSft);
    const total = counted.reduce((sum, batch) => sum + lossTokens(batch), 0);
    let nll = 0;
    let tokens = 0;
    for (const batch of batches) {
      // d loss / d logp is -1/total on every loss-carrying token whatever the log-probs are, so
      // forward and backward run as one call (the lm_head's logits are computed once).
      const dlogp = new Float32Array(batch.inputIds.length);
      for (let t = 0; t < dlogp.length; t++) if (batch.targets[t] !== IGNORE_INDEX) dlogp[t] = -1 / Math.max(1, total);
      const logp = await this.model.forwardBackward(batch, dlogp);
      for (let t = 0; t < logp.length; t++) if (batch.targets[t] !== IGNORE_INDEX) nll -= logp[t];
      tokens += batch.inputIds.length;
    }
    return { loss: nll / Math.max(1, total), metrics: [], tokens };
  }

  readonly evalMetrics = ['loss'] as const;

  async evaluate(batches: SftItem[][]): Promise<EvalTotals> {
    const loss = { sum: 0, count: 0 };
    for (const items of batches) {
      const batch = collateSft(items);
      const logp = await this.model.logprobs(batch);
      let nll = 0;
      let tokens = 0;
      for (let t = 0; t < logp.length; t++) {
        if (batch.targets[t] === IGNORE_INDEX) continue;
        nll -= logp[t];
        tokens++;
      }
      // transformers' evaluation loop: each batch's token mean, weighted by its rows (it repeats
      // the loss eval_batch_size times, then cuts the list to the dataset's rows), padded or
      // padding-free alike.
      loss.sum += (items.length * nll) / Math.max(1, tokens);
      loss.count += items.length;
    }
    return { loss };
  }
}

/** Per-completion sums of token log-probs: documents 0..P-1 chosen, P..2P-1 rejected. */
export function completionLogps(batch: PreferenceBatch, logp: Float32Array): { chosen: Float32Array; rejected: Float32Array } {
  const sums = new Float64Array(2 * batch.pairs);
  for (let d = 0; d < 2 * batch.pairs; d++) {
    for (let t = batch.cuSeqlens[d]; t < batch.cuSeqlens[d + 1]; t++) {
      if (batch.targets[t] !== IGNORE_INDEX) sums[d] += logp[t];
    }
  }
  return { chosen: Float32Array.from(sums.subarray(0, batch.pairs)), rejected: Float32Array.from(sums.subarray(batch.pairs)) };
}

function completionTokens(batch: PreferenceBatch): { chosen: Int32Array; rejected: Int32Array } {
  const counts = new Int32Array(2 * batch.pairs);
  for (let d = 0; d < 2 * batch.pairs; d++) {
    for (let t = batch.cuSeqlens[d]; t < batch.cuSeqlens[d + 1]; t++) if (batch.targets[t] !== IGNORE_INDEX) counts[d]++;
  }
  return { chosen: counts.slice(0, batch.pairs), rejected: counts.slice(batch.pairs) };
}

/** TRL's logged DPO metrics (besides the loss), the keys dpoLoss returns. */
export const DPO_METRICS = ['rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins', 'logps/chosen', 'logps/rejected'] as const;

export interface DpoSettings {
  beta: number;
  lossType: 'sigmoid' | 'ipo' | 'hinge';
  labelSmoothing: number;
}

/** Reference log-probs: a frozen model, or values computed once up front. */
export interface ReferenceLogps {
  of(pairs: PreferencePair[], batch: PreferenceBatch): Promise<{ chosen: Float32Array; rejected: Float32Array }>;
}

export class ModelReference implements ReferenceLogps {
  constructor(private readonly model: ObjectiveModel) {}

  async of(_pairs: PreferencePair[], batch: PreferenceBatch): Promise<{ chosen: Float32Array; rejected: Float32Array }> {
    return completionLogps(batch, await this.model.logprobs(batch));
  }
}

/**
 * A fresh LoRA adapter's reference: the policy itself with its adapters off (TRL's
 * disable_adapter), so one copy of the base serves both. Taken before the policy's forward, so it
 * never clobbers the activations a backward needs.
 */
export class AdaptersOffReference implements ReferenceLogps {
  constructor(private readonly model: ObjectiveModel & { setAdaptersEnabled(enabled: boolean): void }) {}

  async of(_pairs: PreferencePair[], batch: PreferenceBatch): Promise<{ chosen: Float32Array; rejected: Float32Array }> {
    this.model.setAdaptersEnabled(false);
    try {
      return completionLogps(batch, await this.model.logprobs(batch));
    } finally {
      this.model.setAdaptersEnabled(true);
    }
  }
}

/** Reference log-probs looked up per pair (precompute_ref_log_probs). */
export class PrecomputedReference implements ReferenceLogps {
  constructor(private readonly table: Map<PreferencePair, { chosen: number; rejected: number }>) {}

  async of(pairs: PreferencePair[]): Promise<{ chosen: Float32Array; rejected: Float32Array }> {
    const rows = pairs.map((pair) => {
      const row = this.table.get(pair);
      if (!row) throw new Error('precomputed reference log-probs are missing a pair');
      return row;
    });
    return { chosen: Float32Array.from(rows, (r) => r.chosen), rejected: Float32Array.from(rows, (r) => r.rejected) };
  }
}

export class DpoObjective implements Objective<PreferencePair> {
  constructor(
    private readonly policy: ObjectiveModel,
    private readonly reference: ReferenceLogps,
    private readonly device: Device,
    private readonly settings: DpoSettings,
  ) {}

  private loss(batch: PreferenceBatch, policy: { chosen: Float32Array; rejected: Float32Array }, ref: { chosen: Float32Array; rejected: Float32Array }) {
    const counts = completionTokens(batch);
    return dpoLoss(this.device, {
      policyChosen: policy.chosen,
      policyRejected: policy.rejected,
      refChosen: ref.chosen,
      refRejected: ref.rejected,
      beta: this.settings.beta,
      labelSmoothing: this.settings.labelSmoothing,
      lossType: this.settings.lossType,
      chosenTokens: counts.chosen,
      rejectedTokens: counts.rejected,
    });
  }

  async accumulate({ global, local }: StepBatches<PreferencePair>): Promise<StepResult> {
    const scale = 1 / global.length;
    let loss = 0;
    let tokens = 0;
    // A rank with no rows of a micro-batch still reports its (zero) share of the metrics.
    const metrics: Record<string, number>[] = global.map(() => Object.fromEntries(DPO_METRICS.map((k) => [k, 0])));
    const todo = local.flatMap((pairs, m) => (pairs.length > 0 ? [m] : []));
    let next = todo.length > 0 ? collatePreference(local[todo[0]]) : null;
    for (let i = 0; i < todo.length; i++) {
      const m = todo[i];
      const pairs = local[m];
      // This rank's pairs' part of the micro-batch's mean (1 with one rank).
      const share = pairs.length / global[m].length;
      const batch = next!;
      const ref = await this.reference.of(pairs, batch);
      const forward = this.policy.forward(batch);
      // The next micro-batch is collated on the main thread while the native forward runs.
      if (i + 1 < todo.length) next = collatePreference(local[todo[i + 1]]);
      const logp = await forward;
      const result = this.loss(batch, completionLogps(batch, logp), ref);
      const dlogp = new Float32Array(logp.length);
      for (let d = 0; d < 2 * batch.pairs; d++) {
        const grad = (d < batch.pairs ? result.dPolicyChosen[d] : result.dPolicyRejected[d - batch.pairs]) * (scale / global[m].length);
        for (let t = batch.cuSeqlens[d]; t < batch.cuSeqlens[d + 1]; t++) if (batch.targets[t] !== IGNORE_INDEX) dlogp[t] = grad;
      }
      await this.policy.backward(dlogp);
      loss += result.metrics.loss * share * scale;
      tokens += batch.inputIds.length;
      const { loss: _mean, ...logged } = result.metrics;
      if (Object.keys(logged).sort().join() !== [...DPO_METRICS].sort().join()) {
        throw new ZnError(`dpo: the loss kernel's metrics (${Object.keys(logged).join(', ')}) are not DPO_METRICS`);
      }
      metrics[m] = Object.fromEntries(Object.entries(logged).map(([k, v]) => [k, v * share]));
    }
    return { loss, metrics, tokens };
  }

  readonly evalMetrics = ['loss', ...DPO_METRICS] as const;

  async evaluate(batches: PreferencePair[][]): Promise<EvalTotals> {
    const totals: EvalTotals = Object.fromEntries(this.evalMetrics.map((k) => [k, { sum: 0, count: 0 }]));
    for (const pairs of batches) {
      const batch = collatePreference(pairs);
      const ref = await this.reference.of(pairs, batch);
      const policy = completionLogps(batch, await this.policy.logprobs(batch));
      const metrics = this.loss(batch, policy, ref).metrics;
      // TRL: eval_loss weights each batch's mean by its pairs (transformers' evaluation loop), the
      // other metrics are the mean of the batches' means (DPOTrainer's stored metrics).
      for (const k of this.evalMetrics) {
        const weight = k === 'loss' ? pairs.length : 1;
        totals[k].sum += weight * metrics[k];
        totals[k].count += weight;
      }
    }
    return totals;
  }
}
