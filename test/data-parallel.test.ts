/**
 * Data parallel on CPU ranks over MPI (issue 23's invariance checks, ZeRO stage 0): 2 ranks x
 * micro-batch b under `mpirun` take the same steps as 1 process x micro-batch 2b (the reference:
 * the single-process trainer, whose accumulation invariants test/train-invariants.test.ts checks)
 * for SFT (untied embeddings: the dense embedding gradient), DPO (with the evaluation shared by the
 * ranks: 4 held-out batches of 1 pair, 2 on each) and
 * LoRA; a 2-rank checkpoint resumes on 1 process to the single-process trajectory; a killed rank
 * ends the job naming it, and a rank that never reaches a collective ends it at ddp_timeout.
 * ZeRO stages 1 and 2 (sharded optimizer state, lib/train/zero.ts) take the same steps for SFT
 * and DPO; stage 1's weights are stage 0's bit for bit; a ZeRO checkpoint (one optimizer shard
 * file per rank) resumes on 1 process and on 2 ranks, and a 1-process checkpoint on 2 ZeRO ranks.
 * The MPI tests skip with a message where mpirun or the MPI addon is missing.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';

import { binarize } from '../lib/aif/binarize.js';
import { writePreferences } from '../lib/aif/preference-files.js';
import { ultrafeedbackRows } from '../lib/demo/teacher.js';
import { launchEnvironment, type Ranks, SINGLE_RANK } from '../lib/model/ranks.js';
import { packageRoot } from '../lib/native.js';
import { dpo, sft } from '../lib/train/api.js';
import { rankShare, sumAcrossRanks } from '../lib/train/loop.js';
import { optimizerFiles, optimizerShardFile } from '../lib/train/checkpoint.js';
import { effectiveZeroStage, shardOption, zeroStage } from '../lib/train/zero.js';
import {
  assertClose, assertIdenticalWeights, assertSameTrajectory, assertSameWeights, descendants, environOf, flags, history, mpiSkipReason, tensors, writeSftFixtures,
} from './support/ranks.js';

const root = packageRoot();
const cli = join(root, 'dist', 'lib', 'cli', 'main.js');

interface Finished {
  code: number | null;
  output: string;
  seconds: number;
}

/** `mpirun -n N node <args>`; the root and oversubscription flags are the test machine's (2 cores, root). */
function mpirun(ranks: number, args: string[], options: { timeoutMs?: number; onStart?: (pid: number) => void } = {}): Promise<Finished> {
  const started = Date.now();
  const env: NodeJS.ProcessEnv = { ...process.env, ZN_NUM_THREADS: '1' };
  for (const name of Object.keys(env)) if (/^(OMPI_|PMIX_|PMI_)/.test(name)) delete env[name];
  const child = spawn('mpirun', ['--allow-run-as-root', '--oversubscribe', '-n', String(ranks), process.execPath, ...args], { env });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  options.onStart?.(child.pid!);
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output, seconds: (Date.now() - started) / 1000 });
    }),
  );
}

describe('data-parallel bookkeeping (no MPI)', () => {
  it('reads the rank, world size and local rank as mpirun and torchrun set them', () => {
    assert.deepEqual(launchEnvironment({}), { rank: 0, worldSize: 1, localRank: 0, launcher: 'none' });
    assert.deepEqual(launchEnvironment({ OMPI_COMM_WORLD_RANK: '3', OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_LOCAL_RANK: '1' }), {
      rank: 3, worldSize: 4, localRank: 1, launcher: 'mpirun',
    });
    assert.deepEqual(launchEnvironment({ PMI_RANK: '1', PMI_SIZE: '2' }), { rank: 1, worldSize: 2, localRank: 1, launcher: 'mpirun' });
    assert.deepEqual(launchEnvironment({ RANK: '5', WORLD_SIZE: '8', LOCAL_RANK: '1' }), { rank: 5, worldSize: 8, localRank: 1, launcher: 'torchrun' });
    assert.throws(() => launchEnvironment({ RANK: '2', WORLD_SIZE: '2' }), /RANK=2 is not below WORLD_SIZE=2/);
    assert.throws(() => launchEnvironment({ OMPI_COMM_WORLD_SIZE: 'two' }), /OMPI_COMM_WORLD_SIZE=two: expected an integer >= 1/);
  });

  it("gives rank r rows r, r + N, ... of each micro-batch, and sums the ranks' step results", async () => {
    const micro = [[0, 1, 2, 3, 4], [5, 6]];
    assert.deepEqual(rankShare(micro, { rank: 0, size: 2 }), [[0, 2, 4], [5]]);
    assert.deepEqual(rankShare(micro, { rank: 1, size: 2 }), [[1, 3], [6]]);
    assert.deepEqual(rankShare(micro, { rank: 2, size: 3 }), [[2], []]);
    assert.equal(rankShare(micro, SINGLE_RANK), micro);
    // Two ranks' parts, summed by a stand-in for MPI's all-reduce.
    const other = Float64Array.from([0.25, 40, 0.5, 1, 2, 2]);
    const twoRanks = { ...SINGLE_RANK, size: 2, allReduceSum: async ([values]: Float64Array[]) => values.forEach((v, i) => (values[i] = v + other[i])) } as unknown as Ranks;
    const summed = await sumAcrossRanks({ loss: 0.5, tokens: 60, metrics: [{ b: 1, a: 2 }, { b: 3, a: 4 }] }, twoRanks);
    assert.deepEqual(summed, { loss: 0.75, tokens: 100, metrics: [{ a: 2.5, b: 2 }, { a: 6, b: 5 }] });
  });

  it('zero_stage: 0, 1 or 2, nothing to shard on one rank; a ZeRO checkpoint names a missing shard file', () => {
    assert.equal(zeroStage(2), 2);
    assert.equal(zeroStage(0), 0);
    assert.throws(() => zeroStage(3), /zero_stage must be 0, 1 or 2, got 3/);
    assert.throws(() => zeroStage(-1), /zero_stage must be 0, 1 or 2, got -1/);
    assert.equal(effectiveZeroStage(2, SINGLE_RANK), 0);
    assert.deepEqual(shardOption(1, SINGLE_RANK), {});
    assert.deepEqual(shardOption(1, { rank: 1, size: 4 }), { shard: { rank: 1, count: 4 } });
    assert.deepEqual(shardOption(0, { rank: 1, size: 4 }), {});
    const dir = mkdtempSync(join(tmpdir(), 'zn-zero-files-'));
    assert.throws(() => optimizerFiles(dir), /no optimizer state/);
    for (const r of [0, 2]) writeFileSync(join(dir, optimizerShardFile(r, 3)), '');
    assert.equal(optimizerShardFile(2, 3), 'optimizer-rank-00002-of-00003.safetensors');
    assert.throws(() => optimizerFiles(dir), /lacks the optimizer shard file of rank 1 \(of 3\): optimizer-rank-00001-of-00003.safetensors/);
    writeFileSync(join(dir, optimizerShardFile(1, 3)), '');
    assert.deepEqual(optimizerFiles(dir), [0, 1, 2].map((r) => join(dir, optimizerShardFile(r, 3))));
    writeFileSync(join(dir, optimizerShardFile(0, 2)), '');
    assert.throws(() => optimizerFiles(dir), /optimizer shard files of different rank counts/);
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses, before loading anything, what ranks cannot do: torchrun variables, --isolate and the demo under mpirun', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'zn-dp-refusals-'));
    const run = (env: Record<string, string>, args: string[]) => {
      const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(OMPI_|PMI_|RANK$|WORLD_SIZE$|LOCAL_RANK$)/.test(k)));
      return spawnSync(process.execPath, [cli, ...args], { cwd, env: { ...clean, ...env }, encoding: 'utf8' });
    };
    const stage = ['sft', '--model_name_or_path', 'model', '--dataset_name', 'chats.jsonl', '--output_dir', 'out'];
    const torchrun = run({ RANK: '0', WORLD_SIZE: '2' }, stage);
    assert.equal(torchrun.status, 2, torchrun.stderr);
    assert.match(torchrun.stderr, /WORLD_SIZE=2 \(torchrun's variables\), but ranks here talk over MPI: start them with `mpirun -n 2/);
    const mpi = { OMPI_COMM_WORLD_RANK: '0', OMPI_COMM_WORLD_SIZE: '2' };
    const isolated = run(mpi, [...stage, '--isolate']);
    assert.equal(isolated.status, 2, isolated.stderr);
    assert.match(isolated.stderr, /--isolate\) runs the job in a child process, which ranks started by mpirun cannot do/);
    const demo = run(mpi, ['train']);
    assert.equal(demo.status, 2, demo.stderr);
    assert.match(demo.stderr, /the built-in demo runs on one process/);
    assert.deepEqual(readdirSync(cwd), [], 'nothing written');
    rmSync(cwd, { recursive: true, force: true });
  });
});

const skip = mpiSkipReason();

describe('data parallel on 2 MPI ranks', { skip: skip ?? false }, () => {
  const work = mkdtempSync(join(tmpdir(), 'zn-data-parallel-'));
  const common = {
    use_cpu: true,
    bf16: false,
    gradient_checkpointing: false,
    max_length: 64,
    max_steps: 5,
    logging_steps: 1,
    learning_rate: 3e-3,
    seed: 7,
    gradient_accumulation_steps: 2,
  };
  const chats = { model_name_or_path: join(work, 'model'), dataset_name: join(work, 'chats.jsonl') };
  const prefs = { model_name_or_path: join(work, 'model'), dataset_name: join(work, 'prefs'), dataset_train_split: 'train_prefs', dataset_test_split: 'test_prefs' };

  before(async () => {
    // Untied embeddings: the ranks sum the embedding's gradient as a dense buffer.
    await writeSftFixtures(work);
    const { pairs } = await binarize(ultrafeedbackRows(40, 5), { seed: 3 });
    await writePreferences(join(work, 'prefs'), pairs, { testSize: 4, seed: 3 });
  });

  after(() => rmSync(work, { recursive: true, force: true }));

  // The runs more than one test compares with, each made once.
  const made = new Map<string, Promise<Finished | null>>();
  const once = (name: string, make: () => Promise<Finished | null>): Promise<Finished | null> => {
    if (!made.has(name)) made.set(name, make());
    return made.get(name)!;
  };
  const sftRecipe = { ...common, ...chats, save_strategy: 'steps', save_steps: 2 };
  const sftOneProcess = () => once('sft-1', async () => {
    await sft({ ...sftRecipe, output_dir: join(work, 'sft-1'), per_device_train_batch_size: 4 }, { progress: 'silent' });
    return null;
  });
  const sftTwoRanks = () => once('sft-2', () => mpirun(2, [cli, 'sft', ...flags({ ...sftRecipe, output_dir: join(work, 'sft-2'), per_device_train_batch_size: 2 })]));
  const dpoRecipe = { ...common, ...prefs, save_strategy: 'no', eval_strategy: 'steps', eval_steps: 5, per_device_eval_batch_size: 1 };
  const dpoMetrics = ['loss', 'grad_norm', 'rewards/chosen', 'rewards/rejected', 'rewards/margins', 'rewards/accuracies', 'logps/chosen', 'eval_loss', 'eval_rewards/margins', 'eval_rewards/accuracies', 'eval_logps/rejected'];
  const dpoOneProcess = () => once('dpo-1', async () => {
    await dpo({ ...dpoRecipe, output_dir: join(work, 'dpo-1'), per_device_train_batch_size: 4 }, { progress: 'silent' });
    return null;
  });

  it('sft: 2 ranks x micro-batch 2 == 1 process x micro-batch 4 (losses, grad norms, weights after 5 steps); its checkpoint resumes on 1 process', async () => {
    const recipe = sftRecipe;
    await sftOneProcess();
    const two = (await sftTwoRanks())!;
    assert.equal(two.code, 0, two.output);
    assertSameTrajectory(history(join(work, 'sft-2')), history(join(work, 'sft-1')), ['loss', 'grad_norm', 'learning_rate']);
    await assertSameWeights(join(work, 'sft-2', 'model.safetensors'), join(work, 'sft-1', 'model.safetensors'));
    // Rank 0 alone wrote: one set of checkpoints, no leftovers, one memory plan line.
    assert.deepEqual(readdirSync(join(work, 'sft-2')).filter((name) => name.includes('checkpoint')).sort(), ['checkpoint-2', 'checkpoint-4']);
    assert.equal(two.output.match(/memory plan \(policy/g)?.length, 1, two.output);
    assert.match(two.output, /data parallel: 2 ranks over MPI/);

    // The 2-rank checkpoint-2 on one process with micro-batch 4: the single-process trajectory.
    const resumed = join(work, 'sft-resumed');
    mkdirSync(resumed);
    cpSync(join(work, 'sft-2', 'checkpoint-2'), join(resumed, 'checkpoint-2'), { recursive: true });
    await sft({ ...recipe, output_dir: resumed, per_device_train_batch_size: 4, resume_from_checkpoint: true }, { progress: 'silent' });
    assertSameTrajectory(history(resumed), history(join(work, 'sft-1')), ['loss', 'grad_norm', 'learning_rate']);
    await assertSameWeights(join(resumed, 'model.safetensors'), join(work, 'sft-1', 'model.safetensors'));
    // With another micro-batch in all, the cursor would point elsewhere: refused, naming both.
    const other = join(work, 'sft-other');
    mkdirSync(other);
    cpSync(join(work, 'sft-2', 'checkpoint-2'), join(other, 'checkpoint-2'), { recursive: true });
    await assert.rejects(
      sft({ ...recipe, output_dir: other, per_device_train_batch_size: 2, resume_from_checkpoint: true }, { progress: 'silent' }).result,
      /micro-batches of 4 rows in all .* this run takes 2/,
    );
  });

  it('dpo: 2 ranks x micro-batch 2 == 1 process x micro-batch 4, the ranks sharing the evaluation', async () => {
    const recipe = dpoRecipe;
    await dpoOneProcess();
    const two = await mpirun(2, [cli, 'dpo', ...flags({ ...recipe, output_dir: join(work, 'dpo-2'), per_device_train_batch_size: 2 })]);
    assert.equal(two.code, 0, two.output);
    const metrics = dpoMetrics;
    assertSameTrajectory(history(join(work, 'dpo-2')), history(join(work, 'dpo-1')), metrics);
    assert.ok(history(join(work, 'dpo-2')).some((e) => 'eval_loss' in e), 'evaluated at step 5');
    await assertSameWeights(join(work, 'dpo-2', 'model.safetensors'), join(work, 'dpo-1', 'model.safetensors'));
  });

  it('sft, zero_stage 1 and 2: 2 ranks == 1 process; stage 1 weights are stage 0\'s bit for bit; ZeRO checkpoints resume on 1 process and 2 ranks, a 1-process one on 2 ZeRO ranks', async () => {
    await sftOneProcess();
    const baseline = join(work, 'sft-1');
    const metrics = ['loss', 'grad_norm', 'learning_rate'];
    const rankRun = (dir: string, extra: Record<string, unknown>) =>
      mpirun(2, [cli, 'sft', ...flags({ ...sftRecipe, output_dir: join(work, dir), per_device_train_batch_size: 2, ...extra })]);

    const stage1 = await rankRun('sft-z1', { zero_stage: 1 });
    assert.equal(stage1.code, 0, stage1.output);
    assertSameTrajectory(history(join(work, 'sft-z1')), history(baseline), metrics);
    await assertSameWeights(join(work, 'sft-z1', 'model.safetensors'), join(baseline, 'model.safetensors'));
    const stage0 = (await sftTwoRanks())!;
    assert.equal(stage0.code, 0, stage0.output);
    await assertIdenticalWeights(join(work, 'sft-z1', 'model.safetensors'), join(work, 'sft-2', 'model.safetensors'));
    // The plan counts this rank's half of the moments.
    assert.match(stage1.output, /memory plan \(policy, sft, f32, \d+ tokens per micro-batch, per rank \(2 ranks, zero_stage 1\)\)/);
    // One optimizer shard file per rank, no whole one.
    const checkpoint = join(work, 'sft-z1', 'checkpoint-2');
    assert.deepEqual(readdirSync(checkpoint).filter((n) => n.startsWith('optimizer')).sort(), [
      'optimizer-rank-00000-of-00002.safetensors',
      'optimizer-rank-00001-of-00002.safetensors',
    ]);

    const stage2 = await rankRun('sft-z2', { zero_stage: 2, save_strategy: 'no' });
    assert.equal(stage2.code, 0, stage2.output);
    assertSameTrajectory(history(join(work, 'sft-z2')), history(baseline), metrics);
    await assertSameWeights(join(work, 'sft-z2', 'model.safetensors'), join(baseline, 'model.safetensors'));

    // The 2-rank ZeRO checkpoint on one process (zero_stage 0), then on 2 ranks at stage 2.
    const resumeFrom = (from: string, dir: string): string => {
      mkdirSync(join(work, dir));
      cpSync(from, join(work, dir, 'checkpoint-2'), { recursive: true });
      return join(work, dir);
    };
    const onOne = resumeFrom(checkpoint, 'sft-z1-on-1');
    await sft({ ...sftRecipe, output_dir: onOne, per_device_train_batch_size: 4, resume_from_checkpoint: true }, { progress: 'silent' });
    assertSameTrajectory(history(onOne), history(baseline), metrics);
    await assertSameWeights(join(onOne, 'model.safetensors'), join(baseline, 'model.safetensors'));
    resumeFrom(checkpoint, 'sft-z1-on-2');
    const onTwo = await rankRun('sft-z1-on-2', { zero_stage: 2, resume_from_checkpoint: true });
    assert.equal(onTwo.code, 0, onTwo.output);
    assertSameTrajectory(history(join(work, 'sft-z1-on-2')), history(baseline), metrics);
    await assertSameWeights(join(work, 'sft-z1-on-2', 'model.safetensors'), join(baseline, 'model.safetensors'));

    // One process's checkpoint (optimizer.safetensors) on 2 ranks at stage 1.
    resumeFrom(join(baseline, 'checkpoint-2'), 'sft-1-on-z1');
    const fromOne = await rankRun('sft-1-on-z1', { zero_stage: 1, resume_from_checkpoint: true });
    assert.equal(fromOne.code, 0, fromOne.output);
    assertSameTrajectory(history(join(work, 'sft-1-on-z1')), history(baseline), metrics);
    await assertSameWeights(join(work, 'sft-1-on-z1', 'model.safetensors'), join(baseline, 'model.safetensors'));
  });

  it('dpo, zero_stage 1 and 2: 2 ranks == 1 process (losses, rewards, grad norms, evaluation, weights after 5 steps)', async () => {
    await dpoOneProcess();
    for (const stage of [1, 2]) {
      const dir = join(work, `dpo-z${stage}`);
      const run = await mpirun(2, [cli, 'dpo', ...flags({ ...dpoRecipe, output_dir: dir, per_device_train_batch_size: 2, zero_stage: stage })]);
      assert.equal(run.code, 0, run.output);
      assertSameTrajectory(history(dir), history(join(work, 'dpo-1')), dpoMetrics);
      await assertSameWeights(join(dir, 'model.safetensors'), join(work, 'dpo-1', 'model.safetensors'));
    }
  });

  it('bf16, zero_stage 1 and 2: the bf16 weights all-gathered, stage 2 == stage 1 bit for bit (no clipping), both near 1 process', async () => {
    // Without clipping the step does not see the norm, and two ranks' sums are the same either way.
    const recipe = { ...sftRecipe, bf16: true, max_steps: 3, max_grad_norm: 0, save_strategy: 'no' };
    await sft({ ...recipe, output_dir: join(work, 'bf16-1'), per_device_train_batch_size: 4 }, { progress: 'silent' });
    for (const stage of [1, 2]) {
      const run = await mpirun(2, [cli, 'sft', ...flags({ ...recipe, output_dir: join(work, `bf16-z${stage}`), per_device_train_batch_size: 2, zero_stage: stage })]);
      assert.equal(run.code, 0, run.output);
      assert.match(run.output, new RegExp(`memory plan \\(policy, sft, bf16, .*zero_stage ${stage}\\)`));
    }
    await assertIdenticalWeights(join(work, 'bf16-z2', 'model.safetensors'), join(work, 'bf16-z1', 'model.safetensors'));
    // bf16 weights: a last-bit rounding apart where the summed gradients differ in rounding.
    const ones = await tensors(join(work, 'bf16-1', 'model.safetensors'));
    const ranks = await tensors(join(work, 'bf16-z1', 'model.safetensors'));
    for (const [name, x] of ones) {
      const y = ranks.get(name)!;
      let diff = 0;
      let norm = 0;
      x.forEach((v, i) => ((diff += (v - y[i]) ** 2), (norm += v * v)));
      assert.ok(Math.sqrt(diff) <= 1e-2 * Math.sqrt(norm), `${name}: relative difference ${Math.sqrt(diff / norm)}`);
    }
    const losses = (dir: string) => history(join(work, dir)).filter((e) => 'loss' in e).map((e) => e.loss);
    losses('bf16-z1').forEach((loss, i) => assertClose(loss, losses('bf16-1')[i], 1e-2, `bf16 step ${i + 1} loss`));
  });

  it('lora sft: only the adapters are reduced; 2 ranks == 1 process', async () => {
    const recipe = { ...common, ...chats, save_strategy: 'no', use_peft: true, lora_r: 4, lora_alpha: 8, lora_dropout: 0, lora_target_modules: 'all-linear', learning_rate: 1e-2 };
    await sft({ ...recipe, output_dir: join(work, 'lora-1'), per_device_train_batch_size: 4 }, { progress: 'silent' });
    const two = await mpirun(2, [cli, 'sft', ...flags({ ...recipe, output_dir: join(work, 'lora-2'), per_device_train_batch_size: 2 })]);
    assert.equal(two.code, 0, two.output);
    assertSameTrajectory(history(join(work, 'lora-2')), history(join(work, 'lora-1')), ['loss', 'grad_norm']);
    await assertSameWeights(join(work, 'lora-2', 'adapter_model.safetensors'), join(work, 'lora-1', 'adapter_model.safetensors'));
  });

  it('a killed rank ends the job with a message naming it, no hang', async () => {
    const dir = join(work, 'killed');
    const run = mpirun(2, [cli, 'sft', ...flags({ ...common, ...chats, max_steps: 500, save_strategy: 'no', per_device_train_batch_size: 2, output_dir: dir })], {
      onStart: (pid) => {
        const timer = setInterval(() => {
          if (!existsSync(join(dir, 'metrics.jsonl')) || readFileSync(join(dir, 'metrics.jsonl'), 'utf8').split('\n').length < 3) return;
          const rank1 = descendants(pid).find((child) => environOf(child).includes('OMPI_COMM_WORLD_RANK=1'));
          if (rank1 === undefined) return;
          clearInterval(timer);
          process.kill(rank1, 'SIGKILL');
        }, 20);
        timer.unref();
      },
    });
    const finished = await run;
    assert.notEqual(finished.code, 0, finished.output);
    assert.match(finished.output, /rank 1 .*(exited on signal 9|Killed)/s);
    assert.ok(!existsSync(join(dir, 'model.safetensors')), 'no final model from a killed job');
  });

  it('a rank that never reaches a collective ends the job at ddp_timeout, naming what it waited for', async () => {
    const script = join(work, 'stuck-rank.mjs');
    writeFileSync(
      script,
      `import { openRanks } from ${JSON.stringify(pathToFileURL(join(root, 'dist', 'lib', 'model', 'ranks.js')).href)};\n` +
        'const ranks = openRanks(2);\n' +
        'if (ranks.rank === 1) setTimeout(() => {}, 60_000);\n' +
        "else await ranks.barrier('the test barrier');\n",
    );
    const finished = await mpirun(2, [script], { timeoutMs: 50_000 });
    assert.notEqual(finished.code, 0, finished.output);
    assert.match(finished.output, /rank 0 of 2: the test barrier did not complete within 2 s \(ddp_timeout\)/);
    assert.ok(finished.seconds < 30, `ended after ${finished.seconds} s`);
  });
});
