/**
 * `npm run bench:steps -- [--preset tiny|small] [--mode sft|dpo|both] [--precision bf16|f32|both]
 *                          [--steps 3] [--warmup 1] [--rounds 1] [--json FILE] [--peer]
 *                          [--peer-steps N] [--peer-warmup N] [--device cpu|cuda] [--peft]`
 *
 * Step benchmarks (lib/bench/): zephyr-native's SFT and DPO optimizer steps on a preset, each
 * configuration in its own child process. With --peer (`npm run bench:peer`, bench/peer.ts) the
 * same configurations also run through PyTorch + transformers + TRL (bench/peer_trl.py) on the
 * very same model folder, in the same invocation, alternating (ours, TRL, ours, TRL, ...) so
 * drift on a shared machine hits both; both sides use the same thread count. Prints Markdown
 * tables (results, and zephyr-native / TRL ratios) and writes JSON with --json.
 * --device cuda runs both sides on the GPU (the device check does): no MFU there (no measured
 * peak), and peak memory is device memory taken, measured the same way on both sides.
 * --peft times LoRA steps instead (BENCH_PEFT: r 16, alpha 32, all-linear, over the frozen base),
 * beside TRL + PEFT (a LoraConfig of the same settings; DPO with no ref_model, so TRL's reference
 * is the policy with its adapters disabled, as ours).
 * --nproc_per_node N [--zero_stage 0|1|2] times the steps on N data-parallel CPU ranks against one
 * rank (lib/bench/rank-bench.ts; `--nproc_per_node N --help` lists its options).
 * --preset mistral-7b-sft|mistral-7b-dpo times the recipe's whole optimizer steps instead
 * (lib/bench/recipe-bench.ts, which lists their options).
 */
import { spawnSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { ensureBenchModel, defaultBenchCacheDir } from '../lib/bench/model-cache.js';
import { rankBenchMain, wantsRanks } from '../lib/bench/rank-bench.js';
import { asksForRecipeStep, recipeBenchMain } from '../lib/bench/recipe-bench.js';
import { BENCH_PEFT, type BenchMode, type BenchPeft, type BenchPrecision, PRESETS, type PresetName } from '../lib/bench/presets.js';
import {
  choice,
  count,
  formatRatios,
  formatResults,
  machineInfo,
  measurePeak,
  mergePeaks,
  ourVersions,
  ratios,
  runInChild,
  toResult,
  type BenchMeasurement,
  type BenchResult,
} from '../lib/bench/run.js';
import { median } from '../lib/bench/step-bench.js';
import { writeJsonAtomic } from '../lib/io/atomic.js';
import { loadNative, packageRoot } from '../lib/native.js';
import { referencePython } from '../test/support/python.js';

/** How both sides' per-step FLOPs are counted (lib/bench/flops.ts). */
const MFU_FORMULA =
  'MFU = step FLOPs / step seconds / measured multiply-add peak; step FLOPs = 6*N*policy_tokens + 2*N*reference_tokens + ' +
  '3*A(policy documents) + A(reference documents); N = parameters that enter a matmul (projections and lm_head, not the ' +
  'embedding lookup); A = 4*layers*heads*head_dim per visible causal (query, key) pair';

/** With --peft the frozen base takes no weight gradients, and the adapters cost 6 FLOPs per parameter per token. */
const LORA_MFU_FORMULA =
  'MFU = step FLOPs / step seconds / measured multiply-add peak; LoRA step FLOPs = (4*N + 6*L)*policy_tokens + ' +
  '2*N*reference_tokens + 3*A(policy documents) + A(reference documents); N = parameters that enter a matmul; ' +
  'L = adapter parameters (r*(in+out) per adapted projection); A = 4*layers*heads*head_dim per visible causal (query, key) pair';

type BenchDevice = 'cpu' | 'cuda';

interface TrlRun {
  python: string;
  script: string;
  modelDir: string;
  threads: number;
}

/** One TRL configuration in its own Python process; its stderr is shown only when it fails. */
function runTrl(
  trl: TrlRun,
  preset: PresetName,
  mode: BenchMode,
  precision: BenchPrecision,
  steps: number,
  warmup: number,
  device: BenchDevice,
  peft: BenchPeft | null,
): BenchMeasurement & { versions: Record<string, string> } {
  const p = PRESETS[preset];
  const args = [
    trl.script,
    ...['--model', trl.modelDir, '--preset', preset, '--mode', mode, '--precision', precision, '--device', device],
    ...['--sequences', String(p.sequences), '--seq-len', String(p.seqLen), '--prompt-len', String(p.promptLen)],
    ...['--steps', String(steps), '--warmup', String(warmup), '--threads', String(trl.threads)],
    ...(peft ? ['--peft', '--lora-r', String(peft.r), '--lora-alpha', String(peft.alpha), '--lora-target-modules', peft.target_modules] : []),
  ];
  const result = spawnSync(trl.python, args, { encoding: 'utf8', maxBuffer: 1 << 26, env: { ...process.env, TOKENIZERS_PARALLELISM: 'false' } });
  const last = result.stdout?.trim().split('\n').pop() ?? '';
  if (result.status !== 0 || !last.startsWith('{')) {
    throw new Error(`bench/peer_trl.py ${preset} ${mode} ${precision} failed (${result.status ?? result.signal}):\n${(result.stderr ?? '').split('\n').slice(-25).join('\n')}`);
  }
  return JSON.parse(last);
}

/** Several rounds of one configuration: median step time, largest peak memory. */
function combine(runs: BenchResult[]): BenchResult {
  if (runs.length === 1) return runs[0]!;
  const stepS = median(runs.map((r) => r.step_s));
  return {
    ...runs[0]!,
    step_s: stepS,
    steps_s: runs.flatMap((r) => r.steps_s),
    tokens_per_s: runs[0]!.tokens_per_step / stepS,
    mfu: runs[0]!.mfu === null ? null : Number(((runs[0]!.mfu * runs[0]!.step_s) / stepS).toFixed(4)),
    peak_bytes: Math.max(...runs.map((r) => r.peak_bytes)),
    rounds: runs.length,
  };
}

export async function main(argv: string[], defaults: { peer: boolean }): Promise<void> {
  if (asksForRecipeStep(argv)) return recipeBenchMain(argv);
  const { values } = parseArgs({
    args: argv,
    options: {
      preset: { type: 'string', default: 'small' },
      mode: { type: 'string', default: 'both' },
      precision: { type: 'string', default: 'both' },
      steps: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '1' },
      rounds: { type: 'string', default: '1' },
      // TRL's bf16 autocast on a CPU without bf16 instructions takes minutes per step: fewer there.
      'peer-steps': { type: 'string' },
      'peer-warmup': { type: 'string' },
      json: { type: 'string' },
      'cache-dir': { type: 'string', default: defaultBenchCacheDir() },
      device: { type: 'string', default: 'cpu' },
      peft: { type: 'boolean', default: false },
      peer: { type: 'boolean', default: defaults.peer },
      'no-peer': { type: 'boolean', default: false },
    },
  });
  const preset = choice('preset', values.preset!, ['tiny', 'small'] as const);
  const mode = choice('mode', values.mode!, ['sft', 'dpo', 'both'] as const);
  const precision = choice('precision', values.precision!, ['bf16', 'f32', 'both'] as const);
  const steps = count('steps', values.steps!, 1);
  const warmup = count('warmup', values.warmup!, 0);
  const rounds = count('rounds', values.rounds!, 1);
  const device = choice('device', values.device!, ['cpu', 'cuda'] as const);
  const peerSteps = count('peer-steps', values['peer-steps'] ?? String(steps), 1);
  const peerWarmup = count('peer-warmup', values['peer-warmup'] ?? String(warmup), 0);
  const modes: BenchMode[] = mode === 'both' ? ['sft', 'dpo'] : [mode];
  const precisions: BenchPrecision[] = precision === 'both' ? ['bf16', 'f32'] : [precision];
  const threads = loadNative('cpu').info().threads;
  const peft = values.peft ? BENCH_PEFT : null;

  let trl: TrlRun | null = null;
  if (values.peer && !values['no-peer']) {
    const reference = referencePython(['torch', 'transformers', 'trl', 'datasets', ...(peft ? ['peft'] : [])]);
    if (reference.python) {
      trl = { python: reference.python, script: join(packageRoot(), 'bench', 'peer_trl.py'), modelDir: '', threads };
    } else {
      console.error(`TRL side skipped: ${reference.skipReason}`);
    }
  }

  // MFU is against a peak this machine measured: the GPU's is not measured, so none there.
  if (device === 'cpu') console.error(`measuring this machine's multiply-add peak (${threads} threads) ...`);
  let peak = device === 'cpu' ? await measurePeak() : null;
  const modelDir = await ensureBenchModel(PRESETS[preset], resolve(values['cache-dir']!));
  if (trl) trl.modelDir = modelDir;
  console.error(`model folder: ${modelDir}; threads: zephyr-native ${threads} (ZN_NUM_THREADS / addon info), torch ${threads} (torch.set_num_threads)`);

  const runs = new Map<string, BenchResult[]>();
  const add = (result: BenchResult) => {
    // One JSON line per finished configuration on stderr: a long run that is cut short keeps them.
    console.error(`result: ${JSON.stringify(result)}`);
    const key = `${result.mode} ${result.precision} ${result.implementation}`;
    runs.set(key, [...(runs.get(key) ?? []), result]);
  };
  let trlVersions: Record<string, string> = {};
  for (let round = 1; round <= rounds; round++) {
    for (const m of modes) {
      for (const p of precisions) {
        const label = `${preset} ${m} ${p}${peft ? ' LoRA' : ''}`;
        console.error(`round ${round}/${rounds}: ${label} zephyr-native ...`);
        add(toResult(await runInChild({ preset, mode: m, precision: p, steps, warmup, device, modelDir, peft }), peak));
        if (trl) {
          console.error(`round ${round}/${rounds}: ${label} TRL${peft ? ' + PEFT' : ''} ...`);
          const { versions, ...measurement } = runTrl(trl, preset, m, p, peerSteps, peerWarmup, device, peft);
          trlVersions = versions;
          add(toResult(measurement, peak));
        }
      }
    }
  }
  // Measured again at the end: on a shared machine the better of the two is the truer peak.
  const endPeak = peak ? await measurePeak() : null;
  if (peak && endPeak && endPeak.f32 > peak.f32) {
    const better = mergePeaks(peak, endPeak);
    peak = better;
    for (const list of runs.values()) list.splice(0, list.length, ...list.map((r) => toResult(r, better)));
  }

  const results = [...runs.values()].map(combine);
  console.log(formatResults(results));
  const ratioRows = ratios(results);
  if (ratioRows.length > 0) console.log(`\n${formatRatios(ratioRows)}`);
  if (peak) console.log(`\n${peft ? LORA_MFU_FORMULA : MFU_FORMULA}; peak ${peak.f32.toFixed(1)} GFLOP/s f32, ${peak.bf16.toFixed(1)} GFLOP/s bf16 (${peak.threads} threads)`);
  else console.log('\nOn the GPU: no MFU (no measured peak); peak memory is device memory taken (free before the models, less the lowest free after a step), on both sides');
  if (values.json) {
    writeJsonAtomic(resolve(values.json), {
      results,
      ratios: ratioRows,
      machine: { ...machineInfo(peak), gpu: device === 'cuda' ? loadNative('cuda').info() : null },
      versions: { ...ourVersions(), ...trlVersions },
      settings: { preset, device, peft, steps, warmup, peer_steps: peerSteps, peer_warmup: peerWarmup, rounds, threads, mfu_formula: peft ? LORA_MFU_FORMULA : MFU_FORMULA, preset_shape: PRESETS[preset] },
    });
    console.error(`wrote ${values.json}`);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  const argv = process.argv.slice(2);
  (wantsRanks(argv) ? rankBenchMain(argv) : main(argv, { peer: false })).catch((error: Error) => {
    console.error(`bench:steps: ${error.message}`);
    process.exitCode = 1;
  });
}
