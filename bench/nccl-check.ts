/**
 * The NCCL part of the device check (issue 23: data parallel on GPU ranks, ZeRO stage 0), run by
 * bench/device-check.sh on a machine with a GPU:
 *   node dist/bench/nccl-check.js [--gpus N] [--timeout SECONDS]
 * 1. One rank: a communicator of one on GPU 0. A small model takes steps with the NCCL all-reduce
 *    between its backward and its optimizer step, beside the same model without it, in f32, bf16
 *    and bf16 with offload_optimizer (the host AdamW reads the summed gradients): per-token
 *    log-probs, grad norms and every weight after the steps must agree bit for bit.
 * 2. With --gpus N (N > 1, mpirun and the MPI addon present): `mpirun -n N zephyr-native sft
 *    --device cuda` with micro-batch b against one process with micro-batch N*b: losses and grad
 *    norms to a tolerance (the sums run in another order), as the CPU-rank check does.
 * Prints one line per check and what it could not run; exits 1 when a check fails. Nothing waits
 * without a deadline: NCCL's waits have the communicator's timeout, child processes --timeout.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ultrachatRows } from '../lib/demo/teacher.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { writeRows } from '../lib/data/writers.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadModel, type MistralModel } from '../lib/model/model.js';
import { loadNccl, mpiAddonCandidates, type NcclCommunicator, packageRoot } from '../lib/native.js';

const args = process.argv.slice(2);
const option = (name: string, fallback: number): number => {
  const at = args.indexOf(`--${name}`);
  return at >= 0 ? Number(args[at + 1]) : fallback;
};
const gpus = option('gpus', Number(process.env.ZN_DEVICE_GPUS ?? 1));
const timeoutSeconds = option('timeout', 120);
const steps = 3;
let failed = false;

function report(ok: boolean, line: string): void {
  if (!ok) failed = true;
  console.log(`${ok ? 'PASS' : 'FAIL'} nccl: ${line}`);
}

/** Two documents of random tokens, next-token targets (-100 after each document's last token), and d loss / d logp of the mean NLL. */
function batch(vocab: number, seed: number) {
  const lengths = [20, 12];
  const tokens = lengths.reduce((a, b) => a + b, 0);
  const inputIds = new Int32Array(tokens);
  const positionIds = new Int32Array(tokens);
  const targets = new Int32Array(tokens);
  const cuSeqlens = Int32Array.from([0, lengths[0], tokens]);
  let state = seed;
  for (let i = 0; i < tokens; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    inputIds[i] = 3 + (state % (vocab - 3));
  }
  let at = 0;
  for (const length of lengths) {
    for (let j = 0; j < length; j++) {
      positionIds[at + j] = j;
      targets[at + j] = j + 1 < length ? inputIds[at + j + 1] : -100;
    }
    at += length;
  }
  const counted = targets.filter((t) => t !== -100).length;
  const dlogp = Float32Array.from(targets, (t) => (t === -100 ? 0 : -1 / counted));
  return { batch: { inputIds, positionIds, targets, cuSeqlens }, dlogp };
}

const sameBits = (a: Float32Array, b: Float32Array): boolean =>
  a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

/** K steps; with a communicator, its all-reduce between the backward and the step. */
async function train(model: MistralModel, vocab: number, communicator: NcclCommunicator | null) {
  const logps: Float32Array[] = [];
  const norms: number[] = [];
  for (let step = 0; step < steps; step++) {
    const { batch: b, dlogp } = batch(vocab, 100 + step);
    await model.zeroGrad();
    logps.push(await model.forwardBackward(b, dlogp));
    if (communicator) await model.allReduceGradients(communicator);
    norms.push((await model.clipAndStep({ lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxGradNorm: 1.0 })).gradNorm);
  }
  return { logps, norms };
}

async function oneRank(work: string): Promise<void> {
  const nccl = loadNccl();
  console.log(`nccl: ${nccl.ncclLibrary()}`);
  const vocab = 512;
  const config = mistralConfig({
    vocab_size: vocab, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, max_position_embeddings: 128, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2,
  });
  const dir = join(work, 'small');
  await writeRandomModel(dir, config, { seed: 5 });
  const communicator = new nccl.NcclCommunicator();
  await communicator.open({ uniqueId: nccl.ncclUniqueId(), rank: 0, size: 1, device: 0, timeoutSeconds });
  const modes = [
    { name: 'f32', dtype: 'f32' as const, offloadOptimizer: false },
    { name: 'bf16', dtype: 'bf16' as const, offloadOptimizer: false },
    { name: 'bf16 offload_optimizer', dtype: 'bf16' as const, offloadOptimizer: true },
  ];
  for (const mode of modes) {
    const options = { device: 'cuda' as const, dtype: mode.dtype, offloadOptimizer: mode.offloadOptimizer, maxTokens: 64, trainable: true, cudaDevice: 0 };
    const plain = await loadModel(dir, options);
    const reduced = await loadModel(dir, options);
    try {
      const a = await train(plain, vocab, null);
      const b = await train(reduced, vocab, communicator);
      report(a.logps.every((logp, i) => sameBits(logp, b.logps[i])), `${mode.name}: 1 rank, log-probs of ${steps} steps bit for bit`);
      report(a.norms.every((norm, i) => Object.is(norm, b.norms[i])), `${mode.name}: 1 rank, grad norms ${a.norms.map((n) => n.toPrecision(6)).join(', ')} bit for bit`);
      const differing = plain.parameters().filter(({ name }) => !sameBits(plain.getParameter(name), reduced.getParameter(name)));
      report(differing.length === 0, `${mode.name}: 1 rank, every weight after ${steps} steps bit for bit${differing.length ? ` (differ: ${differing.slice(0, 3).map((p) => p.name).join(', ')})` : ''}`);
    } finally {
      plain.dispose();
      reduced.dispose();
    }
  }
  await communicator.close({});
}

function run(command: string, argv: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; output: string }> {
  const child = spawn(command, argv, { env });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutSeconds * 1000);
  return new Promise((resolve) => child.on('close', (code) => (clearTimeout(timer), resolve({ code, output }))));
}

async function severalRanks(work: string, ranks: number): Promise<void> {
  if (spawnSync('mpirun', ['--version']).status !== 0) return console.log(`nccl: ${ranks} GPU ranks NOT RUN: no mpirun on this machine`);
  if (!mpiAddonCandidates().some((file) => existsSync(file))) return console.log(`nccl: ${ranks} GPU ranks NOT RUN: the MPI addon (zn_mpi.node) is not built`);
  writeLlama2TokenizerFolder(join(work, 'tokenizer'));
  const config = mistralConfig({
    vocab_size: 32000, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, max_position_embeddings: 128, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2,
  });
  await writeRandomModel(join(work, 'model'), config, { seed: 3, tokenizerDir: join(work, 'tokenizer') });
  await writeRows(join(work, 'chats.jsonl'), ultrachatRows(8 * ranks * 5, 11));
  const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
  const recipe = (out: string, batchSize: number) => Object.entries({
    model_name_or_path: join(work, 'model'), dataset_name: join(work, 'chats.jsonl'), output_dir: join(work, out), device: 'cuda', bf16: false,
    max_length: 64, max_steps: 5, logging_steps: 1, learning_rate: 3e-3, seed: 7, gradient_accumulation_steps: 2,
    per_device_train_batch_size: batchSize, save_strategy: 'no', ddp_timeout: Math.max(10, Math.floor(timeoutSeconds / 2)),
  }).flatMap(([k, v]) => [`--${k}`, String(v)]);
  const env = { ...process.env, NCCL_DEBUG: process.env.NCCL_DEBUG ?? 'WARN' };
  const one = await run(process.execPath, [cli, 'sft', ...recipe('one', 2 * ranks)], env);
  if (one.code !== 0) return report(false, `1 process x micro-batch ${2 * ranks} failed:\n${one.output.slice(-2000)}`);
  const many = await run('mpirun', ['--allow-run-as-root', '--oversubscribe', '-n', String(ranks), process.execPath, cli, 'sft', ...recipe('many', 2)], env);
  if (many.code !== 0) return report(false, `mpirun -n ${ranks} failed (exit ${many.code}):\n${many.output.slice(-3000)}`);
  const history = (out: string) => (JSON.parse(readFileSync(join(work, out, 'trainer_state.json'), 'utf8')).log_history as Record<string, number>[]).filter((e) => 'loss' in e);
  const [a, b] = [history('one'), history('many')];
  let worst = 0;
  for (const [i, entry] of a.entries()) {
    for (const key of ['loss', 'grad_norm']) worst = Math.max(worst, Math.abs(b[i]?.[key] - entry[key]) / Math.max(Math.abs(entry[key]), 1e-6));
  }
  report(a.length === 5 && b.length === 5 && worst <= 1e-3, `mpirun -n ${ranks} x micro-batch 2 == 1 process x micro-batch ${2 * ranks} (f32, 5 steps): largest relative difference of loss/grad_norm ${worst.toExponential(2)} (tolerance 1e-3)`);
}

const work = mkdtempSync(join(tmpdir(), 'zn-nccl-check-'));
try {
  await oneRank(work);
  if (gpus > 1) await severalRanks(work, gpus);
  else console.log('nccl: several GPU ranks NOT RUN: one GPU (--gpus N or ZN_DEVICE_GPUS=N with N > 1 runs them)');
} catch (error) {
  report(false, `stopped: ${(error as Error).message}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
