/**
 * The NCCL part of the device check (issue 23: data parallel on GPU ranks, ZeRO stages 0, 1 and
 * 2), run by bench/device-check.sh on a machine with a GPU:
 *   node dist/bench/nccl-check.js [--gpus N] [--timeout SECONDS]
 * 1. One rank: a communicator of one on GPU 0. A small model takes steps through each stage's
 *    collectives (stage 0: the NCCL all-reduce between its backward and its optimizer step;
 *    stage 1: the all-reduce, then the grouped-broadcast all-gather of the weights after the
 *    step; stage 2: the grouped-reduce reduce-scatter, the norm from the shard's sum of squares,
 *    the step, the all-gather) beside the same model without any, in f32, bf16 and bf16 with
 *    offload_optimizer (the host AdamW reads the summed gradients): per-token log-probs, grad
 *    norms and every weight after the steps must agree bit for bit.
 * 2. With --gpus N (N > 1, mpirun and the MPI addon present): `mpirun -n N zephyr-native sft
 *    --device cuda` at zero_stage 0, 1 and 2 (f32), and 2 in bf16 with offload_optimizer, each
 *    with micro-batch b against one process with micro-batch N*b: losses and grad norms to a
 *    tolerance (the sums run in another order), as the CPU-rank check does; stage 1's final
 *    weights equal stage 0's bit for bit; the stage 2 run's checkpoint (N ranks' shard files)
 *    resumes on one process to the same last losses.
 * Prints one line per check and what it could not run; exits 1 when a check fails. Nothing waits
 * without a deadline: NCCL's waits have the communicator's timeout, child processes --timeout.
 */
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
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

/**
 * K steps; with a communicator, a ZeRO stage's collectives around the step (the order
 * lib/train/zero.ts's reduceGradients and stepAndGather give them on several ranks).
 */
async function train(model: MistralModel, vocab: number, communicator: NcclCommunicator | null, stage: 0 | 1 | 2 = 0) {
  const logps: Float32Array[] = [];
  const norms: number[] = [];
  const hp = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxGradNorm: 1.0 };
  for (let step = 0; step < steps; step++) {
    const { batch: b, dlogp } = batch(vocab, 100 + step);
    await model.zeroGrad();
    logps.push(await model.forwardBackward(b, dlogp));
    let gradSumOfSquares: number | undefined;
    if (communicator && stage < 2) await model.allReduceGradients(communicator);
    if (communicator && stage === 2) {
      await model.reduceScatterGradients(communicator);
      gradSumOfSquares = await model.shardGradSumOfSquares();
    }
    norms.push((await model.clipAndStep(gradSumOfSquares === undefined ? hp : { ...hp, gradSumOfSquares })).gradNorm);
    if (communicator && stage > 0) await model.allGatherWeights(communicator);
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
    try {
      const a = await train(plain, vocab, null);
      for (const stage of [0, 1, 2] as const) {
        const reduced = await loadModel(dir, options);
        try {
          const b = await train(reduced, vocab, communicator, stage);
          const what = `${mode.name}, zero_stage ${stage}: 1 rank`;
          report(a.logps.every((logp, i) => sameBits(logp, b.logps[i])), `${what}, log-probs of ${steps} steps bit for bit`);
          report(a.norms.every((norm, i) => Object.is(norm, b.norms[i])), `${what}, grad norms ${a.norms.map((n) => n.toPrecision(6)).join(', ')} bit for bit`);
          const differing = plain.parameters().filter(({ name }) => !sameBits(plain.getParameter(name), reduced.getParameter(name)));
          report(differing.length === 0, `${what}, every weight after ${steps} steps bit for bit${differing.length ? ` (differ: ${differing.slice(0, 3).map((p) => p.name).join(', ')})` : ''}`);
        } finally {
          reduced.dispose();
        }
      }
    } finally {
      plain.dispose();
    }
  }
  console.log('nccl: ZeRO ranges of unequal size NOT RUN here: one rank owns everything (the emulator check `--only zero` steps {0,2} and {1,2}; --gpus N runs them)');
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
  const recipe = (out: string, batchSize: number, extra: Record<string, string | number | boolean> = {}) => Object.entries({
    model_name_or_path: join(work, 'model'), dataset_name: join(work, 'chats.jsonl'), output_dir: join(work, out), device: 'cuda', bf16: false,
    max_length: 64, max_steps: 5, logging_steps: 1, learning_rate: 3e-3, seed: 7, gradient_accumulation_steps: 2,
    per_device_train_batch_size: batchSize, save_strategy: 'no', ddp_timeout: Math.max(10, Math.floor(timeoutSeconds / 2)), ...extra,
  }).flatMap(([k, v]) => [`--${k}`, String(v)]);
  const env = { ...process.env, NCCL_DEBUG: process.env.NCCL_DEBUG ?? 'WARN' };
  const history = (out: string) => (JSON.parse(readFileSync(join(work, out, 'trainer_state.json'), 'utf8')).log_history as Record<string, number>[]).filter((e) => 'loss' in e);
  const worstDifference = (a: Record<string, number>[], b: Record<string, number>[]) => {
    let worst = 0;
    for (const [i, entry] of a.entries()) {
      for (const key of ['loss', 'grad_norm']) worst = Math.max(worst, Math.abs(b[i]?.[key] - entry[key]) / Math.max(Math.abs(entry[key]), 1e-6));
    }
    return worst;
  };
  const single = async (out: string, extra: Record<string, string | number | boolean> = {}) => {
    const one = await run(process.execPath, [cli, 'sft', ...recipe(out, 2 * ranks, extra)], env);
    if (one.code !== 0) report(false, `1 process x micro-batch ${2 * ranks} (${out}) failed:\n${one.output.slice(-2000)}`);
    return one.code === 0;
  };
  const cases: { out: string; one: string; extra: Record<string, string | number | boolean> }[] = [
    { out: 'z0', one: 'one', extra: { zero_stage: 0 } },
    { out: 'z1', one: 'one', extra: { zero_stage: 1 } },
    { out: 'z2', one: 'one', extra: { zero_stage: 2, save_strategy: 'steps', save_steps: 3 } },
    { out: 'z2-bf16-offload', one: 'one-bf16-offload', extra: { zero_stage: 2, bf16: true, offload_optimizer: true } },
  ];
  if (!(await single('one')) || !(await single('one-bf16-offload', { bf16: true, offload_optimizer: true }))) return;
  const passed = new Set<string>();
  for (const c of cases) {
    const many = await run('mpirun', ['--allow-run-as-root', '--oversubscribe', '-n', String(ranks), process.execPath, cli, 'sft', ...recipe(c.out, 2, c.extra)], env);
    const label = `mpirun -n ${ranks} zero_stage ${c.extra.zero_stage}${c.out.includes('bf16') ? ' bf16 offload_optimizer' : ' f32'}`;
    if (many.code !== 0) {
      report(false, `${label} failed (exit ${many.code}):\n${many.output.slice(-3000)}`);
      continue;
    }
    const [a, b] = [history(c.one), history(c.out)];
    const worst = worstDifference(a, b);
    const tolerance = c.out.includes('bf16') ? 2e-2 : 1e-3;
    const ok = a.length === 5 && b.length === 5 && worst <= tolerance;
    if (ok) passed.add(c.out);
    report(ok, `${label} x micro-batch 2 == 1 process x micro-batch ${2 * ranks} (5 steps): largest relative difference of loss/grad_norm ${worst.toExponential(2)} (tolerance ${tolerance})`);
  }
  if (passed.has('z0') && passed.has('z1')) {
    const weights = (out: string) => readFileSync(join(work, out, 'model.safetensors'));
    report(weights('z0').equals(weights('z1')), `mpirun -n ${ranks}: zero_stage 1's final weights are zero_stage 0's bit for bit (the all-gather moves each owner's step)`);
  } else {
    console.log(`nccl: zero_stage 1 vs 0 weights NOT RUN: a ${ranks}-rank run above failed`);
  }
  if (!passed.has('z2')) return console.log(`nccl: resume of the ${ranks}-rank ZeRO checkpoint NOT RUN: its run failed`);
  // The stage 2 run's checkpoint-3 holds N ranks' optimizer shard files: one process resumes it (zero_stage 0), in a folder of its own.
  mkdirSync(join(work, 'z2-on-1'));
  cpSync(join(work, 'z2', 'checkpoint-3'), join(work, 'z2-on-1', 'checkpoint-3'), { recursive: true });
  const resumed = await run(process.execPath, [cli, 'sft', ...recipe('z2-on-1', 2 * ranks, { zero_stage: 0, resume_from_checkpoint: true })], env);
  if (resumed.code !== 0) return report(false, `1 process resuming the ${ranks}-rank ZeRO checkpoint failed:\n${resumed.output.slice(-2000)}`);
  const tail = (entries: Record<string, number>[]) => entries.filter((e) => e.step > 3);
  const worst = worstDifference(tail(history('one')), tail(history('z2-on-1')));
  report(tail(history('z2-on-1')).length === 2 && worst <= 1e-3, `1 process resuming checkpoint-3 of ${ranks} ZeRO stage 2 GPU ranks (shard files) == the uninterrupted run, steps 4-5: largest relative difference ${worst.toExponential(2)} (tolerance 1e-3)`);
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
