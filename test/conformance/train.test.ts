/**
 * Trainer conformance with TRL 1.13: trl_train.py trains a tiny random Mistral with TRL's
 * SFTTrainer and DPOTrainer (5 full-batch steps, constant lr 1e-3, AdamW with weight decay,
 * clipping at 1.0, f32 on CPU); zephyr-native trains the same model on the same data with the
 * same recipe. Per-step loss, grad_norm, rewards/* and logps/* agree to 1e-4 relative, and so
 * do the final weights.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { loadNative, packageRoot } from '../../lib/native.js';
import { dpo, sft } from '../../lib/train/api.js';
import { referencePython, runPython } from '../support/python.js';

const here = dirname(fileURLToPath(import.meta.url));
const script = join(packageRoot(), 'test', 'conformance', 'trl_train.py');
const { python, skipReason } = referencePython();
void here;

type Entry = Record<string, number>;

function relClose(actual: number, expected: number, tol: number): boolean {
  return Math.abs(actual - expected) <= tol * Math.max(Math.abs(expected), 1e-6);
}

function compareLogs(ours: Entry[], theirs: Entry[], keys: string[]): void {
  const steps = (log: Entry[]) => log.filter((e) => 'loss' in e && 'step' in e);
  const a = steps(ours);
  const b = steps(theirs);
  assert.equal(a.length, b.length, 'logged steps');
  for (let i = 0; i < a.length; i++) {
    for (const key of keys) {
      assert.ok(key in a[i] && key in b[i], `step ${i + 1}: ${key} missing`);
      // rewards are exactly 0 at the first step (policy == reference) on both sides
      if (b[i][key] === 0) assert.equal(a[i][key], 0, `step ${i + 1} ${key}`);
      else assert.ok(relClose(a[i][key], b[i][key], 1e-4), `step ${i + 1} ${key}: ours ${a[i][key]} vs TRL ${b[i][key]}`);
    }
  }
}

async function compareWeights(ours: string, theirs: string): Promise<void> {
  const addon = loadNative('cpu');
  const header = addon.readSafetensorsHeader({ path: join(theirs, 'model.safetensors') });
  assert.ok(header.tensors.length > 0);
  for (const tensor of header.tensors) {
    const expected = await addon.readTensor({ path: join(theirs, 'model.safetensors'), name: tensor.name, dtype: 'f32' });
    const actual = await addon.readTensor({ path: join(ours, 'model.safetensors'), name: tensor.name, dtype: 'f32' });
    let diff = 0;
    let norm = 0;
    for (let i = 0; i < expected.length; i++) {
      diff += (actual[i] - expected[i]) ** 2;
      norm += expected[i] ** 2;
    }
    assert.ok(Math.sqrt(diff) <= 1e-4 * Math.sqrt(norm), `${tensor.name}: relative error ${Math.sqrt(diff / norm)}`);
  }
}

const recipe = (work: string, output: string) => ({
  model_name_or_path: join(work, 'model'),
  output_dir: join(work, output),
  per_device_train_batch_size: 6,
  gradient_accumulation_steps: 1,
  max_steps: 5,
  learning_rate: 1e-3,
  lr_scheduler_type: 'constant',
  weight_decay: 0.01,
  max_grad_norm: 1.0,
  logging_steps: 1,
  save_strategy: 'no',
  use_cpu: true,
  bf16: false,
  gradient_checkpointing: false,
  seed: 42,
  max_length: 64,
});

describe('trainers match TRL 1.13 step for step', { skip: skipReason ?? false }, () => {
  const work = mkdtempSync(join(tmpdir(), 'zn-trl-'));
  before(() => {
    runPython(python!, script, [work], 600_000);
  });

  it('SFT: loss, grad_norm and final weights', async () => {
    await sft({ ...recipe(work, 'zn-sft'), dataset_name: join(work, 'sft.jsonl') }, { progress: 'silent' });
    const ours = JSON.parse(readFileSync(join(work, 'zn-sft', 'trainer_state.json'), 'utf8')).log_history as Entry[];
    const theirs = JSON.parse(readFileSync(join(work, 'trl-sft', 'log_history.json'), 'utf8')) as Entry[];
    compareLogs(ours, theirs, ['loss', 'grad_norm', 'learning_rate', 'epoch']);
    await compareWeights(join(work, 'zn-sft'), join(work, 'trl-sft'));
  });

  it('DPO: loss, grad_norm, rewards/*, logps/* and final weights', async () => {
    await dpo({ ...recipe(work, 'zn-dpo'), dataset_name: join(work, 'dpo.jsonl'), beta: 0.1 }, { progress: 'silent' });
    const ours = JSON.parse(readFileSync(join(work, 'zn-dpo', 'trainer_state.json'), 'utf8')).log_history as Entry[];
    const theirs = JSON.parse(readFileSync(join(work, 'trl-dpo', 'log_history.json'), 'utf8')) as Entry[];
    compareLogs(ours, theirs, [
      'loss',
      'grad_norm',
      'rewards/chosen',
      'rewards/rejected',
      'rewards/accuracies',
      'rewards/margins',
      'logps/chosen',
      'logps/rejected',
    ]);
    await compareWeights(join(work, 'zn-dpo'), join(work, 'trl-dpo'));
  });
});
