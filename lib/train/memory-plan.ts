/** The memory plan line a stage prints before it allocates a model. */
import type { MistralConfig } from '../model/config.js';
import { type MemoryPlan, modelMemoryPlan, type ModelOptions } from '../model/model.js';

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function describeMemoryPlan(label: string, plan: MemoryPlan): string {
  return (
    `memory plan (${label}): weights ${formatBytes(plan.weights)}, grads ${formatBytes(plan.grads)}, ` +
    `optimizer ${formatBytes(plan.optimizer)}, activations ${formatBytes(plan.activations)}, ` +
    `logits chunks ${formatBytes(plan.logitsChunks)}; total ${formatBytes(plan.total)}` +
    (plan.host > 0 ? `; host (offloaded optimizer) ${formatBytes(plan.host)}` : '')
  );
}

/** Prints what a model with these options would allocate, computed without allocating. */
export function logMemoryPlan(log: (line: string) => void, label: string, config: MistralConfig, options: ModelOptions): void {
  log(describeMemoryPlan(label, modelMemoryPlan(config, options)));
}
