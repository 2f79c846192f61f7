import type { CommandModule } from 'yargs';

import { defaultBenchCacheDir, ensureBenchModel } from '../bench/model-cache.js';
import { BENCH_PEFT, benchLoraSettings, type BenchMode, type BenchPrecision, PRESET_NAMES, PRESETS, type PresetName, policyTokensPerStep } from '../bench/presets.js';
import { checkRankBench, formatRankReport, runRankBench, writeRankReport } from '../bench/rank-bench.js';
import { ZERO_STAGES } from '../bench/rank-step.js';
import type { ZeroStage } from '../train/zero.js';
import { type BenchResult, formatResults, machineInfo, measurePeak, ourVersions, runInChild, toResult } from '../bench/run.js';
import { UsageError, ZnError } from '../errors.js';
import { writeJsonAtomic } from '../io/atomic.js';
import { mistralConfig } from '../model/init.js';
import { modelMemoryPlan } from '../model/model.js';
import { loadNative } from '../native.js';

interface BenchArgs {
  preset: PresetName;
  mode: BenchMode | 'both';
  device: 'cpu' | 'cuda';
  precision: BenchPrecision;
  steps: number;
  warmup: number;
  peft: boolean;
  json?: string;
  'cache-dir': string;
  nproc_per_node?: number;
  zero_stage: number;
}

const GIB = 1024 ** 3;

/** Refuses what cannot be measured honestly, before anything is written or allocated. */
function checkRunnable(args: BenchArgs): void {
  const preset = PRESETS[args.preset];
  if (args.device === 'cuda') {
    const addon = loadNative('cuda');
    if (typeof addon.Model !== 'function') {
      throw new ZnError(
        'bench --device cuda: the CUDA backend has kernels but no model yet, so there is no training step to time; ' +
          'run the CPU benchmark with --device cpu',
      );
    }
    refuseWhatDoesNotFit(args, addon.info().freeMemory ?? 0);
  } else if (preset.gpuOnly) {
    const plan = modelMemoryPlan(mistralConfig(preset.model), {
      dtype: args.precision,
      maxTokens: policyTokensPerStep(preset, 'dpo'),
      trainable: true,
      ...(args.peft ? { lora: benchLoraSettings(BENCH_PEFT) } : {}),
    });
    throw new ZnError(
      `bench --preset ${args.preset} is GPU-only: one ${args.peft ? 'LoRA' : 'full fine-tuning'} step needs ${(plan.total / GIB).toFixed(0)} GiB ` +
        `(weights, ${args.peft ? 'adapter ' : ''}gradients, AdamW moments, activations) and hours per step on a CPU; use --device cuda, or --preset small on this CPU`,
    );
  }
}

/**
 * The GPU models' plans (policy, and the frozen reference for full DPO; LoRA's reference is the
 * policy with its adapters off) against free device memory, checked before a random-init folder
 * of the preset is written (7B: 14 GiB of weights).
 */
function refuseWhatDoesNotFit(args: BenchArgs, freeBytes: number): void {
  const preset = PRESETS[args.preset];
  const modes: BenchMode[] = args.mode === 'both' ? ['sft', 'dpo'] : [args.mode];
  for (const mode of modes) {
    const options = { device: 'cuda', dtype: args.precision, maxTokens: policyTokensPerStep(preset, mode) } as const;
    const policy = modelMemoryPlan(mistralConfig(preset.model), {
      ...options,
      trainable: true,
      gradientCheckpointing: preset.gradientCheckpointing,
      offloadOptimizer: preset.offloadOptimizer && !args.peft,
      ...(args.peft ? { lora: benchLoraSettings(BENCH_PEFT) } : {}),
    });
    const reference = mode === 'dpo' && !args.peft ? modelMemoryPlan(mistralConfig(preset.model), { ...options, trainable: false }).total : 0;
    const needed = policy.total + reference;
    if (needed > freeBytes) {
      const gib = (bytes: number) => `${(bytes / GIB).toFixed(1)} GiB`;
      throw new ZnError(
        `bench --preset ${args.preset} --mode ${mode} --device cuda: the step needs ${gib(needed)} of device memory ` +
          `(policy: weights ${gib(policy.weights)}, grads ${gib(policy.grads)}, optimizer ${gib(policy.optimizer)}, ` +
          `activations ${gib(policy.activations)}, workspaces ${gib(policy.logitsChunks)}` +
          `${policy.host ? `, host ${gib(policy.host)}` : ''}` +
          `${reference ? `; frozen reference ${gib(reference)}` : ''}), and the GPU has ${gib(freeBytes)} free`,
      );
    }
  }
}

/** --nproc_per_node: the steps on N CPU ranks against one rank (lib/bench/rank-bench.ts). */
async function benchOnRanks(args: BenchArgs): Promise<void> {
  const ranks = integerAtLeast('nproc_per_node', args.nproc_per_node!, 1);
  const zeroStage = integerAtLeast('zero_stage', args.zero_stage, 0);
  if (args.device !== 'cpu' || args.peft) throw new UsageError('bench --nproc_per_node times full fine-tuning on CPU ranks: leave --device cuda and --peft off');
  checkRankBench(args.preset, ranks, zeroStage);
  const settings = {
    preset: args.preset,
    modes: args.mode === 'both' ? (['sft', 'dpo'] as BenchMode[]) : [args.mode],
    precisions: [args.precision],
    steps: args.steps,
    warmup: args.warmup,
    ranks,
    zeroStage: zeroStage as ZeroStage,
    cacheDir: args['cache-dir'],
  };
  const report = await runRankBench(settings);
  process.stdout.write(formatRankReport(report));
  if (args.json) {
    writeRankReport(args.json, settings, report);
    process.stderr.write(`wrote ${args.json}\n`);
  }
}

function integerAtLeast(name: string, value: number, min: number): number {
  if (!Number.isInteger(value) || value < min) throw new UsageError(`--${name} must be an integer >= ${min}, got ${value}`);
  return value;
}

/** `zephyr-native bench`: SFT/DPO step time, tokens/s, MFU and peak memory on a preset. */
export const benchCommand: CommandModule<object, BenchArgs> = {
  command: 'bench',
  describe: 'Time SFT and DPO steps (tokens/s, MFU, peak memory)',
  builder: (yargs) =>
    yargs
      .option('preset', { choices: PRESET_NAMES, default: 'tiny' as PresetName, describe: 'Model and batch shape (mistral-7b: GPU only)' })
      .option('mode', { choices: ['sft', 'dpo', 'both'] as const, default: 'both' as const, describe: 'Which step to time' })
      .option('device', { choices: ['cpu', 'cuda'] as const, default: 'cpu' as const, describe: 'Backend' })
      .option('precision', { choices: ['bf16', 'f32'] as const, default: 'bf16' as BenchPrecision, describe: 'bf16: bf16 matmul inputs, f32 master weights' })
      .option('steps', { type: 'number', default: 3, describe: 'Timed steps (the median is reported)' })
      .option('warmup', { type: 'number', default: 1, describe: 'Untimed steps first' })
      .option('peft', {
        type: 'boolean',
        default: false,
        describe: `LoRA steps: r ${BENCH_PEFT.r}, alpha ${BENCH_PEFT.alpha}, ${BENCH_PEFT.target_modules} adapters over the frozen base; DPO's reference is the policy with its adapters off`,
      })
      .option('json', { type: 'string', describe: 'Also write the results as JSON to this file' })
      .option('nproc_per_node', {
        type: 'number',
        describe: 'Time the steps on N data-parallel CPU ranks (MPI) against one rank in the same run: tokens/s in all and per rank, scaling efficiency, peak RSS per rank',
      })
      .option('zero_stage', {
        type: 'number',
        default: 0,
        describe: `ZeRO stage of the ranks (--nproc_per_node): ${ZERO_STAGES.join(', ')} (0: every rank holds the whole optimizer state; 1: each its shard of it; 2: and gradients reduce-scattered)`,
      })
      .option('cache-dir', { type: 'string', default: defaultBenchCacheDir(), describe: 'Where random-init preset models are kept' })
      .epilogue(
        `Presets: ${PRESET_NAMES.map((name) => `${name}: ${PRESETS[name].describe}`).join('; ')}. ` +
          'MFU = model FLOPs per second / this machine\'s measured multiply-add peak; model FLOPs per step = ' +
          '6 x matmul params x policy tokens + 2 x matmul params x reference tokens + attention (see README, Benchmarks).',
      ),
  handler: async (args) => {
    integerAtLeast('steps', args.steps, 1);
    integerAtLeast('warmup', args.warmup, 0);
    if (args.nproc_per_node !== undefined) return benchOnRanks(args);
    checkRunnable(args);
    const preset = PRESETS[args.preset];
    const modes: BenchMode[] = args.mode === 'both' ? ['sft', 'dpo'] : [args.mode];
    // MFU is against a peak this machine measured; the GPU's is not measured here, so no MFU there.
    const onGpu = args.device === 'cuda';
    if (!onGpu) process.stderr.write('measuring this machine\'s multiply-add peak ...\n');
    const peak = onGpu ? null : await measurePeak();
    const modelDir = await ensureBenchModel(preset, args['cache-dir']);
    const results: BenchResult[] = [];
    for (const mode of modes) {
      process.stderr.write(`${args.preset} ${mode} ${args.precision}${args.peft ? ' LoRA' : ''}: ${args.warmup} warm-up + ${args.steps} timed steps ...\n`);
      const peft = args.peft ? BENCH_PEFT : null;
      const measurement = await runInChild({ preset: args.preset, mode, precision: args.precision, steps: args.steps, warmup: args.warmup, device: args.device, modelDir, peft });
      results.push(toResult(measurement, peak));
    }
    process.stdout.write(`${formatResults(results)}\n`);
    if (args.json) {
      const gpu = onGpu ? loadNative('cuda').info() : null;
      writeJsonAtomic(args.json, { results, machine: { ...machineInfo(peak), gpu }, versions: ourVersions() });
      process.stderr.write(`wrote ${args.json}\n`);
    }
  },
};
