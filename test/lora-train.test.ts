/**
 * LoRA training (use_peft) in miniature: an sft stage trains fresh adapters over the frozen base
 * and writes a PEFT adapter folder; the dpo stage continues that adapter against a frozen copy of
 * it (first loss log 2); a fresh-adapter dpo stage uses the policy with its adapters off as the
 * reference (one copy of the base, first loss log 2); `merge` folds the adapter into a plain
 * folder with the same log-probs; checkpoints hold the adapter and resume (with lora_dropout
 * too); lora_modules_to_save trains the named base modules beside the adapters and saves them as
 * PEFT does; bad LoRA keys are errors naming them.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { binarize } from '../lib/aif/binarize.js';
import { writePreferences } from '../lib/aif/preference-files.js';
import { ultrachatRows, ultrafeedbackRows } from '../lib/demo/teacher.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { writeRows } from '../lib/data/writers.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadModel, MistralModel } from '../lib/model/model.js';
import { loadNative, packageRoot } from '../lib/native.js';
import { dpo, sft as sftRun, train } from '../lib/train/api.js';

const work = mkdtempSync(join(tmpdir(), 'zn-lora-train-'));
const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');

type Entry = Record<string, number>;
const history = (dir: string): Entry[] => JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')).log_history as Entry[];
const relDiff = (a: Float32Array, b: Float32Array): number => Math.hypot(...a.map((x, i) => x - b[i])) / Math.hypot(...b);
const sha = (file: string): string => createHash('sha256').update(readFileSync(file)).digest('hex');

const common = {
  use_cpu: true,
  bf16: false,
  gradient_checkpointing: true,
  max_length: 64,
  logging_steps: 1,
  per_device_train_batch_size: 4,
  per_device_eval_batch_size: 4,
  seed: 1,
  save_strategy: 'no',
};
const lora = { use_peft: true, lora_r: 4, lora_alpha: 8, lora_dropout: 0, lora_target_modules: 'all-linear' };
const prefs = { dataset_name: join(work, 'prefs'), dataset_train_split: 'train_prefs', dataset_test_split: 'test_prefs' };

describe('LoRA training', () => {
  let baseHash = '';

  before(async () => {
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 128, sliding_window: 32, tie_word_embeddings: true,
      bos_token_id: 1, eos_token_id: 2,
    });
    await writeRandomModel(join(work, 'base'), config, { seed: 9, tokenizerDir: join(work, 'tokenizer') });
    baseHash = sha(join(work, 'base', 'model.safetensors'));
    await writeRows(join(work, 'chats.jsonl'), ultrachatRows(24, 4));
    const { pairs } = await binarize(ultrafeedbackRows(40, 5), { seed: 3 });
    await writePreferences(join(work, 'prefs'), pairs, { testSize: 8, seed: 3 });
  });

  after(() => rmSync(work, { recursive: true, force: true }));

  it('sft writes a PEFT adapter folder; dpo continues it against the starting adapter (first loss log 2); merge folds it in', async () => {
    const results = await train(
      {
        ...common,
        sft: { ...lora, model_name_or_path: join(work, 'base'), dataset_name: join(work, 'chats.jsonl'), output_dir: join(work, 'sft'), max_steps: 3, learning_rate: 1e-2 },
        dpo: { ...prefs, output_dir: join(work, 'dpo'), max_steps: 2, learning_rate: 1e-2 },
      },
      { progress: 'silent' },
    );
    assert.deepEqual(results.map((r) => [r.stage, r.globalStep]), [['sft', 3], ['dpo', 2]]);
    for (const stage of ['sft', 'dpo']) {
      const dir = join(work, stage);
      assert.ok(existsSync(join(dir, 'adapter_model.safetensors')), `${stage}: adapter weights`);
      assert.ok(!existsSync(join(dir, 'model.safetensors')), `${stage}: no full model written`);
      assert.ok(existsSync(join(dir, 'tokenizer.json')) || existsSync(join(dir, 'tokenizer.model')), `${stage}: tokenizer`);
      const config = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      assert.equal(config.peft_type, 'LORA');
      assert.equal(config.task_type, 'CAUSAL_LM');
      assert.equal(config.r, 4);
      assert.equal(config.lora_alpha, 8);
      assert.equal(config.base_model_name_or_path, join(work, 'base'));
      assert.deepEqual([...(config.target_modules as string[])].sort(), ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
    }
    assert.equal(sha(join(work, 'base', 'model.safetensors')), baseHash, 'the base is never written');
    const sftLoss = history(join(work, 'sft')).filter((e) => 'loss' in e).map((e) => e.loss);
    assert.ok(sftLoss[2] < sftLoss[0], `sft loss falls: ${sftLoss.join(', ')}`);
    const first = history(join(work, 'dpo')).find((e) => 'loss' in e)!;
    assert.ok(Math.abs(first.loss - Math.log(2)) < 1e-5, `dpo step 1 loss ${first.loss}: the reference is the starting adapter`);
    assert.ok(Math.abs(first['rewards/margins']) < 1e-5);

    const merged = spawnSync(process.execPath, [cli, 'merge', '--adapter', join(work, 'dpo'), '--output', join(work, 'merged'), '--dtype', 'float32'], { encoding: 'utf8' });
    assert.equal(merged.status, 0, merged.stderr);
    const batch = { inputIds: Int32Array.from([1, 15, 99, 7, 300, 42]), positionIds: Int32Array.from([0, 1, 2, 3, 4, 5]), targets: Int32Array.from([15, 99, 7, 300, 42, -100]), cuSeqlens: Int32Array.from([0, 6]) };
    const adapted = await loadModel(join(work, 'dpo'), { maxTokens: 16 });
    const plain = await loadModel(join(work, 'merged'), { maxTokens: 16 });
    const [a, b] = [await adapted.logprobs(batch), await plain.logprobs(batch)];
    for (let t = 0; t < 5; t++) assert.ok(Math.abs(a[t] - b[t]) <= 1e-5 * Math.max(1, Math.abs(a[t])), `token ${t}: ${a[t]} vs merged ${b[t]}`);
    adapted.dispose();
    plain.dispose();

    // `score` and `generate` take the adapter folder and give what the merged folder gives.
    const scored = ['dpo', 'merged'].map((model) => {
      const out = join(work, `score-${model}.jsonl`);
      const run = spawnSync(process.execPath, [cli, 'score', '--model_name_or_path', join(work, model), '--dataset_name', join(work, 'prefs'), '--dataset_split', 'test_prefs', '--output', out], { encoding: 'utf8' });
      assert.equal(run.status, 0, run.stderr);
      return readFileSync(out, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    });
    assert.equal(scored[0].length, 8);
    scored[0].forEach((row, i) => {
      for (const [key, value] of Object.entries(row)) {
        if (typeof value !== 'number' || !/logp/.test(key)) assert.deepEqual(value, scored[1][i][key], `score row ${i} ${key}`);
        else assert.ok(Math.abs(value - (scored[1][i][key] as number)) <= 1e-5 * Math.max(1, Math.abs(value)), `score row ${i} ${key}: adapter ${value} vs merged ${scored[1][i][key]}`);
      }
    });
    const generated = ['dpo', 'merged'].map((model) => {
      const out = join(work, `generate-${model}.jsonl`);
      const run = spawnSync(process.execPath, [cli, 'generate', '--model_name_or_path', join(work, model), '--dataset_name', join(work, 'chats.jsonl'), '--max_rows', '3', '--max_new_tokens', '8', '--temperature', '0', '--device', 'cpu', '--output', out], { encoding: 'utf8' });
      assert.equal(run.status, 0, run.stderr);
      return readFileSync(out, 'utf8').trim().split('\n').map((line) => JSON.stringify((JSON.parse(line) as { completions: { response: string }[] }).completions.map((c) => c.response)));
    });
    assert.equal(generated[0].length, 3);
    assert.deepEqual(generated[0], generated[1], 'greedy completions: adapter folder = merged folder');
  });

  it('a fresh adapter on a full model: the reference is the policy with its adapters off; checkpoints hold the adapter and resume', async () => {
    const recipe = { ...common, ...lora, ...prefs, model_name_or_path: join(work, 'base'), max_steps: 2, learning_rate: 1e-2, save_strategy: 'steps', save_steps: 1 };
    // One model, the policy: the reference is its base with the adapters off, not a second copy.
    const loaded = new Set<MistralModel>();
    const dispose = MistralModel.prototype.dispose;
    MistralModel.prototype.dispose = function (this: MistralModel) {
      loaded.add(this);
      dispose.call(this);
    };
    try {
      await dpo({ ...recipe, output_dir: join(work, 'fresh') }, { progress: 'silent' });
    } finally {
      MistralModel.prototype.dispose = dispose;
    }
    assert.equal(loaded.size, 1, 'one model loaded: policy and reference share the base');
    const first = history(join(work, 'fresh')).find((e) => 'loss' in e)!;
    assert.ok(Math.abs(first.loss - Math.log(2)) < 1e-6, `step 1 loss ${first.loss}: B = 0, so the policy is the base`);
    const checkpoint = join(work, 'fresh', 'checkpoint-1');
    assert.deepEqual(readdirSync(checkpoint).filter((n) => n.endsWith('.safetensors')).sort(), ['adapter_model.safetensors', 'optimizer.safetensors']);
    // Resumed from checkpoint-1: the same adapter as the uninterrupted run.
    await dpo({ ...recipe, output_dir: join(work, 'resumed'), resume_from_checkpoint: checkpoint }, { progress: 'silent' });
    assert.equal(sha(join(work, 'resumed', 'adapter_model.safetensors')), sha(join(work, 'fresh', 'adapter_model.safetensors')));
  });

  it('lora_dropout 0.05 (TRL\'s default) trains, is written to adapter_config.json and resumes byte-identically', async () => {
    const sft = {
      ...common, ...lora, lora_dropout: 0.05, model_name_or_path: join(work, 'base'), dataset_name: join(work, 'chats.jsonl'),
      max_steps: 3, learning_rate: 1e-2, per_device_train_batch_size: 2, gradient_accumulation_steps: 2, save_strategy: 'steps', save_steps: 1,
    };
    await sftRun({ ...sft, output_dir: join(work, 'dropout') }, { progress: 'silent' });
    const config = JSON.parse(readFileSync(join(work, 'dropout', 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(config.lora_dropout, 0.05);
    const losses = history(join(work, 'dropout')).filter((e) => 'loss' in e).map((e) => e.loss);
    assert.equal(losses.length, 3);
    assert.ok(losses[2] < losses[0], `sft loss falls with dropout: ${losses.join(', ')}`);
    // Resumed from checkpoint-1 (the masks of steps 2 and 3 drawn again from seed, step and micro-batch).
    await sftRun({ ...sft, output_dir: join(work, 'dropout-resumed'), resume_from_checkpoint: join(work, 'dropout', 'checkpoint-1') }, { progress: 'silent' });
    assert.equal(sha(join(work, 'dropout-resumed', 'adapter_model.safetensors')), sha(join(work, 'dropout', 'adapter_model.safetensors')));
    // The masks matter: the same run without dropout ends elsewhere.
    await sftRun({ ...sft, lora_dropout: 0, save_strategy: 'no', output_dir: join(work, 'no-dropout') }, { progress: 'silent' });
    assert.notEqual(sha(join(work, 'no-dropout', 'adapter_model.safetensors')), sha(join(work, 'dropout', 'adapter_model.safetensors')));
  });

  it('lora_modules_to_save: the norms trained beside a fresh adapter, saved as PEFT saves them; the reference is the base folder', async () => {
    const output = join(work, 'saved-norms');
    await dpo({ ...common, ...lora, ...prefs, lora_modules_to_save: 'norm', model_name_or_path: join(work, 'base'), output_dir: output, max_steps: 2, learning_rate: 1e-2 }, { progress: 'silent' });
    const first = history(output).find((e) => 'loss' in e)!;
    assert.ok(Math.abs(first.loss - Math.log(2)) < 1e-6, `step 1 loss ${first.loss}: the reference is the base`);
    const config = JSON.parse(readFileSync(join(output, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(config.modules_to_save, ['norm']);
    const names = loadNative('cpu').readSafetensorsHeader({ path: join(output, 'adapter_model.safetensors') }).tensors.map((t) => t.name);
    // PEFT's suffix match: the final norm and both norms of each layer.
    const norms = ['base_model.model.model.norm.weight', ...[0, 1].flatMap((l) => ['input_layernorm', 'post_attention_layernorm'].map((n) => `base_model.model.model.layers.${l}.${n}.weight`))];
    assert.deepEqual(names.filter((n) => !n.includes('.lora_')).sort(), norms.sort());
    const trained = await loadModel(output, { maxTokens: 16 });
    const base = await loadModel(join(work, 'base'), { maxTokens: 16 });
    assert.ok(relDiff(trained.getParameter('model.norm.weight'), base.getParameter('model.norm.weight')) > 1e-4, 'the final norm moved and was loaded back');
    trained.dispose();
    base.dispose();
    assert.equal(sha(join(work, 'base', 'model.safetensors')), baseHash, 'the base is never written');
  });

  it('bad LoRA keys are errors naming them', () => {
    const base = ['dpo', '--model_name_or_path', join(work, 'base'), '--dataset_name', join(work, 'prefs'), '--output_dir', join(work, 'bad'), '--use_cpu', 'true', '--use_peft', 'true'];
    const cases: [string[], RegExp][] = [
      [['--lora_dropout', '1'], /lora_dropout must be in \[0, 1\), got 1/],
      [['--lora_dropout=-0.1'], /lora_dropout must be in \[0, 1\), got -0\.1/],
      [['--lora_dropout', '0', '--lora_r', '0'], /lora_r must be a positive integer, got 0/],
      [['--lora_dropout', '0', '--lora_target_modules', 'qkv_proj'], /lora_target_modules names 'qkv_proj'/],
      [['--lora_dropout', '0', '--lora_modules_to_save', 'mlp'], /lora_modules_to_save: modules_to_save 'mlp' names 'model\.layers\.\d\.mlp', a module holding other modules/],
      [['--lora_dropout', '0', '--lora_modules_to_save', 'q_proj'], /modules_to_save 'q_proj' names 'model\.layers\.0\.self_attn\.q_proj', which LoRA also adapts/],
      [['--lora_dropout', '0', '--lora_modules_to_save', 'score'], /modules_to_save 'score' matches no module of the model that holds a weight/],
      [['--lora_dropout', '0', '--lora_modules_to_save', 'embed_tokens'], /modules_to_save 'embed_tokens' names embed_tokens, which is tied to the lm_head/],
    ];
    for (const [extra, message] of cases) {
      const result = spawnSync(process.execPath, [cli, ...base, ...extra], { encoding: 'utf8' });
      assert.notEqual(result.status, 0, extra.join(' '));
      assert.match(result.stderr, message);
    }
  });
});
