/**
 * Where a training step's state lives, chosen by the memory plan (issue 21: "keep everything
 * resident and skip the offload when the plan fits the card ... chosen by the memory plan, not by
 * a flag the user must know"). The native plan (modelMemoryPlan, computed without allocating)
 * says what each option set needs on the device and on the host; the first that fits wins, in
 * order of what each costs a step:
 *
 *   1. everything resident, no recomputation;
 *   2. gradient checkpointing (each layer recomputed in backward: about 2 N FLOPs a token more);
 *   3. offload_optimizer without checkpointing (the f32 master and moments in host memory, the
 *      AdamW step on the CPU: the host's pass and the copies, about 2 s a step for Mistral-7B on
 *      an H100 host);
 *   4. both.
 *
 * On the CPU everything is host memory already: offloading means nothing there, so only the
 * checkpointing choice is made. A DPO step's frozen reference (when it runs in the step) takes
 * its share first.
 */
import type { MemoryPlan } from '../native.js';

export interface Residency {
  gradientCheckpointing: boolean;
  offloadOptimizer: boolean;
}

export interface ResidencyCandidate extends Residency {
  /** The policy's plan on the model's device (device memory for the GPU model). */
  device_bytes: number;
  /** Host memory the policy holds beside it (the offloaded master and moments). */
  host_bytes: number;
  fits: boolean;
}

export interface ResidencyChoice extends Residency {
  chosen_by: 'memory plan';
  /** Memory the policy may take: free device memory less the CUDA libraries' reserve and the reference's plan (GPU), or available host memory (CPU). */
  available_bytes: number;
  available_host_bytes: number;
  /** The frozen reference's plan, taken out of available_bytes first (0: none in the step). */
  reference_bytes: number;
  candidates: ResidencyCandidate[];
}

/** What the CUDA libraries allocate beside a model's arena (native/model/mistral_cuda.cu's kLibraryReserve). */
export const CUDA_LIBRARY_RESERVE = 256 * 2 ** 20;

export function residencyOrder(device: 'cpu' | 'cuda'): Residency[] {
  const order: Residency[] = [
    { gradientCheckpointing: false, offloadOptimizer: false },
    { gradientCheckpointing: true, offloadOptimizer: false },
  ];
  if (device === 'cuda') order.push({ gradientCheckpointing: false, offloadOptimizer: true }, { gradientCheckpointing: true, offloadOptimizer: true });
  return order;
}

export interface ResidencyInputs {
  device: 'cpu' | 'cuda';
  /** The policy's plan for one option set. */
  planOf: (residency: Residency) => MemoryPlan;
  /** The reference model's plan when it runs in the step, else 0. */
  referenceBytes: number;
  /** Device memory free now (GPU), or available host memory (CPU). */
  freeBytes: number;
  /** Host memory available for an offloaded optimizer. */
  freeHostBytes: number;
}

/** The first option set, in order of cost, whose plan fits; an error listing every plan when none does. */
export function chooseResidency(input: ResidencyInputs): ResidencyChoice {
  const reserve = input.device === 'cuda' ? CUDA_LIBRARY_RESERVE : 0;
  const available = input.freeBytes - reserve - input.referenceBytes;
  const candidates = residencyOrder(input.device).map((residency): ResidencyCandidate => {
    const plan = input.planOf(residency);
    return { ...residency, device_bytes: plan.total, host_bytes: plan.host, fits: plan.total <= available && plan.host <= input.freeHostBytes };
  });
  const chosen = candidates.find((c) => c.fits);
  if (!chosen) {
    const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;
    const tried = candidates.map((c) => `${describeResidency(c)}: ${gib(c.device_bytes)}${c.host_bytes ? ` + host ${gib(c.host_bytes)}` : ''}`).join('; ');
    throw new Error(
      `no residency fits: ${gib(Math.max(0, available))} available for the policy${input.referenceBytes ? ` (after the reference's ${gib(input.referenceBytes)})` : ''}, ` +
        `${gib(input.freeHostBytes)} of host memory; the plans: ${tried}`,
    );
  }
  return {
    gradientCheckpointing: chosen.gradientCheckpointing,
    offloadOptimizer: chosen.offloadOptimizer,
    chosen_by: 'memory plan',
    available_bytes: available,
    available_host_bytes: input.freeHostBytes,
    reference_bytes: input.referenceBytes,
    candidates,
  };
}

export function describeResidency(r: Residency): string {
  const parts = [r.offloadOptimizer ? 'optimizer offloaded to the host' : 'everything resident', r.gradientCheckpointing ? 'gradient checkpointing' : 'no recomputation'];
  return parts.join(', ');
}
