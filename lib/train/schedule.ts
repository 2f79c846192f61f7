/**
 * Learning-rate schedules, as transformers' optimization.py computes them. `lrAt(step)` is the
 * rate the optimizer uses for the update that takes the run from `step` to `step + 1` (the
 * scheduler's lambda at `step`, scaled by the peak rate).
 */
import { UsageError } from '../errors.js';

export type SchedulerType = 'linear' | 'cosine' | 'constant' | 'constant_with_warmup';

export interface ScheduleConfig {
  type: SchedulerType;
  peakLr: number;
  totalSteps: number;
  warmupSteps: number;
}

/** transformers' TrainingArguments.get_warmup_steps, plus the older warmup_ratio key. */
export function warmupSteps(totalSteps: number, warmup: { warmup_steps: number; warmup_ratio: number }): number {
  if (warmup.warmup_steps < 0 || warmup.warmup_ratio < 0 || warmup.warmup_ratio > 1) {
    throw new UsageError(`warmup_steps / warmup_ratio must be non-negative (ratio at most 1), got ${warmup.warmup_steps} / ${warmup.warmup_ratio}`);
  }
  if (warmup.warmup_steps >= 1) return Math.floor(warmup.warmup_steps);
  if (warmup.warmup_steps > 0) return Math.ceil(totalSteps * warmup.warmup_steps);
  return Math.ceil(totalSteps * warmup.warmup_ratio);
}

function lambda(config: ScheduleConfig, step: number): number {
  const { type, totalSteps, warmupSteps: warmup } = config;
  if (type === 'constant') return 1;
  if (step < warmup) return step / Math.max(1, warmup);
  if (type === 'constant_with_warmup') return 1;
  const progress = (step - warmup) / Math.max(1, totalSteps - warmup);
  if (type === 'linear') return Math.max(0, (totalSteps - step) / Math.max(1, totalSteps - warmup));
  // cosine with num_cycles = 0.5
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 0.5 * 2 * progress)));
}

export function lrAt(config: ScheduleConfig, step: number): number {
  return config.peakLr * lambda(config, step);
}
