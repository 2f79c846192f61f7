/**
 * `npm run bench:steps -- --nproc_per_node N`: the preset's SFT and DPO steps on N data-parallel
 * CPU ranks (MPI, started as `--nproc_per_node` starts them: lib/model/mpi-launcher.ts) against
 * one rank measured in the same run. The preset's batch is the global one: N ranks share it (rank
 * r takes rows r, r + N, ..., as the trainer does), one rank takes all of it; every rank runs the
 * threads one of the N ranks gets (ZN_NUM_THREADS, default cores / N), and so does the one rank.
 *
 *   tokens/s            = the global batch's policy tokens / the slowest rank's median step
 *   scaling efficiency  = tokens/s of N ranks / (N x tokens/s of one rank)
 *
 * Per rank: its median step, its time in the gradient all-reduce (waiting for the slowest rank
 * included) and its peak RSS. The summed losses of N ranks follow one rank's to float rounding
 * (the same weights and batch): `max_loss_difference` shows it.
 */
import { spawn } from 'node:child_process';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { UsageError, ZnError } from '../errors.js';
import { writeJsonAtomic } from '../io/atomic.js';
import { ranksCommand, requireMpi, shellLine, thisMachine } from '../model/mpi-launcher.js';
import { launchEnvironment } from '../model/ranks.js';
import { defaultBenchCacheDir, ensureBenchModel } from './model-cache.js';
import { type BenchMode, type BenchPrecision, PRESETS, type PresetName } from './presets.js';
import { type BenchZeroStage, RESULT_PREFIX, type RankMeasurement, type RankStepOptions, ZERO_STAGES } from './rank-step.js';
import { choice, count, machineInfo, markdown, mib, ourVersions } from './run.js';

export const RANK_BENCH_USAGE =
  'npm run bench:steps -- --nproc_per_node N [--preset tiny|small] [--mode sft|dpo|both] [--precision bf16|f32|both]\n' +
  '                       [--steps 3] [--warmup 1] [--zero_stage 0|1|2] [--json FILE] [--cache-dir DIR]\n' +
  `--zero_stage: ${ZERO_STAGES.join(', ')} (0: every rank holds the whole optimizer state; 1: each its shard of it; 2: and gradients reduce-scattered)`;

export interface RankBenchSettings {
  preset: PresetName;
  modes: BenchMode[];
  precisions: BenchPrecision[];
  steps: number;
  warmup: number;
  ranks: number;
  zeroStage: BenchZeroStage;
  cacheDir: string;
}

/** One configuration on one number of ranks (a row of the JSON's `results`). */
export interface RankBenchResult {
  preset: PresetName;
  mode: BenchMode;
  precision: BenchPrecision;
  zero_stage: BenchZeroStage;
  ranks: number;
  threads_per_rank: number;
  /** Policy tokens of the global batch (every rank's rows together). */
  tokens_per_step: number;
  /** The slowest rank's median step. */
  step_s: number;
  tokens_per_s: number;
  tokens_per_s_per_rank: number;
  /** tokens/s / (ranks x one rank's tokens/s in the same run); 1 for the one-rank row. */
  scaling_efficiency: number;
  /** Largest |summed loss of these ranks - one rank's loss| over the steps (the same steps: float rounding only). */
  max_loss_difference: number;
  per_rank: RankMeasurement[];
}

export function parseRankBenchArgs(argv: string[]): RankBenchSettings {
  const { values } = parseArgs({
    args: argv,
    options: {
      nproc_per_node: { type: 'string' },
      'nproc-per-node': { type: 'string' },
      preset: { type: 'string', default: 'tiny' },
      mode: { type: 'string', default: 'both' },
      precision: { type: 'string', default: 'both' },
      steps: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '1' },
      zero_stage: { type: 'string', default: '0' },
      json: { type: 'string' },
      'cache-dir': { type: 'string', default: defaultBenchCacheDir() },
    },
  });
  const preset = choice('preset', values.preset!, ['tiny', 'small'] as const);
  const mode = choice('mode', values.mode!, ['sft', 'dpo', 'both'] as const);
  const precision = choice('precision', values.precision!, ['bf16', 'f32', 'both'] as const);
  const ranks = count('nproc_per_node', values.nproc_per_node ?? values['nproc-per-node'] ?? '', 1);
  const zeroStage = count('zero_stage', values.zero_stage!, 0);
  checkRankBench(preset, ranks, zeroStage);
  return {
    preset,
    modes: mode === 'both' ? ['sft', 'dpo'] : [mode],
    precisions: precision === 'both' ? ['bf16', 'f32'] : [precision],
    steps: count('steps', values.steps!, 1),
    warmup: count('warmup', values.warmup!, 0),
    ranks,
    zeroStage: zeroStage as BenchZeroStage,
    cacheDir: resolve(values['cache-dir']!),
  };
}

/** What the multi-rank bench cannot run, refused before anything starts. */
export function checkRankBench(preset: PresetName, ranks: number, zeroStage: number): void {
  if (!(ZERO_STAGES as readonly number[]).includes(zeroStage)) {
    throw new UsageError(`--zero_stage ${zeroStage}: the ZeRO stages are ${ZERO_STAGES.join(', ')}`);
  }
  if (PRESETS[preset].gpuOnly) throw new UsageError(`--nproc_per_node: the ${preset} preset is GPU-only, and ranks run on the CPU`);
  if (ranks > PRESETS[preset].sequences) {
    throw new UsageError(`--nproc_per_node ${ranks}: the ${preset} preset's step has ${PRESETS[preset].sequences} sequences to share, fewer than the ranks`);
  }
}

const CHILD = fileURLToPath(new URL('./rank-child.js', import.meta.url));

/** Runs `command args` to its end and returns rank 0's measurements of every rank. */
function runRanks(command: string, args: string[], env: NodeJS.ProcessEnv, label: string): Promise<RankMeasurement[]> {
  return new Promise((resolveRun, reject) => {
    // stdin ignored: mpirun would forward it to rank 0.
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.on('error', (error) => reject(new ZnError(`${label}: cannot start ${command}: ${error.message}`)));
    child.on('close', (code, signal) => {
      const line = stdout.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
      if (code !== 0 || !line) {
        reject(new ZnError(`${label}: the ranks ended (${signal ?? `exit ${code}`}) without results${stdout.trim() ? `; stdout: ${stdout.trim().slice(-500)}` : ''}`));
        return;
      }
      resolveRun((JSON.parse(line.slice(RESULT_PREFIX.length)) as { ranks: RankMeasurement[] }).ranks);
    });
  });
}

function summarise(settings: RankBenchSettings, options: RankStepOptions, ranks: number, threads: number, perRank: RankMeasurement[], one: RankMeasurement[] | null): RankBenchResult {
  const tokens = perRank.reduce((sum, m) => sum + m.tokens_per_step, 0);
  const stepS = Math.max(...perRank.map((m) => m.step_s));
  const tokensPerS = tokens / stepS;
  const base = one ? one[0]!.tokens_per_step / one[0]!.step_s : tokensPerS;
  const reference = (one ?? perRank)[0]!.losses;
  return {
    preset: settings.preset,
    mode: options.mode,
    precision: options.precision,
    zero_stage: settings.zeroStage,
    ranks,
    threads_per_rank: threads,
    tokens_per_step: tokens,
    step_s: stepS,
    tokens_per_s: tokensPerS,
    tokens_per_s_per_rank: tokensPerS / ranks,
    scaling_efficiency: Number((tokensPerS / (ranks * base)).toFixed(4)),
    max_loss_difference: Math.max(...perRank[0]!.losses.map((loss, i) => Math.abs(loss - reference[i]!))),
    per_rank: perRank,
  };
}

export interface RankBenchReport {
  results: RankBenchResult[];
  /** The mpirun command line of the last configuration (to rerun a rank set by hand). */
  command: string;
  loadAverage: { start: number[]; end: number[] };
}

export async function runRankBench(settings: RankBenchSettings, log: (line: string) => void = (line) => void process.stderr.write(`${line}\n`)): Promise<RankBenchReport> {
  const launch = launchEnvironment();
  if (launch.launcher !== 'none') throw new ZnError(`bench --nproc_per_node starts its own ranks; this process already is rank ${launch.rank} of ${launch.worldSize} (${launch.launcher})`);
  const launcher = settings.ranks > 1 ? requireMpi(`bench --nproc_per_node ${settings.ranks}`) : null;
  const start = loadavg();
  const modelDir = await ensureBenchModel(PRESETS[settings.preset], settings.cacheDir);
  const results: RankBenchResult[] = [];
  let command = '';
  for (const mode of settings.modes) {
    for (const precision of settings.precisions) {
      const options: RankStepOptions = { preset: settings.preset, mode, precision, steps: settings.steps, warmup: settings.warmup, modelDir, zeroStage: settings.zeroStage };
      const rankArgv = [process.execPath, CHILD, JSON.stringify(options)];
      const machine = thisMachine();
      const threads = machine.threadsPerRank ?? Math.max(1, Math.floor(machine.cpus / settings.ranks));
      const label = `${settings.preset} ${mode} ${precision}`;
      log(`${label}: 1 rank (${threads} thread${threads > 1 ? 's' : ''}) ...`);
      const one = await runRanks(process.execPath, rankArgv.slice(1), { ...process.env, ZN_NUM_THREADS: String(threads) }, `${label}, 1 rank`);
      results.push(summarise(settings, options, 1, threads, one, null));
      if (!launcher) continue;
      const ranksLine = ranksCommand(launcher, settings.ranks, rankArgv, { ...machine, threadsPerRank: threads });
      command = shellLine([ranksLine.command, ...ranksLine.args]);
      log(`${label}: ${settings.ranks} ranks ...`);
      const many = await runRanks(ranksLine.command, ranksLine.args, process.env, `${label}, ${settings.ranks} ranks`);
      results.push(summarise(settings, options, settings.ranks, threads, many, one));
    }
  }
  return { results, command, loadAverage: { start: round(start), end: round(loadavg()) } };
}

const round = (values: number[]): number[] => values.map((x) => Number(x.toFixed(2)));

export function formatRankResults(results: RankBenchResult[]): string {
  return markdown(
    ['preset', 'mode', 'precision', 'ZeRO', 'ranks', 'threads/rank', 'step s', 'tokens/s', 'tokens/s per rank', 'scaling efficiency', 'all-reduce s', 'peak RSS per rank'],
    results.map((r) => [
      r.preset,
      r.mode,
      r.precision,
      String(r.zero_stage),
      String(r.ranks),
      String(r.threads_per_rank),
      r.step_s.toFixed(3),
      r.tokens_per_s.toFixed(0),
      r.tokens_per_s_per_rank.toFixed(0),
      `${(100 * r.scaling_efficiency).toFixed(1)}%`,
      Math.max(...r.per_rank.map((m) => m.allreduce_s)).toFixed(3),
      r.per_rank.map((m) => mib(m.peak_bytes)).join(', '),
    ]),
  );
}

/** The report as JSON (`--json`), in the shape of the other benches' (results, machine, versions, settings). */
export function writeRankReport(file: string, settings: RankBenchSettings, report: RankBenchReport): void {
  writeJsonAtomic(resolve(file), {
    results: report.results,
    machine: { ...machineInfo(null), load_average_start: report.loadAverage.start, load_average_end: report.loadAverage.end },
    versions: ourVersions(),
    settings: {
      preset: settings.preset,
      nproc_per_node: settings.ranks,
      zero_stage: settings.zeroStage,
      steps: settings.steps,
      warmup: settings.warmup,
      preset_shape: PRESETS[settings.preset],
      mpirun: report.command,
    },
  });
}

/** The table and the load average around the run. */
export function formatRankReport(report: RankBenchReport): string {
  const load = report.loadAverage;
  return `${formatRankResults(report.results)}\n\nload average (1, 5, 15 min): ${load.start.join(', ')} at the start, ${load.end.join(', ')} at the end\n`;
}

/** The bench:steps entry for --nproc_per_node: runs, prints the table, writes the JSON. */
export async function rankBenchMain(argv: string[]): Promise<void> {
  if (argv.includes('--help')) {
    process.stdout.write(`${RANK_BENCH_USAGE}\n`);
    return;
  }
  const settings = parseRankBenchArgs(argv);
  const report = await runRankBench(settings);
  process.stdout.write(formatRankReport(report));
  const json = parseArgs({ args: argv, options: { json: { type: 'string' } }, strict: false }).values.json;
  if (typeof json === 'string') {
    writeRankReport(json, settings, report);
    process.stderr.write(`wrote ${json}\n`);
  }
}

/** Whether a bench:steps command line asks for ranks. */
export function wantsRanks(argv: string[]): boolean {
  return argv.some((arg) => /^--nproc[-_]per[-_]node(=|$)/.test(arg));
}
