/**
 * `npm run bench:steps -- --preset mistral-7b-sft|mistral-7b-dpo --device cuda [options]`: the
 * recipe's optimizer steps (lib/bench/recipe-shapes.ts), each configuration in its own child
 * process (lib/bench/recipe-child.ts), reported as tokens/s, MFU against the measured matmul
 * peak and the card's datasheet peak, memory, the time by phase and issue 21's targets.
 *
 *   --reference model|precomputed|both   DPO's reference: a frozen model in the step (default), or
 *                                        log-probs precomputed before the steps (precompute_ref_log_probs)
 *   --steps N                            timed optimizer steps (default 1: a 7B SFT step is ~30 s)
 *   --warmup-micro-batches N             the untimed warm-up step's micro-batches (default 1)
 *   --gemm-tflops X                      the card's measured bf16 GEMM rate (the device check passes
 *                                        its cuBLASLt timings'); otherwise measured in the step's process
 *   --precision bf16|f32  --json FILE  --cache-dir DIR
 * For tests on a CPU, the same steps scaled down: --model-preset tiny|small (the model) and
 * --micro-batches, --rows, --seq-len, --prompt-len (the shape); the report marks them.
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { writeJsonAtomic } from '../io/atomic.js';
import { mistralConfig } from '../model/init.js';
import { loadNative } from '../native.js';
import { defaultBenchCacheDir, ensureBenchModel } from './model-cache.js';
import { PRESET_NAMES, PRESETS } from './presets.js';
import { isRecipePreset, RECIPE_PRESET_NAMES, RECIPE_PRESETS, type RecipeReference, recipeModelPreset, resolveShape } from './recipe-shapes.js';
import { type MeasuredTflops, planResidency, type RecipeStepOptions, type RecipeStepResult } from './recipe-steps.js';
import { choice, count, machineInfo, markdown, measurePeak, ourVersions, runChildScript } from './run.js';
import { describeResidency } from './residency.js';

const GIB = 2 ** 30;
const pct = (x: number | null) => (x === null ? '-' : `${(100 * x).toFixed(1)}%`);
const gib = (bytes: number | null) => (bytes === null ? '-' : `${(bytes / GIB).toFixed(1)} GiB`);

export const RECIPE_MFU_FORMULA =
  'MFU = step FLOPs / step seconds / peak; step FLOPs = 6*N*policy_tokens + 2*N*reference_tokens + 3*A(policy documents) + A(reference documents) ' +
  '(lib/bench/flops.ts; reference tokens 0 with precomputed reference log-probs); peaks: the measured bf16 GEMM rate, and the card\'s datasheet dense bf16 peak';

function optionalCount(name: string, value: string | undefined, min: number): number | undefined {
  return value === undefined ? undefined : count(name, value, min);
}

function positiveNumber(name: string, value: string): number {
  const x = Number(value);
  if (!Number.isFinite(x) || x <= 0) throw new Error(`--${name} must be a positive number, got '${value}'`);
  return x;
}

export function formatRecipeResults(results: RecipeStepResult[]): string {
  const main = markdown(
    ['preset', 'reference', 'device', 'residency', 'step s', 'tokens/s', 'TFLOP/s', 'MFU (measured GEMM)', 'MFU (datasheet)', 'device memory', 'host RSS', 'host share'],
    results.map((r) => [
      `${r.preset}${r.shape_overridden ? ` (scaled down: ${r.model}, ${r.shape.microBatches} x ${r.shape.rows} x ${r.shape.seqLen})` : ''}`,
      r.reference ?? '-',
      r.card,
      describeResidency(r.residency),
      r.step_s.toFixed(3),
      r.tokens_per_s.toFixed(0),
      r.achieved_tflops.toFixed(r.device === 'cuda' ? 1 : 4),
      pct(r.mfu_measured),
      pct(r.mfu_datasheet),
      gib(r.memory.device_peak_bytes),
      gib(r.memory.host_rss_peak_bytes),
      pct(r.host_share),
    ]),
  );
  const phases = markdown(
    ['preset', 'reference', 'forward+backward s', 'per micro-batch s', 'reference s', 'zero_grad s', 'optimizer s', 'other s', 'optimizer detail'],
    results.map((r) => [
      r.preset,
      r.reference ?? '-',
      r.phases_s.forward_backward.toFixed(3),
      (r.phases_s.forward_backward / r.shape.microBatches).toFixed(3),
      r.phases_s.reference.toFixed(3),
      r.phases_s.zero_grad.toFixed(3),
      r.phases_s.optimizer.toFixed(3),
      r.phases_s.other.toFixed(3),
      r.steps[0]?.optimizer_detail ? Object.entries(r.steps[0].optimizer_detail).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(', ') : '-',
    ]),
  );
  const targets = results.flatMap((r) =>
    r.targets.map((t) => `- ${r.preset}${r.reference ? ` (${r.reference} reference)` : ''}: ${t.name} ${t.target}: ${t.value === null ? 'not measured' : t.unit === 'tokens/s' ? t.value.toFixed(0) : pct(t.value)} -> ${t.met === null ? `n/a${t.note ? ` (${t.note})` : ''}` : t.met ? 'met' : 'not met'}`),
  );
  return `${main}\n\nTime by phase (mean of the timed steps):\n\n${phases}\n\nTargets (issue 21, one H100):\n${targets.join('\n')}`;
}

/** Whether bench:steps' arguments name a recipe preset (`--preset mistral-7b-sft`, `--preset=...`). */
export function asksForRecipeStep(argv: string[]): boolean {
  const at = argv.indexOf('--preset');
  const value = at >= 0 ? argv[at + 1] : argv.find((a) => a.startsWith('--preset='))?.slice('--preset='.length);
  return value !== undefined && isRecipePreset(value);
}

export async function recipeBenchMain(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      preset: { type: 'string' },
      device: { type: 'string', default: 'cpu' },
      precision: { type: 'string', default: 'bf16' },
      reference: { type: 'string', default: 'model' },
      steps: { type: 'string', default: '1' },
      'warmup-micro-batches': { type: 'string', default: '1' },
      'gemm-tflops': { type: 'string' },
      json: { type: 'string' },
      'cache-dir': { type: 'string', default: defaultBenchCacheDir() },
      'model-preset': { type: 'string' },
      'micro-batches': { type: 'string' },
      rows: { type: 'string' },
      'seq-len': { type: 'string' },
      'prompt-len': { type: 'string' },
    },
  });
  const preset = RECIPE_PRESETS[choice('preset', values.preset ?? '', RECIPE_PRESET_NAMES)];
  const device = choice('device', values.device!, ['cpu', 'cuda'] as const);
  const precision = choice('precision', values.precision!, ['bf16', 'f32'] as const);
  const referenceFlag = choice('reference', values.reference!, ['model', 'precomputed', 'both'] as const);
  const steps = count('steps', values.steps!, 1);
  const warmupMicroBatches = count('warmup-micro-batches', values['warmup-micro-batches']!, 0);
  const { shape, overridden: shapeOverridden } = resolveShape(preset, {
    microBatches: optionalCount('micro-batches', values['micro-batches'], 1),
    rows: optionalCount('rows', values.rows, 1),
    seqLen: optionalCount('seq-len', values['seq-len'], 2),
    promptLen: optionalCount('prompt-len', values['prompt-len'], 1),
  });
  const modelFlag = values['model-preset'] === undefined ? undefined : choice('model-preset', values['model-preset'], PRESET_NAMES);
  const { model, overridden: modelOverridden } = recipeModelPreset(preset, modelFlag);
  if (PRESETS[model].gpuOnly && device !== 'cuda') {
    throw new Error(`--preset ${preset.name} runs ${model}, which is GPU-only: use --device cuda (or, to test the runner on a CPU, --model-preset tiny with a smaller shape)`);
  }
  const references: (RecipeReference | null)[] = shape.mode === 'sft' ? [null] : referenceFlag === 'both' ? ['model', 'precomputed'] : [referenceFlag];
  // Before a 7B folder is written: a GPU is there, and some residency fits it (each step's
  // process chooses again on the memory free when it starts).
  const config = mistralConfig(PRESETS[model].model);
  for (const reference of references) {
    const choice = planResidency(config, { device, precision, shape, reference });
    console.error(`${preset.name}${reference ? ` (${reference} reference)` : ''}: the memory plan fits with ${describeResidency(choice)}`);
  }

  let measuredPeak: MeasuredTflops | null = null;
  let cpuPeak = null;
  if (values['gemm-tflops'] !== undefined) {
    measuredPeak = { tflops: positiveNumber('gemm-tflops', values['gemm-tflops']), how: 'passed in (--gemm-tflops)' };
  } else if (device === 'cpu') {
    console.error('measuring this machine\'s multiply-add peak ...');
    cpuPeak = await measurePeak();
    const gflops = precision === 'bf16' ? cpuPeak.bf16 : cpuPeak.f32;
    measuredPeak = gflops > 0 ? { tflops: gflops / 1000, how: `this CPU's measured ${precision} multiply-add peak (${cpuPeak.threads} threads)` } : null;
  }
  const modelDir = await ensureBenchModel(PRESETS[model], resolve(values['cache-dir']!));
  console.error(`model folder: ${modelDir}`);

  const results: RecipeStepResult[] = [];
  for (const reference of references) {
    const options: RecipeStepOptions = {
      preset: preset.name,
      model,
      shape,
      shapeOverridden: shapeOverridden || modelOverridden,
      reference,
      device,
      precision,
      steps,
      warmupMicroBatches,
      modelDir,
      measuredPeak,
    };
    const label = `${preset.name}${reference ? ` (${reference} reference)` : ''}`;
    console.error(`${label} on ${device}: ${warmupMicroBatches} warm-up micro-batches + ${steps} timed steps of ${shape.microBatches} micro-batches ...`);
    const result = await runChildScript<RecipeStepOptions, RecipeStepResult>('./recipe-child.js', options, `bench ${label}`);
    console.error(`result: ${JSON.stringify(result)}`);
    results.push(result);
  }
  console.log(formatRecipeResults(results));
  console.log(`\n${RECIPE_MFU_FORMULA}`);
  if (values.json) {
    writeJsonAtomic(resolve(values.json), {
      kind: 'recipe-steps',
      results,
      machine: { ...machineInfo(cpuPeak), gpu: device === 'cuda' ? loadNative('cuda').info() : null },
      versions: ourVersions(),
      settings: { preset: preset.name, device, precision, steps, warmup_micro_batches: warmupMicroBatches, references, mfu_formula: RECIPE_MFU_FORMULA },
    });
    console.error(`wrote ${values.json}`);
  }
}
