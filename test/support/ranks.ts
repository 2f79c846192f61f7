/**
 * What tests of data-parallel ranks share: whether MPI is here (with the reason to skip when
 * not), the tiny fixtures (an untied-embedding Mistral, UltraChat-style chats), the CLI run as a
 * child process with the environment of no launcher, the comparisons of two runs, and the
 * processes below a pid (Linux /proc).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { ultrachatRows } from '../../lib/demo/teacher.js';
import { writeLlama2TokenizerFolder } from '../../lib/data/llama2-tokenizer.js';
import { writeRows } from '../../lib/data/writers.js';
import { mistralConfig, writeRandomModel } from '../../lib/model/init.js';
import { loadNative, mpiAddonCandidates, packageRoot } from '../../lib/native.js';

export const CLI = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');

/** Why MPI tests cannot run here; null when mpirun and the MPI addon are both present. */
export function mpiSkipReason(): string | null {
  if (spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status !== 0) {
    return 'mpirun not found: `apt-get install -y libopenmpi-dev openmpi-bin`, then `npx node-gyp rebuild` (.ci/run does both)';
  }
  if (!mpiAddonCandidates().some((file) => existsSync(file))) return 'the MPI addon (zn_mpi.node) is not built: `npx node-gyp rebuild` with MPI installed';
  return null;
}

/** A tiny Mistral with untied embeddings (ranks then sum the embedding's gradient as a dense buffer) and 40 chats. */
export async function writeSftFixtures(work: string): Promise<{ model: string; chats: string }> {
  writeLlama2TokenizerFolder(join(work, 'tokenizer'));
  const config = mistralConfig({
    vocab_size: 32000, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, max_position_embeddings: 128, sliding_window: 16, tie_word_embeddings: false,
    bos_token_id: 1, eos_token_id: 2,
  });
  await writeRandomModel(join(work, 'model'), config, { seed: 3, tokenizerDir: join(work, 'tokenizer') });
  await writeRows(join(work, 'chats.jsonl'), ultrachatRows(40, 11));
  return { model: join(work, 'model'), chats: join(work, 'chats.jsonl') };
}

/** This environment without any launcher's variables (the test suite may itself run under one). */
export function environmentWithoutLauncher(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!/^(OMPI_|PMIX_|PMI_|MPI_LOCALRANKID$|RANK$|WORLD_SIZE$|LOCAL_RANK$)/.test(name)) env[name] = value;
  }
  return { ...env, ...extra };
}

export interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
  seconds: number;
}

/** `node <args>` to its end (SIGKILLed past the timeout), stdout and stderr together. */
export function runNode(
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; onStart?: (pid: number) => void } = {},
): Promise<Finished> {
  const started = Date.now();
  const child = spawn(process.execPath, args, { cwd: options.cwd, env: options.env ?? environmentWithoutLauncher() });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  options.onStart?.(child.pid!);
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
  return new Promise((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, output, seconds: (Date.now() - started) / 1000 });
    }),
  );
}

/** A recipe as flags: `--key value` for each entry. */
export function flags(recipe: Record<string, unknown>): string[] {
  return Object.entries(recipe).flatMap(([k, v]) => [`--${k}`, String(v)]);
}

export type Entry = Record<string, number>;

export const history = (dir: string): Entry[] => JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')).log_history as Entry[];

export async function tensors(path: string): Promise<Map<string, Float32Array>> {
  const addon = loadNative('cpu');
  const out = new Map<string, Float32Array>();
  for (const tensor of addon.readSafetensorsHeader({ path }).tensors) out.set(tensor.name, await addon.readTensor({ path, name: tensor.name, dtype: 'f32' }));
  return out;
}

export function assertClose(actual: number, expected: number, relative: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= relative * Math.max(Math.abs(expected), 1e-3), `${what}: ${actual} vs ${expected}`);
}

/** The logged steps of two runs agree to float tolerance, metric by metric. */
export function assertSameTrajectory(actual: Entry[], expected: Entry[], metrics: string[]): void {
  const pick = (entries: Entry[]) => entries.filter((e) => 'loss' in e || 'eval_loss' in e);
  const a = pick(actual);
  const b = pick(expected);
  assert.equal(a.length, b.length, 'logged entries');
  for (let i = 0; i < b.length; i++) {
    assert.equal(a[i].step, b[i].step);
    for (const name of metrics.filter((m) => m in b[i])) assertClose(a[i][name], b[i][name], 1e-5, `step ${b[i].step} ${name}`);
  }
}

/** Every tensor of two weight files equal bit for bit. */
export async function assertIdenticalWeights(actualFile: string, expectedFile: string): Promise<void> {
  const expected = await tensors(expectedFile);
  const actual = await tensors(actualFile);
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort());
  for (const [name, x] of expected) assert.ok(Buffer.from(x.buffer).equals(Buffer.from(actual.get(name)!.buffer)), `${name} differs`);
}

/** Every tensor of two safetensors files agrees within 1e-5 relative (L2). */
export async function assertSameWeights(actualFile: string, expectedFile: string): Promise<void> {
  const expected = await tensors(expectedFile);
  const actual = await tensors(actualFile);
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort());
  for (const [name, x] of expected) {
    const y = actual.get(name)!;
    let diff = 0;
    let norm = 0;
    x.forEach((v, i) => {
      diff += (v - y[i]) ** 2;
      norm += v * v;
    });
    assert.ok(Math.sqrt(diff) <= 1e-5 * Math.sqrt(norm), `${name}: relative difference ${Math.sqrt(diff / norm)}`);
  }
}

/** Every process below `pid`. */
export function descendants(pid: number): number[] {
  const out: number[] = [];
  const visit = (parent: number): void => {
    const tasks = join('/proc', String(parent), 'task');
    if (!existsSync(tasks)) return;
    for (const task of readdirSync(tasks)) {
      let children = '';
      try {
        children = readFileSync(join(tasks, task, 'children'), 'utf8');
      } catch {
        continue;
      }
      for (const child of children.split(' ').filter(Boolean).map(Number)) {
        out.push(child);
        visit(child);
      }
    }
  };
  visit(pid);
  return out;
}

export function environOf(pid: number): string {
  try {
    return readFileSync(join('/proc', String(pid), 'environ'), 'utf8');
  } catch {
    return '';
  }
}

/** A process as /proc knows it: its pid and start time (a pid may be reused once it is gone). */
export interface ProcessId {
  pid: number;
  started: string;
  /** Its command line when it was seen. */
  command: string;
}

function startTime(pid: number): string | null {
  try {
    // Field 22 of stat; the command name (field 2) may hold spaces, so count from its closing paren.
    return readFileSync(join('/proc', String(pid), 'stat'), 'utf8').split(') ')[1]!.split(' ')[19]!;
  } catch {
    return null;
  }
}

export function processId(pid: number): ProcessId {
  let command = '';
  try {
    command = readFileSync(join('/proc', String(pid), 'cmdline'), 'utf8').replace(/\0/g, ' ').trim();
  } catch {
    // Gone already.
  }
  return { pid, started: startTime(pid) ?? '', command };
}

/** The process, if it still exists (a zombie counts: its parent has not waited for it): its command line and state. */
export function stillThere(id: ProcessId): string | null {
  if (startTime(id.pid) !== id.started) return null;
  try {
    const [state, parent] = readFileSync(join('/proc', String(id.pid), 'stat'), 'utf8').split(') ')[1]!.split(' ');
    return `${id.pid} (state ${state}, parent ${parent}): ${id.command}`;
  } catch {
    return null;
  }
}
