/**
 * The step benchmark around the measurement: each configuration in its own child process, the
 * machine's measured multiply-add peak (native/core/peak.h) for MFU, machine facts, and the
 * Markdown table. `zephyr-native bench` and `npm run bench:peer` both report through here.
 */
import { fork } from 'node:child_process';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';

import { ZnError } from '../errors.js';
import { mistralConfig } from '../model/init.js';
import { loadNative } from '../native.js';
import { VERSION } from '../version.js';
import { stepFlops } from './flops.js';
import { type BenchMode, type BenchPeft, type BenchPrecision, PRESETS, type PresetName } from './presets.js';
import type { StepBenchOptions, StepMeasurement } from './step-bench.js';

/** What either implementation measures for one configuration. */
export interface BenchMeasurement {
  preset: PresetName;
  mode: BenchMode;
  implementation: 'zephyr-native' | 'trl';
  precision: BenchPrecision;
  /** LoRA's r, alpha and targets (TRL: + PEFT) when adapters are trained; null: full fine-tuning. */
  peft: BenchPeft | null;
  tokens_per_s: number;
  step_s: number;
  peak_bytes: number;
  threads: number;
  steps_s: number[];
  tokens_per_step: number;
}

/** One row of the JSON report (`results[]`); extra fields explain the headline ones. */
export interface BenchResult extends BenchMeasurement {
  /** Model FLOPs per second / measured peak (lib/bench/flops.ts); null without a peak. */
  mfu: number | null;
  flops_per_step: number;
  [key: string]: unknown;
}

export interface MeasuredPeak {
  /** GFLOP/s of the multiply-add loop f32 (and bf16) GEMMs run on, on every thread. */
  f32: number;
  bf16: number;
  threads: number;
  loops: { name: string; dtype: string; gflops: number }[];
}

/** This machine's multiply-add peak; the best of `rounds` measurements (a busy machine lowers some). */
export async function measurePeak(rounds = 1): Promise<MeasuredPeak> {
  const addon = loadNative('cpu');
  let best: MeasuredPeak | null = null;
  for (let round = 0; round < rounds; round++) {
    const peak = await addon.measurePeak({});
    if (!best || peak.f32 > best.f32) best = peak;
  }
  return best!;
}

export function mergePeaks(a: MeasuredPeak, b: MeasuredPeak): MeasuredPeak {
  return a.f32 >= b.f32 ? a : b;
}

export interface MachineInfo {
  cpu: string;
  cores: number;
  memory_bytes: number;
  cpu_features: string;
  cpu_path: string;
  threads: number;
  /** Null where no peak was measured (a GPU run). */
  peak_gflops: { f32: number; bf16: number; loops: MeasuredPeak['loops'] } | null;
  load_average: number[];
  platform: string;
}

export function machineInfo(peak: MeasuredPeak | null): MachineInfo {
  const info = loadNative('cpu').info();
  return {
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    cores: availableParallelism(),
    memory_bytes: totalmem(),
    cpu_features: info.cpuFeatures,
    cpu_path: info.cpuPath,
    threads: info.threads,
    peak_gflops: peak ? { f32: peak.f32, bf16: peak.bf16, loops: peak.loops } : null,
    load_average: loadavg().map((x) => Number(x.toFixed(2))),
    platform: `${process.platform}-${process.arch}`,
  };
}

export function ourVersions(): Record<string, string> {
  return { 'zephyr-native': VERSION, node: process.versions.node, addon: loadNative('cpu').info().version };
}

/** Runs one configuration in a fresh child process (so its max RSS is its own). */
export function runInChild(options: StepBenchOptions): Promise<StepMeasurement> {
  return runChildScript('./child.js', options, `bench ${options.preset} ${options.mode} ${options.precision}${options.peft ? ' peft' : ''}`);
}

/**
 * Sends `options` to a fresh child process running `script` (beside this file), which answers
 * one IPC message, {type: 'result', result} or {type: 'error', message}.
 */
export function runChildScript<Options extends object, Result>(script: string, options: Options, label: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(new URL(script, import.meta.url)), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let settled = false;
    child.on('message', (message: { type: 'result'; result: Result } | { type: 'error'; message: string }) => {
      settled = true;
      if (message.type === 'result') resolve(message.result);
      else reject(new ZnError(`${label}: ${message.message}`));
    });
    child.on('error', (error) => {
      if (!settled) reject(new ZnError(`bench: could not start the benchmark process: ${error.message}`));
      settled = true;
    });
    child.on('exit', (code, signal) => {
      if (!settled) {
        settled = true;
        reject(new ZnError(`${label}: the benchmark process ended (${signal ?? `exit ${code}`}) before reporting${signal === 'SIGKILL' ? ' (out of memory?)' : ''}`));
      }
    });
    child.send(options);
  });
}

/** A measurement (ours or TRL's) as a report row, with its MFU against `peak`. */
export function toResult(measurement: BenchMeasurement, peak: MeasuredPeak | null): BenchResult {
  const preset = PRESETS[measurement.preset];
  const { flops } = stepFlops(mistralConfig(preset.model), preset, measurement.mode, measurement.peft);
  const peakGflops = peak ? (measurement.precision === 'bf16' ? peak.bf16 : peak.f32) : 0;
  const mfu = peakGflops > 0 ? flops / measurement.step_s / (peakGflops * 1e9) : null;
  return { ...measurement, flops_per_step: flops, mfu: mfu === null ? null : Number(mfu.toFixed(4)) };
}

export const mib = (bytes: number) => `${(bytes / (1 << 20)).toFixed(0)} MiB`;

export function markdown(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

export function formatResults(results: BenchResult[]): string {
  return markdown(
    ['preset', 'mode', 'precision', 'implementation', 'training', 'threads', 'step s (median)', 'tokens/s', 'MFU', 'peak memory'],
    results.map((r) => [
      r.preset,
      r.mode,
      r.precision,
      r.implementation === 'trl' && r.peft ? 'trl + peft' : r.implementation,
      describeTraining(r.peft),
      String(r.threads),
      r.step_s.toFixed(3),
      r.tokens_per_s.toFixed(0),
      r.mfu === null ? '-' : `${(100 * r.mfu).toFixed(1)}%`,
      mib(r.peak_bytes),
    ]),
  );
}

/** What a configuration trains: `full`, or LoRA's rank, alpha and targets. */
export function describeTraining(peft: BenchPeft | null): string {
  return peft ? `LoRA r ${peft.r}, alpha ${peft.alpha}, ${peft.target_modules}` : 'full';
}

const samePeft = (a: BenchPeft | null, b: BenchPeft | null): boolean => JSON.stringify(a) === JSON.stringify(b);

export interface Ratio {
  preset: PresetName;
  mode: BenchMode;
  precision: BenchPrecision;
  peft: BenchPeft | null;
  /** zephyr-native / TRL: below 1 is faster / smaller. */
  step_s: number;
  peak_bytes: number;
  /** zephyr-native / TRL tokens/s: above 1 is faster. */
  tokens_per_s: number;
}

export function ratios(results: BenchResult[]): Ratio[] {
  const out: Ratio[] = [];
  for (const ours of results.filter((r) => r.implementation === 'zephyr-native')) {
    const peer = results.find(
      (r) => r.implementation === 'trl' && r.preset === ours.preset && r.mode === ours.mode && r.precision === ours.precision && samePeft(r.peft, ours.peft),
    );
    if (!peer) continue;
    const round = (x: number) => Number(x.toFixed(3));
    out.push({
      preset: ours.preset,
      mode: ours.mode,
      precision: ours.precision,
      peft: ours.peft,
      step_s: round(ours.step_s / peer.step_s),
      peak_bytes: round(ours.peak_bytes / peer.peak_bytes),
      tokens_per_s: round(ours.tokens_per_s / peer.tokens_per_s),
    });
  }
  return out;
}

export function formatRatios(list: Ratio[]): string {
  return markdown(
    ['preset', 'mode', 'precision', 'training', 'time/step zephyr-native/TRL', 'tokens/s zephyr-native/TRL', 'peak memory zephyr-native/TRL'],
    list.map((r) => [r.preset, r.mode, r.precision, describeTraining(r.peft), r.step_s.toFixed(2), `${r.tokens_per_s.toFixed(2)}x`, r.peak_bytes.toFixed(2)]),
  );
}

/** A bench flag's value from a fixed set; an error naming the flag otherwise. */
export function choice<T extends string>(name: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) throw new Error(`--${name} must be one of ${allowed.join(', ')}, got '${value}'`);
  return value as T;
}

/** A bench flag's integer value, at least `min`; an error naming the flag otherwise. */
export function count(name: string, value: string, min: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got '${value}'`);
  return n;
}
