/**
 * Trainer conformance with TRL 1.13: trl_train.py trains a tiny random Mistral with TRL's
 * SFTTrainer and DPOTrainer (5 full-batch steps, constant lr 1e-3, AdamW with weight decay,
 * clipping at 1.0, f32 on CPU); zephyr-native trains the same model on the same data with the
 * same recipe. Per-step loss, grad_norm, rewards/* and logps/* agree to 1e-4 relative, and so
 * do the final weights and the evaluation after the last step (TRL weights eval_loss's batches by
 * their rows: SFT's batches of 1 row give the mean of the rows' token means, DPO's of 4 + 2 pairs
 * a short last batch; DPO's other metrics are means of batch means); and eval_on_start's
 * eval_loss of a sharper model (initializer_range 1: the rows' losses differ widely, so the
 * weighting shows) is TRL's `evaluate()`: one row a batch, and with packing batches of 4 + 2
 * packed rows (padding-free, still weighed by their rows; the token mean of the split, or the
 * plain mean of the batches, would each miss by more than 5e-4).
 *
 * LoRA against TRL + PEFT (0.21), lora_dropout 0: from a PEFT adapter folder with nonzero A and B
 * (trl_train.py's WORKDIR/adapter), 5 SFT steps and 5 DPO steps whose reference is the frozen
 * starting adapter (TRL: a PeftModel policy without ref_model gets a "ref" copy of its adapter),
 * and 5 DPO steps of a fresh adapter (use_peft) whose reference is the base with the adapter off
 * (TRL: peft_config, reference under disable_adapter), TRL's A set to our fresh draw, also with
 * lora_modules_to_save lm_head (its reference is the base: disable_adapter switches PEFT's copy
 * off, and we load the base folder). The same
 * per-step metrics and final adapter tensors agree, and PEFT loads each adapter we saved with
 * our log-probs.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { loadModel } from '../../lib/model/model.js';
import type { LoraSettings } from '../../lib/model/peft.js';
import { loadNative, packageRoot } from '../../lib/native.js';
import { dpo, sft } from '../../lib/train/api.js';
import { referencePython, runPython } from '../support/python.js';
import { packDocuments, relError } from '../support/reference-batch.js';

const here = dirname(fileURLToPath(import.meta.url));
const script = join(packageRoot(), 'test', 'conformance', 'trl_train.py');
const { python, skipReason } = referencePython();
void here;

type Entry = Record<string, number>;

function relClose(actual: number, expected: number, tol: number): boolean {
  return Math.abs(actual - expected) <= tol * Math.max(Math.abs(expected), 1e-6);
}

/**
 * `rewardFloor`: an absolute tolerance for rewards/*, which are beta * (policy - reference) of
 * summed log-probs near -100: f32 rounding of those sums (about 1e-7 of them) is an absolute
 * error that can exceed 1e-4 of a reward still near 0.
 */
function compareLogs(ours: Entry[], theirs: Entry[], keys: string[], rewardFloor = 0): void {
  const steps = (log: Entry[]) => log.filter((e) => 'loss' in e && 'step' in e);
  const a = steps(ours);
  const b = steps(theirs);
  assert.equal(a.length, b.length, 'logged steps');
  for (let i = 0; i < a.length; i++) {
    for (const key of keys) {
      assert.ok(key in a[i] && key in b[i], `step ${i + 1}: ${key} missing`);
      // rewards are exactly 0 at the first step (policy == reference) on both sides
      if (b[i][key] === 0) assert.equal(a[i][key], 0, `step ${i + 1} ${key}`);
      else if (key.startsWith('rewards/') && Math.abs(a[i][key] - b[i][key]) <= rewardFloor) continue;
      else assert.ok(relClose(a[i][key], b[i][key], 1e-4), `step ${i + 1} ${key}: ours ${a[i][key]} vs TRL ${b[i][key]}`);
    }
  }
}

/** The evaluation entries (after step 5) agree to 1e-4 relative. */
function compareEvaluations(ours: Entry[], theirs: Entry[], keys: string[]): void {
  const evals = (log: Entry[]) => log.filter((e) => 'eval_loss' in e);
  const a = evals(ours);
  const b = evals(theirs);
  assert.equal(a.length, 1, 'one evaluation logged');
  assert.equal(b.length, 1, "TRL's one evaluation");
  assert.equal(a[0].step, b[0].step);
  for (const key of keys) {
    assert.ok(key in a[0] && key in b[0], `${key} missing`);
    assert.ok(relClose(a[0][key], b[0][key], 1e-4), `${key}: ours ${a[0][key]} vs TRL ${b[0][key]}`);
  }
}

async function compareWeights(ours: string, theirs: string, file = 'model.safetensors'): Promise<void> {
  const addon = loadNative('cpu');
  const header = addon.readSafetensorsHeader({ path: join(theirs, file) });
  assert.ok(header.tensors.length > 0);
  assert.deepEqual(
    addon.readSafetensorsHeader({ path: join(ours, file) }).tensors.map((t) => t.name).sort(),
    header.tensors.map((t) => t.name).sort(),
    `${file}: the same tensors`,
  );
  for (const tensor of header.tensors) {
    const expected = await addon.readTensor({ path: join(theirs, file), name: tensor.name, dtype: 'f32' });
    const actual = await addon.readTensor({ path: join(ours, file), name: tensor.name, dtype: 'f32' });
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

/** Evaluation after the 5th step on the training rows, 4 a batch (trl_train.py's EVAL_ARGS; SFT's 1). */
const evaluation = { eval_strategy: 'steps', eval_steps: 5, per_device_eval_batch_size: 4, dataset_test_split: 'test' };

describe('trainers match TRL 1.13 step for step', { skip: skipReason ?? false }, () => {
  const work = mkdtempSync(join(tmpdir(), 'zn-trl-'));
  before(() => {
    runPython(python!, script, [work], 600_000);
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  it('SFT: loss, grad_norm, final weights and eval_loss', async () => {
    await sft({ ...recipe(work, 'zn-sft'), ...evaluation, per_device_eval_batch_size: 1, dataset_name: join(work, 'sft-splits') }, { progress: 'silent' });
    const ours = JSON.parse(readFileSync(join(work, 'zn-sft', 'trainer_state.json'), 'utf8')).log_history as Entry[];
    const theirs = JSON.parse(readFileSync(join(work, 'trl-sft', 'log_history.json'), 'utf8')) as Entry[];
    compareLogs(ours, theirs, ['loss', 'grad_norm', 'learning_rate', 'epoch', 'num_tokens']);
    compareEvaluations(ours, theirs, ['eval_loss']);
    await compareWeights(join(work, 'zn-sft'), join(work, 'trl-sft'));
  });

  for (const packing of [false, true]) {
    it(`SFT evaluation${packing ? ' with packing' : ''}: eval_on_start's eval_loss of a sharper model is TRL evaluate()'s, ${packing ? 'batches of 4 + 2 packed rows' : 'one row a batch'}`, async () => {
      const name = packing ? 'sharp-packed' : 'sharp-rows';
      const output = join(work, `zn-${name}`);
      await sft(
        { ...recipe(work, `zn-${name}`), model_name_or_path: join(work, 'model-sharp'), dataset_name: join(work, 'sft-splits'), packing, max_steps: 1, eval_on_start: true, per_device_eval_batch_size: packing ? 4 : 1 },
        { progress: 'silent' },
      );
      const ours = (JSON.parse(readFileSync(join(output, 'trainer_state.json'), 'utf8')).log_history as Entry[]).find((e) => 'eval_loss' in e);
      const theirs = JSON.parse(readFileSync(join(work, `trl-${name}`, 'eval.json'), 'utf8')) as Entry;
      assert.ok(ours, 'evaluated on start');
      assert.equal(ours.step, 0);
      assert.ok(relClose(ours.eval_loss, theirs.eval_loss, 1e-4), `eval_loss: ours ${ours.eval_loss} vs TRL ${theirs.eval_loss}`);
    });
  }

  it('DPO: loss, grad_norm, rewards/*, logps/* and final weights', async () => {
    await dpo({ ...recipe(work, 'zn-dpo'), ...evaluation, dataset_name: join(work, 'dpo-splits'), beta: 0.1 }, { progress: 'silent' });
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
      'num_tokens',
    ]);
    compareEvaluations(ours, theirs, ['eval_loss', 'eval_rewards/chosen', 'eval_rewards/rejected', 'eval_rewards/accuracies', 'eval_rewards/margins', 'eval_logps/chosen', 'eval_logps/rejected']);
    await compareWeights(join(work, 'zn-dpo'), join(work, 'trl-dpo'));
  });

  describe('LoRA: trainers match TRL 1.13 + PEFT step for step', () => {
    // trl_train.py's starting adapter and its LoraConfig (all-linear, r 4, alpha 8).
    const lora: LoraSettings = { rank: 4, alpha: 8, rslora: false, targetModules: ['all-linear'], dropout: 0 };
    // trl_train.py's LORA_ARGS: LoRA's usual higher rate moves the rewards well above f32 rounding.
    const loraRecipe = (output: string) => ({ ...recipe(work, output), learning_rate: 1e-2 });
    const freshKeys = { use_peft: true, lora_r: 4, lora_alpha: 8, lora_target_modules: 'all-linear', lora_dropout: 0 };
    const REWARD_FLOOR = 0.1 * 1e-7 * 100; // beta * f32 rounding of a summed log-prob near -100
    const dpoKeys = ['loss', 'grad_norm', 'rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins', 'logps/chosen', 'logps/rejected'];
    const log = (dir: string, file: string) => JSON.parse(readFileSync(join(work, dir, file), 'utf8')) as Entry[];
    const ours = (dir: string) => (JSON.parse(readFileSync(join(work, dir, 'trainer_state.json'), 'utf8')) as { log_history: Entry[] }).log_history;

    before(async () => {
      // A fresh adapter's A is our own draw (seeded by `seed`); TRL's run starts from the same one.
      const starts: [string, LoraSettings][] = [['fresh-init', lora], ['fresh-init-saved', { ...lora, modulesToSave: ['lm_head'] }]];
      for (const [dir, settings] of starts) {
        const fresh = await loadModel(join(work, 'model'), { lora: settings, loraSeed: 42, maxTokens: 16 });
        await fresh.saveAdapter(join(work, dir));
        fresh.dispose();
      }
      const fromAdapter = (output: string) => ({ ...loraRecipe(output), model_name_or_path: join(work, 'adapter') });
      await sft({ ...fromAdapter('zn-lora-sft'), dataset_name: join(work, 'sft.jsonl') }, { progress: 'silent' });
      await dpo({ ...fromAdapter('zn-lora-dpo'), dataset_name: join(work, 'dpo.jsonl'), beta: 0.1 }, { progress: 'silent' });
      await dpo({ ...loraRecipe('zn-lora-dpo-fresh'), ...freshKeys, dataset_name: join(work, 'dpo.jsonl'), beta: 0.1 }, { progress: 'silent' });
      await dpo({ ...loraRecipe('zn-lora-dpo-saved'), ...freshKeys, lora_modules_to_save: 'lm_head', dataset_name: join(work, 'dpo.jsonl'), beta: 0.1 }, { progress: 'silent' });
      runPython(python!, script, ['peft', work], 600_000);
    });

    it('SFT from an adapter folder: loss, grad_norm and the final adapter', async () => {
      compareLogs(ours('zn-lora-sft'), log('trl-lora-sft', 'log_history.json'), ['loss', 'grad_norm', 'learning_rate', 'epoch']);
      await compareWeights(join(work, 'zn-lora-sft'), join(work, 'trl-lora-sft'), 'adapter_model.safetensors');
    });

    it('DPO from an adapter folder, against that adapter frozen: loss log 2 at step 1, metrics and the final adapter', async () => {
      const theirs = log('trl-lora-dpo', 'log_history.json');
      assert.ok(Math.abs(theirs[0].loss - Math.LN2) < 1e-6, 'the reference is the starting adapter (first loss log 2)');
      compareLogs(ours('zn-lora-dpo'), theirs, dpoKeys, REWARD_FLOOR);
      await compareWeights(join(work, 'zn-lora-dpo'), join(work, 'trl-lora-dpo'), 'adapter_model.safetensors');
    });

    it('DPO of a fresh adapter, against the adapter off: metrics and the final adapter', async () => {
      compareLogs(ours('zn-lora-dpo-fresh'), log('trl-lora-dpo-fresh', 'log_history.json'), dpoKeys, REWARD_FLOOR);
      await compareWeights(join(work, 'zn-lora-dpo-fresh'), join(work, 'trl-lora-dpo-fresh'), 'adapter_model.safetensors');
    });

    it('DPO of a fresh adapter with lora_modules_to_save lm_head, against the base: metrics and the final adapter with the lm_head', async () => {
      compareLogs(ours('zn-lora-dpo-saved'), log('trl-lora-dpo-saved', 'log_history.json'), dpoKeys, REWARD_FLOOR);
      await compareWeights(join(work, 'zn-lora-dpo-saved'), join(work, 'trl-lora-dpo-saved'), 'adapter_model.safetensors');
    });

    it('PEFT loads each adapter we saved and gives our log-probs', async () => {
      const peft = JSON.parse(readFileSync(join(work, 'peft_logps.json'), 'utf8')) as Record<string, number[]> & { documents: number[][]; targets: number[][] };
      const batch = packDocuments(peft.documents, peft.targets);
      for (const run of ['zn-lora-sft', 'zn-lora-dpo', 'zn-lora-dpo-fresh', 'zn-lora-dpo-saved']) {
        const model = await loadModel(join(work, run), { maxTokens: batch.inputIds.length });
        const err = relError(await model.logprobs(batch), peft[run]);
        model.dispose();
        assert.ok(err < 1e-5, `${run}: log-probs vs PEFT's: relative error ${err}`);
      }
    });
  });
});
