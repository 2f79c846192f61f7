/**
 * `npm run bench:kernels -- [--json FILE] [--rounds N] [--threads N] [--cpu-time] [--zn-bench PATH]
 *                          [--no-build] [--no-torch] [--only gemm,attention,logprob]`
 *
 * The native CPU kernels (zn_bench, built by the CMake build from bench/native/bench_kernels.cpp)
 * beside PyTorch (bench/torch_kernels.py) on the same shapes and thread count, each figure also
 * as a fraction of this machine's measured peak (a tight FMA / vdpbf16ps loop on every thread).
 * Mistral-7B shapes scaled to run in seconds on a small machine; see CASES. Not a timed test:
 * the figures depend on the machine and on whatever else runs on it, so each impl keeps its
 * best of `--rounds` alternating rounds. `--cpu-time` (one thread) times every run, the peak
 * loops included, by the thread's CPU clock: on a loaded machine a core's kernels are then not
 * charged for the time the OS gives other processes.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { writeJsonAtomic } from '../lib/io/atomic.js';
import { packageRoot } from '../lib/native.js';
import { referencePython } from '../test/support/python.js';

/** Case specs understood by zn_bench and torch_kernels.py alike (formats in both files). */
const CASES: { spec: string; what: string }[] = [
  { spec: 'gemm:512,4096,4096:nt:f32', what: 'q/o projection forward, 512 tokens: y = x·Wᵀ' },
  { spec: 'gemm:512,4096,4096:nt:bf16', what: 'the same in bf16' },
  { spec: 'gemm:512,14336,4096:nt:f32', what: 'gate/up projection forward, 512 tokens' },
  { spec: 'gemm:512,14336,4096:nt:bf16', what: 'the same in bf16' },
  { spec: 'gemm:4096,4096,512:tn:f32', what: 'weight gradient over 512 tokens: dW = dyᵀ·x' },
  { spec: 'gemm:4096,4096,512:tn:bf16', what: 'the same in bf16' },
  { spec: 'gemm:512,4096,4096:nn:f32', what: 'input gradient, 512 tokens: dx = dy·W' },
  // The `small` preset's step (hidden 512, intermediate 1408, 4 x 512 tokens) in all three
  // forms. The model's weight gradients multiply f32 activations in f32 (the last case); the
  // bf16 tn case times the same GEMM form on the bf16 kernel.
  { spec: 'gemm:2048,512,512:nt:bf16', what: 'small: q/o projection forward, 2048 tokens' },
  { spec: 'gemm:2048,1408,512:nt:bf16', what: 'small: gate/up projection forward' },
  { spec: 'gemm:2048,512,1408:nt:bf16', what: 'small: down projection forward' },
  { spec: 'gemm:2048,512,1408:nn:bf16', what: 'small: gate/up input gradient dx = dy·W' },
  { spec: 'gemm:2048,1408,512:nn:bf16', what: 'small: down input gradient' },
  { spec: 'gemm:1408,512,2048:tn:bf16', what: 'small: gate/up weight gradient dW = dyᵀ·x in bf16' },
  { spec: 'gemm:1408,512,2048:tn:f32', what: 'small: the same in f32, as the model runs it' },
  // Mistral attention geometry (head_dim 128, 4 query heads per kv head) with 8 of the 32
  // heads, at the window of the model (4096: plain causal here) and a short one; then the
  // `small` preset's (8 heads over 4 kv heads of 64, documents of 512 tokens). Each is timed
  // forward, backward and both, on every SIMD path the CPU has.
  { spec: 'attention:1024,8,2,128,4096', what: 'attention fwd+bwd, T=1024, full causal' },
  { spec: 'attention:2048,8,2,128,4096', what: 'attention fwd+bwd, T=2048, full causal' },
  { spec: 'attention:2048,8,2,128,256', what: 'attention fwd+bwd, T=2048, window 256' },
  { spec: 'attention:512,8,4,64,4096', what: 'small: attention over one 512-token document' },
  // Mistral's vocabulary; 512 tokens of hidden size 1024 keep it to seconds.
  { spec: 'logprob:512,1024,32000', what: 'fused log-prob fwd+bwd, V=32000' },
];

interface BenchLine {
  op: string;
  impl?: string;
  shape?: number[];
  dtype?: string;
  variant?: string;
  gflops?: number;
  threads?: number;
  [key: string]: unknown;
}

interface Result {
  op: string;
  shape: number[];
  dtype: string;
  variant: string;
  impl: 'zephyr-native' | 'torch';
  gflops: number;
  peak_fraction: number;
  seconds: number;
  [key: string]: unknown;
}

function parseLines(output: string, source: string): BenchLine[] {
  return output
    .split('\n')
    .filter((line) => line.trim().startsWith('{'))
    .map((line) => {
      try {
        return JSON.parse(line) as BenchLine;
      } catch {
        throw new Error(`${source} printed a line that is not JSON: ${line}`);
      }
    });
}

function run(command: string, args: string[], what: string, extraEnv: Record<string, string> = {}): string {
  const result = spawnSync(command, args, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1 << 26,
    env: { ...process.env, ...extraEnv },
  });
  if (result.error) throw new Error(`${what} (${command}) could not start: ${result.error.message}`);
  if (result.status !== 0) throw new Error(`${what} (${command}) failed with ${result.status ?? result.signal}`);
  return result.stdout;
}

function locateZnBench(root: string, explicit: string | undefined, build: boolean): string {
  if (explicit) {
    if (!existsSync(explicit)) throw new Error(`--zn-bench ${explicit}: no such file`);
    return resolve(explicit);
  }
  const path = join(root, 'build-cmake', 'zn_bench');
  if (build) {
    console.error('building zn_bench (cmake-js build --out build-cmake) ...');
    const result = spawnSync('npx', ['cmake-js', 'build', '--out', 'build-cmake'], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
    if (result.status !== 0) throw new Error('cmake-js build --out build-cmake failed; see the messages above');
  }
  if (!existsSync(path)) throw new Error(`${path} not found: build it with \`npm run build:cmake\` or pass --zn-bench PATH`);
  return path;
}

const key = (line: BenchLine) => `${line.op} ${JSON.stringify(line.shape)} ${line.dtype} ${line.variant}`;

/** Keeps, per case and impl, the round with the highest throughput; `order` lists the cases
 * in the order they first appeared. */
function keepBest(best: Map<string, BenchLine>, order: string[], lines: BenchLine[]): void {
  for (const line of lines) {
    if (line.gflops === undefined) continue;
    if (!order.includes(key(line))) order.push(key(line));
    const id = `${line.impl} ${line.path ?? ''} ${key(line)}`;
    const previous = best.get(id);
    if (!previous || (previous.gflops ?? 0) < line.gflops) best.set(id, line);
  }
}

function formatTable(results: Result[], peaks: BenchLine[]): string {
  const rows: string[][] = [['op', 'shape', 'dtype', 'variant', 'path', 'zephyr GFLOP/s', 'of peak', 'torch GFLOP/s', 'of peak', 'zephyr/torch']];
  const native = results.filter((r) => r.impl === 'zephyr-native');
  const percent = (x: number | undefined) => (x === undefined ? '-' : `${(100 * x).toFixed(1)}%`);
  for (const ours of native) {
    const torch = results.find((r) => r.impl === 'torch' && key(r) === key(ours));
    rows.push([
      ours.op,
      `[${ours.shape.join(', ')}]`,
      ours.dtype,
      ours.variant,
      String(ours.path ?? ''),
      ours.gflops.toFixed(1),
      percent(ours.peak_fraction),
      torch ? torch.gflops.toFixed(1) : '-',
      percent(torch?.peak_fraction),
      torch ? `${(ours.gflops / torch.gflops).toFixed(2)}x` : '-',
    ]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const lines = rows.map((row) => row.map((cell, c) => (c < 5 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  const peakText = peaks.map((p) => `${p.impl} ${p.dtype} ${p.gflops} GFLOP/s`).join(', ');
  return `${lines.join('\n')}\nmeasured peak (${peaks[0]?.threads ?? '?'} threads): ${peakText}`;
}

function main(): void {
  const { values } = parseArgs({
    options: {
      json: { type: 'string' },
      rounds: { type: 'string', default: '1' },
      'zn-bench': { type: 'string' },
      'no-build': { type: 'boolean', default: false },
      'no-torch': { type: 'boolean', default: false },
      threads: { type: 'string' },
      'cpu-time': { type: 'boolean', default: false },
      only: { type: 'string' },
    },
  });
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be a positive integer, got ${values.rounds}`);
  const root = packageRoot();
  const znBench = locateZnBench(root, values['zn-bench'] ?? process.env.ZN_BENCH, !values['no-build'] && !values['zn-bench'] && !process.env.ZN_BENCH);

  // --threads sets both sides' thread count (default: zn_bench's, i.e. ZN_NUM_THREADS or all cores).
  const threadEnv: Record<string, string> = {};
  if (values.threads !== undefined) {
    if (!/^[1-9][0-9]*$/.test(values.threads)) throw new Error(`--threads must be a positive integer, got ${values.threads}`);
    threadEnv.ZN_NUM_THREADS = values.threads;
  }
  const cpuTime = values['cpu-time'];
  if (cpuTime) {
    if (values.threads !== undefined && values.threads !== '1') throw new Error(`--cpu-time times one thread; got --threads ${values.threads}`);
    threadEnv.ZN_NUM_THREADS = '1';
    threadEnv.ZN_BENCH_CPU_TIME = '1';
  }

  // Which ops this zn_bench was built with (kernels join native/sources.json over time).
  const probe = parseLines(run(znBench, ['--list'], 'zn_bench --list', threadEnv), 'zn_bench');
  const machine = probe.find((line) => line.op === 'machine');
  const ops = new Set((machine?.ops as string[] | undefined) ?? []);
  const wanted = values.only === undefined ? null : new Set(values.only.split(','));
  const cases = CASES.filter((c) => ops.has(c.spec.split(':')[0]!) && (!wanted || wanted.has(c.spec.split(':')[0]!)));
  for (const op of new Set(CASES.map((c) => c.spec.split(':')[0]!))) {
    if (!ops.has(op)) console.error(`${op}: not in this zn_bench build (its kernel is not in native/sources.json yet); skipped`);
  }
  const specs = cases.map((c) => c.spec);
  const threads = Number(machine?.threads ?? 1);

  let python: string | null = null;
  if (values['no-torch']) console.error('torch column skipped: --no-torch');
  else {
    const reference = referencePython(['torch']);
    python = reference.python;
    if (!python) console.error(`torch column skipped: ${reference.skipReason}`);
  }

  // The machine's load beside the figures: on a shared machine they depend on it.
  const loadStart = loadavg();
  const best = new Map<string, BenchLine>();
  const order: string[] = [];
  let memory: BenchLine[] = [];
  const peaks = new Map<string, BenchLine>();
  for (let round = 1; round <= rounds; ++round) {
    console.error(`round ${round}/${rounds}: zephyr-native ...`);
    const lines = parseLines(run(znBench, ['peak', ...specs], 'zn_bench', threadEnv), 'zn_bench');
    for (const peak of lines.filter((line) => line.op === 'peak')) {
      const id = `${peak.impl} ${peak.dtype}`;
      if ((peaks.get(id)?.gflops ?? 0) < (peak.gflops ?? 0)) peaks.set(id, peak);
    }
    keepBest(best, order, lines.filter((line) => line.gflops !== undefined && line.op !== 'peak'));
    memory = lines.filter((line) => line.op === 'logprob-memory');
    if (python) {
      console.error(`round ${round}/${rounds}: torch ...`);
      const script = join(root, 'bench', 'torch_kernels.py');
      const torchArgs = [script, '--threads', String(threads), ...(cpuTime ? ['--cpu-time'] : []), ...specs];
      keepBest(best, order, parseLines(run(python, torchArgs, 'bench/torch_kernels.py'), 'torch_kernels.py').filter((line) => line.op !== 'machine'));
    }
  }

  // Peak for a dtype: the fastest multiply-add loop its GEMM can use (bf16 GEMMs widen to f32 on
  // CPUs without vdpbf16ps), the best of every measurement in every round.
  const peakFor = (dtype: string) =>
    Math.max(0, ...[...peaks.values()].filter((p) => p.dtype === dtype || (dtype === 'bf16' && p.dtype === 'f32')).map((p) => p.gflops ?? 0));
  const results: Result[] = [...best.values()].map((line) => {
    const dtype = line.dtype ?? 'f32';
    const peak = peakFor(dtype);
    return {
      ...line,
      op: line.op,
      shape: line.shape ?? [],
      dtype,
      variant: line.variant ?? '',
      impl: line.impl === 'torch' ? 'torch' : 'zephyr-native',
      gflops: line.gflops ?? 0,
      peak_gflops: peak,
      peak_fraction: peak > 0 ? Number(((line.gflops ?? 0) / peak).toFixed(3)) : 0,
      seconds: Number(line.seconds ?? 0),
    };
  });
  results.sort((a, b) => order.indexOf(key(a)) - order.indexOf(key(b)) || b.impl.localeCompare(a.impl));

  const load = { start: loadStart.map((x) => Number(x.toFixed(2))), end: loadavg().map((x) => Number(x.toFixed(2))) };
  console.log(formatTable(results, [...peaks.values()]));
  console.log(`clock: ${cpuTime ? 'thread CPU time' : 'wall'}; load average (1, 5, 15 min) ${load.start.join(' ')} at the start, ${load.end.join(' ')} at the end`);
  const mib = (bytes: unknown) => `${(Number(bytes) / (1 << 20)).toFixed(1)} MiB`;
  for (const line of memory) {
    console.log(
      `fused log-prob scratch at [${line.shape?.join(', ')}]: ${mib(line.scratch_bytes)} vs ${mib(line.logits_bytes)} of f32 logits (${line.ratio}x less)`,
    );
  }
  if (values.json) {
    writeJsonAtomic(resolve(values.json), { machine, clock: cpuTime ? 'thread-cpu' : 'wall', load_average: load, peaks: [...peaks.values()], cases, results, memory });
    console.error(`wrote ${values.json}`);
  }
}

try {
  main();
} catch (error) {
  console.error(`bench:kernels: ${(error as Error).message}`);
  process.exitCode = 1;
}
