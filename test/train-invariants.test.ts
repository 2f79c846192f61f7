/**
 * Trainer invariants (the idea of TRL's tests/invariant): gradient accumulation does not change
 * the result, a run killed with SIGKILL and resumed from its last checkpoint continues to the
 * same losses and weights as one never interrupted, and an AbortSignal (the library) or SIGINT
 * (the CLI) stops a run cleanly with a checkpoint.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';

import { ultrachatRows } from '../lib/demo/teacher.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { writeRows } from '../lib/data/writers.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadNative, packageRoot } from '../lib/native.js';
import { sft } from '../lib/train/api.js';

const work = mkdtempSync(join(tmpdir(), 'zn-invariants-'));
const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');

type Entry = Record<string, number>;

function history(dir: string): Entry[] {
  return (JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')).log_history as Entry[]).filter((e) => 'loss' in e);
}

async function weights(dir: string): Promise<Map<string, Float32Array>> {
  const addon = loadNative('cpu');
  const path = join(dir, 'model.safetensors');
  const out = new Map<string, Float32Array>();
  for (const tensor of addon.readSafetensorsHeader({ path }).tensors) out.set(tensor.name, await addon.readTensor({ path, name: tensor.name, dtype: 'f32' }));
  return out;
}

const base = () => ({
  model_name_or_path: join(work, 'model'),
  dataset_name: join(work, 'chats.jsonl'),
  learning_rate: 3e-3,
  lr_scheduler_type: 'linear',
  warmup_steps: 2,
  max_steps: 6,
  logging_steps: 1,
  use_cpu: true,
  bf16: false,
  gradient_checkpointing: false,
  max_length: 64,
  seed: 7,
});

describe('trainer invariants', () => {
  before(async () => {
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: 32000,
      hidden_size: 32,
      intermediate_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      max_position_embeddings: 128,
      sliding_window: 16,
      tie_word_embeddings: true,
      bos_token_id: 1,
      eos_token_id: 2,
    });
    await writeRandomModel(join(work, 'model'), config, { seed: 3, tokenizerDir: join(work, 'tokenizer') });
    await writeRows(join(work, 'chats.jsonl'), ultrachatRows(64, 11));
  });

  it('batch 8 x accumulation 1 equals batch 2 x accumulation 4', async () => {
    await sft({ ...base(), output_dir: join(work, 'ga1'), per_device_train_batch_size: 8, gradient_accumulation_steps: 1, save_strategy: 'no' }, { progress: 'silent' });
    await sft({ ...base(), output_dir: join(work, 'ga4'), per_device_train_batch_size: 2, gradient_accumulation_steps: 4, save_strategy: 'no' }, { progress: 'silent' });
    const a = history(join(work, 'ga1'));
    const b = history(join(work, 'ga4'));
    assert.equal(a.length, 6);
    assert.equal(b.length, 6);
    for (let i = 0; i < a.length; i++) {
      assert.ok(Math.abs(a[i].loss - b[i].loss) <= 1e-5 * a[i].loss, `step ${i + 1} loss ${a[i].loss} vs ${b[i].loss}`);
      assert.ok(Math.abs(a[i].grad_norm - b[i].grad_norm) <= 1e-4 * a[i].grad_norm, `step ${i + 1} grad_norm`);
    }
    const wa = await weights(join(work, 'ga1'));
    const wb = await weights(join(work, 'ga4'));
    for (const [name, x] of wa) {
      const y = wb.get(name)!;
      let diff = 0;
      let norm = 0;
      x.forEach((v, i) => {
        diff += (v - y[i]) ** 2;
        norm += v * v;
      });
      assert.ok(Math.sqrt(diff) <= 1e-5 * Math.sqrt(norm), `${name}`);
    }
  });

  it('a run killed with SIGKILL and resumed matches the uninterrupted run bit for bit', async () => {
    const recipe = { ...base(), per_device_train_batch_size: 4, save_strategy: 'steps', save_steps: 2 };
    await sft({ ...recipe, output_dir: join(work, 'straight') }, { progress: 'silent' });

    const killedDir = join(work, 'killed');
    const flags = Object.entries({ ...recipe, output_dir: killedDir }).flatMap(([k, v]) => [`--${k}`, String(v)]);
    const child = spawn(process.execPath, [cli, 'sft', ...flags], { stdio: 'ignore' });
    // Kill it as soon as the second checkpoint exists: mid-way through step 5.
    await new Promise<void>((resolve, reject) => {
      const timer = setInterval(() => {
        if (existsSync(join(killedDir, 'checkpoint-4'))) {
          child.kill('SIGKILL');
          clearInterval(timer);
          resolve();
        }
      }, 5);
      child.on('exit', () => {
        clearInterval(timer);
        if (!existsSync(join(killedDir, 'checkpoint-4'))) reject(new Error('the run ended before checkpoint-4'));
        else resolve();
      });
    });
    await new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(null) : child.on('exit', resolve)));
    assert.equal(child.signalCode, 'SIGKILL', 'the first run was killed, not finished');
    assert.ok(!existsSync(join(killedDir, 'model.safetensors')), 'a killed run leaves no final model');

    await sft({ ...recipe, output_dir: killedDir, resume_from_checkpoint: true }, { progress: 'silent' });
    const straight = history(join(work, 'straight'));
    const resumed = history(killedDir);
    assert.deepEqual(
      resumed.map((e) => [e.step, e.loss, e.grad_norm, e.learning_rate]),
      straight.map((e) => [e.step, e.loss, e.grad_norm, e.learning_rate]),
    );
    const a = await weights(join(work, 'straight'));
    const b = await weights(killedDir);
    for (const [name, x] of a) assert.deepEqual(b.get(name), x, name);
  });

  it('an AbortSignal stops the run after the current step and writes a checkpoint; the library installs no signal handlers', async () => {
    const handlers = () => [process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')];
    const before = handlers();
    let during: number[] = [];
    const controller = new AbortController();
    const run = sft({ ...base(), output_dir: join(work, 'aborted'), per_device_train_batch_size: 4, save_strategy: 'no' }, { signal: controller.signal, progress: 'silent' });
    run.on('log', (entry) => {
      during = handlers();
      if (entry.step === 2) controller.abort();
    });
    const [result] = await run;
    assert.equal(result.stoppedEarly, true);
    assert.equal(result.globalStep, 2);
    assert.ok(existsSync(join(work, 'aborted', 'checkpoint-2', 'optimizer.safetensors')));
    assert.ok(!existsSync(join(work, 'aborted', 'model.safetensors')), 'a stopped run writes no final model');
    assert.deepEqual(during, before, 'SIGINT/SIGTERM listeners while training');
  });

  it('a signal aborted before the first step stops the run without a checkpoint', async () => {
    const [result] = await sft({ ...base(), output_dir: join(work, 'aborted-early') }, { signal: AbortSignal.abort(), progress: 'silent' });
    assert.equal(result.stoppedEarly, true);
    assert.equal(result.globalStep, 0);
    assert.ok(!existsSync(join(work, 'aborted-early', 'checkpoint-0')));
  });

  for (const isolate of [false, true]) {
    it(`the CLI stops on SIGINT after the current step, with a checkpoint, and exits 130${isolate ? ' (--isolate)' : ''}`, async () => {
      const dir = join(work, isolate ? 'sigint-isolated' : 'sigint');
      const flags = Object.entries({ ...base(), max_steps: 200, save_strategy: 'no', per_device_train_batch_size: 2, output_dir: dir }).flatMap(([k, v]) => [`--${k}`, String(v)]);
      const child = spawn(process.execPath, [cli, 'sft', ...flags, ...(isolate ? ['--isolate'] : [])], { stdio: 'ignore' });
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      const metrics = join(dir, 'metrics.jsonl');
      await new Promise<void>((resolve) => {
        const timer = setInterval(() => {
          if (existsSync(metrics) && readFileSync(metrics, 'utf8').split('\n').length > 2) {
            clearInterval(timer);
            child.kill('SIGINT');
            resolve();
          }
        }, 5);
        void exited.then(() => {
          clearInterval(timer);
          resolve();
        });
      });
      assert.equal(await exited, 130);
      const checkpoints = readdirSync(dir).filter((name) => name.startsWith('checkpoint-'));
      assert.equal(checkpoints.length, 1, checkpoints.join(', '));
      const step = Number(checkpoints[0].slice('checkpoint-'.length));
      assert.ok(step >= 2 && step < 200, `stopped at step ${step}`);
      assert.ok(existsSync(join(dir, checkpoints[0], 'optimizer.safetensors')));
      assert.ok(!existsSync(join(dir, 'model.safetensors')), 'a stopped run writes no final model');
    });
  }
});
