/**
 * Our LoRA recipe (recipes/zephyr-7b-beta-lora.yaml): its CUDA memory plan for Mistral-7B against
 * one 24 GB GPU, and the pipeline in miniature through the CLI (sft adapter -> dpo adapter ->
 * merge -> score) with the recipe's keys, only locations and sizes changed.
 *
 * The alignment-handbook's Zephyr full recipes (test/fixtures/alignment-handbook: their key sets,
 * values as published) run through the CLI as written, against a tiny model and tiny data: only
 * the model and dataset locations, max_steps, output_dir, batch sizes and the upload switch
 * change (and, for DPO, report_to tensorboard). The TensorBoard event files are read back with
 * the `tensorboard` Python package and must hold every logged value of trainer_state.json's
 * log_history, at its step, under HF Trainer's tag names (eval_ ones included: written by the
 * reporter directly, since an evaluation of the recipe's 2000 held-out pairs costs seconds).
 * The W&B path: disabled trains, offline and a missing key fail before training.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';

import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';

import { binarize } from '../lib/aif/binarize.js';
import { writePreferences } from '../lib/aif/preference-files.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { chatTemplateOf } from '../lib/data/load.js';
import { HfTokenizer } from '../lib/data/tokenizer.js';
import { writeRows } from '../lib/data/writers.js';
import { ultrachatRows, ultrafeedbackRows } from '../lib/demo/teacher.js';
import { PRESETS } from '../lib/bench/presets.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { nativeOptions } from '../lib/model/model.js';
import { type MemoryPlan, packageRoot } from '../lib/native.js';
import { closeReporters, openReporters } from '../lib/train/report-to.js';
import { sft } from '../lib/train/api.js';
import { cudaAddonFile } from './support/cuda.js';
import { referencePython, runPython } from './support/python.js';

const work = mkdtempSync(join(tmpdir(), 'zn-handbook-'));
const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
const fixtures = join(packageRoot(), 'test', 'fixtures', 'alignment-handbook', 'zephyr-7b-beta');
const ultrachat = join(work, 'HuggingFaceH4', 'ultrachat_200k');
const ultrafeedback = join(work, 'HuggingFaceH4', 'ultrafeedback_binarized');

type Recipe = Record<string, unknown>;
type Entry = Record<string, number>;

const readRecipe = (path: string): Recipe => parseYaml(readFileSync(path, 'utf8')) as Recipe;
const history = (dir: string): Entry[] => JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')).log_history as Entry[];

/** The handbook's dataset ids pointed at the local folders (an id's last part names its folder). */
function localDatasets(recipe: Recipe): Recipe {
  const mixture = recipe.dataset_mixture as { datasets: { id: string }[] } | undefined;
  const local = (id: string): string => (id.endsWith('ultrachat_200k') ? ultrachat : ultrafeedback);
  if (mixture) return { ...recipe, dataset_mixture: { ...mixture, datasets: mixture.datasets.map((d) => ({ ...d, id: local(d.id) })) } };
  const mixer = recipe.dataset_mixer as Record<string, number>;
  return { ...recipe, dataset_mixer: Object.fromEntries(Object.entries(mixer).map(([id, fraction]) => [join(local(id), 'default'), fraction])) };
}

/** Runs `zephyr-native <stage> --config <recipe>` with the given environment additions. */
function runCli(stage: string, recipe: Recipe, name: string, env: Record<string, string> = {}) {
  const path = join(work, `${name}.yaml`);
  writeFileSync(path, stringifyYaml(recipe));
  const childEnv: NodeJS.ProcessEnv = { ...process.env, HOME: work, ...env };
  for (const key of ['WANDB_API_KEY', 'WANDB_MODE', 'TENSORBOARD_LOGGING_DIR']) if (!(key in env)) delete childEnv[key];
  return spawnSync(process.execPath, [cli, stage, '--config', path], { encoding: 'utf8', env: childEnv, timeout: 240_000 });
}

/** What the handbook recipe becomes for the test: tiny model and data, few steps, no upload. */
function forTest(recipe: Recipe, model: string, outputDir: string, extra: Recipe = {}): Recipe {
  return { ...localDatasets(recipe), model_name_or_path: model, output_dir: outputDir, max_steps: 2, per_device_train_batch_size: 4, push_to_hub: false, ...extra };
}

describe('alignment-handbook Zephyr recipes', () => {
  before(async () => {
    process.env.WANDB_MODE = 'disabled';
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 512, sliding_window: 256, tie_word_embeddings: true,
      bos_token_id: 1, eos_token_id: 2,
    });
    await writeRandomModel(join(work, 'Mistral-7B-v0.1'), config, { seed: 5, tokenizerDir: join(work, 'tokenizer') });
    // Enough rows for the recipes' test_split_size (1000 chats, 2000 pairs) and a few steps.
    const chats = ultrachatRows(1100, 7);
    mkdirSync(join(ultrachat, 'default', 'data'), { recursive: true });
    await writeRows(join(ultrachat, 'default', 'data', 'train_sft-00000-of-00001.parquet'), chats.slice(0, 1050));
    await writeRows(join(ultrachat, 'default', 'data', 'test_sft-00000-of-00001.parquet'), chats.slice(1050));
    const { pairs } = await binarize(ultrafeedbackRows(2100, 8), { seed: 3 });
    await writePreferences(ultrafeedback, pairs, { testSize: 100, seed: 3 });
  });

  it('sft/config_full.yaml runs as written (W&B disabled), with its chat template and overwrite_output_dir', () => {
    const recipe = readRecipe(join(fixtures, 'sft', 'config_full.yaml'));
    const output = join(work, 'zephyr-7b-sft-full');
    // A checkpoint an earlier run left: overwrite_output_dir: true starts afresh without it.
    mkdirSync(join(output, 'checkpoint-7'), { recursive: true });
    writeFileSync(join(output, 'checkpoint-7', 'zephyr_state.json'), '{}');
    const run = runCli('sft', forTest(recipe, join(work, 'Mistral-7B-v0.1'), output), 'sft', { WANDB_MODE: 'disabled' });
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stderr, /WANDB_MODE=disabled, nothing is sent/);
    assert.match(run.stderr, /overwrite_output_dir: removed 1 checkpoint/);
    assert.ok(!existsSync(join(output, 'checkpoint-7')));
    assert.ok(existsSync(join(output, 'model.safetensors')));
    // The recipe's template replaced the tokenizer's, in training and in the saved folder.
    assert.equal(readFileSync(join(output, 'chat_template.jinja'), 'utf8'), recipe.chat_template);
    const losses = history(output).filter((e) => 'loss' in e);
    assert.deepEqual(losses.map((e) => e.step), [2]);
    assert.ok(Number.isFinite(losses[0].loss));
    // eval_strategy: epoch with max_steps ending the epoch early: HF Trainer still runs its
    // epoch-end evaluation, once, on the 1000 held-out rows.
    const evals = history(output).filter((e) => 'eval_loss' in e);
    assert.deepEqual(evals.map((e) => e.step), [2]);
    assert.ok(Number.isFinite(evals[0].eval_loss));
  });

  it("a recipe's chat_template replaces the tokenizer's for rendering, the tokenizer otherwise unchanged", () => {
    const base = HfTokenizer.fromFolder(join(work, 'tokenizer'));
    const template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}";
    const custom = base.withChatTemplate(template);
    assert.equal(custom.chatTemplate, template);
    assert.notEqual(base.chatTemplate, template, 'the original keeps its template');
    const text = chatTemplateOf(custom).render([{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello' }]);
    assert.equal(text, '[user] Hi</s>[assistant] Hello</s>');
    assert.deepEqual(custom.encode(text, { addSpecialTokens: false }), base.encode(text, { addSpecialTokens: false }));
  });

  it('dpo/config_full.yaml runs from the SFT output; its TensorBoard events equal log_history', (t) => {
    const recipe = readRecipe(join(fixtures, 'dpo', 'config_full.yaml'));
    const output = join(work, 'zephyr-7b-dpo-full');
    const run = runCli('dpo', forTest(recipe, join(work, 'zephyr-7b-sft-full'), output, { report_to: ['tensorboard'] }), 'dpo');
    assert.equal(run.status, 0, run.stderr);
    const entries = history(output);
    assert.ok(entries.some((e) => 'rewards/margins' in e));
    const runs = readdirSync(join(output, 'runs'));
    assert.equal(runs.length, 1);
    const scalars = readScalars(t, join(output, 'runs', runs[0]));
    if (!scalars) return;
    const expected = expectedScalars(entries);
    assert.ok('train/rewards/margins' in expected && 'train/learning_rate' in expected && 'train/train_loss' in expected);
    assert.deepEqual(scalars, expected);
  });

  it('eval_ and test_ values go to eval/ and test/ tags, text to text events', async (t) => {
    const dir = join(work, 'reporter');
    const reporters = await openReporters({ report_to: 'all', logging_dir: dir, run_name: null }, join(work, 'unused'), { beta: 0.1 }, () => undefined);
    assert.equal(reporters.length, 1, 'all: tensorboard, and wandb disabled');
    const entries: Entry[] = [
      { loss: 0.5, 'rewards/margins': 0, learning_rate: 1e-7, epoch: 0.5, step: 1 },
      { eval_loss: 0.25, 'eval_rewards/accuracies': 1, epoch: 0.5, step: 1 },
      { test_loss: 0.125, step: 3 },
    ];
    for (const entry of entries) reporters[0].log(entry);
    reporters[0].log({ note: 'text, not a scalar', step: 3 });
    await closeReporters(reporters);
    const scalars = readScalars(t, dir);
    if (!scalars) return;
    assert.deepEqual(scalars, expectedScalars(entries));
  });

  it('the 2023 form of the SFT recipe (older key names) runs, writing TensorBoard events', () => {
    const recipe = readRecipe(join(fixtures, 'sft', 'config_full_2023.yaml'));
    const output = join(work, 'sft-2023');
    const run = runCli('sft', forTest(recipe, join(work, 'Mistral-7B-v0.1'), output, { per_device_eval_batch_size: 8 }), 'sft-2023');
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stderr, /'preprocessing_num_workers' \(dropped in alignment-handbook/);
    assert.match(run.stderr, /'tf32: true': f32 matmuls stay full f32 here/);
    const events = readdirSync(join(output, 'runs'));
    assert.equal(events.length, 1);
    assert.ok(readdirSync(join(output, 'runs', events[0])).some((name) => name.startsWith('events.out.tfevents.')));
  });

  it('report_to wandb fails before training with WANDB_MODE=offline or without a key', async () => {
    const recipe = forTest(readRecipe(join(fixtures, 'sft', 'config_full.yaml')), join(work, 'Mistral-7B-v0.1'), join(work, 'wandb'));
    const saved = { mode: process.env.WANDB_MODE, key: process.env.WANDB_API_KEY, home: process.env.HOME };
    try {
      process.env.HOME = work; // no ~/.netrc with a key
      delete process.env.WANDB_API_KEY;
      process.env.WANDB_MODE = 'offline';
      await assert.rejects(sft(recipe, { progress: 'silent' }).result, /WANDB_MODE=offline is not supported: the W&B JavaScript client cannot record offline runs/);
      process.env.WANDB_MODE = 'online';
      await assert.rejects(sft(recipe, { progress: 'silent' }).result, /report_to wandb: no W&B API key .*set WANDB_API_KEY/);
    } finally {
      for (const [name, value] of [['WANDB_MODE', saved.mode], ['WANDB_API_KEY', saved.key], ['HOME', saved.home]] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
    assert.ok(!existsSync(join(work, 'wandb')), 'nothing was written: training never started');
  });
});

describe('recipes/zephyr-7b-beta-lora.yaml', () => {
  const dir = join(work, 'lora-recipe');
  const recipe = readRecipe(join(packageRoot(), 'recipes', 'zephyr-7b-beta-lora.yaml'));
  const sftKeys = recipe.sft as Recipe;
  const dpoKeys = recipe.dpo as Recipe;

  before(async () => {
    writeLlama2TokenizerFolder(join(dir, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 512, sliding_window: 256, tie_word_embeddings: false,
      bos_token_id: 1, eos_token_id: 2,
    });
    await writeRandomModel(join(dir, 'Mistral-7B-v0.1'), config, { seed: 11, tokenizerDir: join(dir, 'tokenizer') });
    const chats = ultrachatRows(40, 12);
    mkdirSync(join(dir, 'ultrachat_200k', 'data'), { recursive: true });
    await writeRows(join(dir, 'ultrachat_200k', 'data', 'train_sft-00000-of-00001.parquet'), chats.slice(0, 32));
    await writeRows(join(dir, 'ultrachat_200k', 'data', 'test_sft-00000-of-00001.parquet'), chats.slice(32));
    const { pairs } = await binarize(ultrafeedbackRows(40, 13), { seed: 3 });
    await writePreferences(join(dir, 'ultrafeedback_binarized'), pairs, { testSize: 8, seed: 3 });
  });

  it('is planned for one 24 GB GPU: each stage on Mistral-7B, bf16 base, at most 24 GiB of device memory', (t) => {
    const addonFile = cudaAddonFile;
    if (!addonFile) {
      t.skip('the CUDA addon is not built here (bash scripts/build-cuda.sh builds it)');
      return;
    }
    // The device plan needs no GPU: the addon file itself, not loadNative('cuda') (which asks for one).
    const addon = createRequire(import.meta.url)(addonFile) as { modelMemoryPlan(options: object): MemoryPlan };
    const mistral7b = mistralConfig(PRESETS['mistral-7b'].model);
    const lora = {
      rank: recipe.lora_r as number,
      alpha: recipe.lora_alpha as number,
      rslora: false,
      targetModules: recipe.lora_target_modules as string[],
      dropout: recipe.lora_dropout as number,
    };
    const GiB = 1024 ** 3;
    assert.equal(recipe.bf16, true);
    // Activations are planned for the largest micro-batch, training or evaluation (lib/train/stage.ts).
    const sftTokens = Math.max(sftKeys.per_device_train_batch_size as number, sftKeys.per_device_eval_batch_size as number) * (sftKeys.max_length as number);
    const dpoTokens = 2 * Math.max(dpoKeys.per_device_train_batch_size as number, dpoKeys.per_device_eval_batch_size as number) * (dpoKeys.max_length as number);
    const plan = (maxTokens: number, trainable: boolean) =>
      addon.modelMemoryPlan(
        nativeOptions(mistral7b, { dtype: 'bf16', maxTokens, trainable, gradientCheckpointing: recipe.gradient_checkpointing as boolean, ...(trainable ? { lora } : {}) }),
      );
    for (const [stage, tokens] of [['sft', sftTokens], ['dpo', dpoTokens]] as const) {
      const policy = plan(tokens, true);
      assert.ok(policy.total <= 24 * GiB, `${stage}: ${(policy.total / GiB).toFixed(2)} GiB planned`);
      // The adapters alone train: their gradients and AdamW moments are well under 1 GiB.
      assert.ok(policy.grads + policy.optimizer < GiB, `${stage}: grads ${policy.grads}, optimizer ${policy.optimizer}`);
    }
    // DPO's reference (the SFT adapter) as a frozen second copy of the base would not fit: the
    // recipe precomputes its log-probs with the policy itself instead.
    assert.equal(dpoKeys.precompute_ref_log_probs, true);
    assert.ok(plan(dpoTokens, true).total + plan(dpoTokens, false).total > 24 * GiB);
  });

  it('runs as a pipeline in miniature: sft adapter -> dpo adapter -> merge -> score', () => {
    const out = (name: string) => join(dir, name);
    const pipeline: Recipe = {
      ...recipe,
      // Without dropout the dpo stage's first loss is exactly log 2, which shows the reference it
      // used (the starting adapter); the recipe's 0.05 is exercised by test/lora-train.test.ts.
      lora_dropout: 0,
      max_steps: 2,
      sft: { ...sftKeys, model_name_or_path: out('Mistral-7B-v0.1'), dataset_name: out('ultrachat_200k'), output_dir: out('sft') },
      // logging_first_step: the first step's loss is what shows which reference the stage used.
      dpo: { ...dpoKeys, dataset_name: out('ultrafeedback_binarized'), output_dir: out('dpo'), logging_first_step: true },
    };
    const run = runCli('train', pipeline, 'lora-pipeline');
    assert.equal(run.status, 0, run.stderr);
    for (const stage of ['sft', 'dpo']) {
      const config = JSON.parse(readFileSync(join(out(stage), 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      assert.equal(config.peft_type, 'LORA');
      assert.equal(config.r, recipe.lora_r);
      assert.equal(config.lora_alpha, recipe.lora_alpha);
      assert.deepEqual([...(config.target_modules as string[])].sort(), [...(recipe.lora_target_modules as string[])].sort());
      assert.equal(config.base_model_name_or_path, out('Mistral-7B-v0.1'));
      assert.ok(!existsSync(join(out(stage), 'model.safetensors')), `${stage}: an adapter, not a model`);
    }
    assert.deepEqual(history(out('sft')).filter((e) => 'loss' in e).map((e) => e.step), [2]);
    assert.ok(history(out('sft')).some((e) => 'eval_loss' in e), 'sft: eval_strategy epoch evaluates at the end');
    // The dpo stage continued the SFT adapter; its reference is that adapter, its log-probs computed
    // by the policy before its first step (no frozen copy of the base): the first loss is log 2.
    assert.match(run.stderr, /reference log-probs: computing for \d+ pairs with the policy before its first step/);
    assert.doesNotMatch(run.stderr, /memory plan \(reference/);
    const dpoLog = history(out('dpo')).filter((e) => 'loss' in e);
    assert.deepEqual(dpoLog.map((e) => e.step), [1, 2]);
    assert.ok(Math.abs(dpoLog[0].loss - Math.LN2) < 1e-6, `dpo step 1 loss ${dpoLog[0].loss}`);
    assert.ok(Math.abs(dpoLog[0]['rewards/margins']) < 1e-6);

    const merged = spawnSync(process.execPath, [cli, 'merge', '--adapter', out('dpo'), '--output', out('merged'), '--dtype', 'float32'], { encoding: 'utf8' });
    assert.equal(merged.status, 0, merged.stderr);
    assert.ok(existsSync(join(out('merged'), 'model.safetensors')) && !existsSync(join(out('merged'), 'adapter_config.json')));
    // Scored against the SFT adapter: the merged model and the adapter it came from agree.
    const score = (model: string, name: string) => {
      const args = ['score', '--model_name_or_path', model, '--ref_model_name_or_path', out('sft'), '--dataset_name', out('ultrafeedback_binarized'), '--dataset_split', 'test_prefs'];
      const result = spawnSync(process.execPath, [cli, ...args, '--max_length', String(dpoKeys.max_length), '--max_prompt_length', String(dpoKeys.max_prompt_length), '--output', out(name)], { encoding: 'utf8' });
      assert.equal(result.status, 0, result.stderr);
      return readFileSync(out(name), 'utf8').trim().split('\n').map((line) => JSON.parse(line) as Record<string, number>);
    };
    const fromMerged = score(out('merged'), 'merged.jsonl');
    const fromAdapter = score(out('dpo'), 'adapter.jsonl');
    assert.equal(fromMerged.length, 8);
    const close = (a: number, b: number) => Math.abs(a - b) <= 1e-4 * Math.max(1, Math.abs(b));
    for (const [i, row] of fromMerged.entries()) {
      for (const key of ['chosen_logps', 'rejected_logps', 'ref_chosen_logps', 'ref_rejected_logps']) {
        assert.ok(Number.isFinite(row[key]) && close(row[key], fromAdapter[i][key]), `row ${i} ${key}: merged ${row[key]}, adapter ${fromAdapter[i][key]}`);
      }
    }
    // Two DPO steps at 5e-6 moved the policy off its SFT reference, though only a little.
    assert.ok(fromMerged.some((row) => row.chosen_logps !== row.ref_chosen_logps), 'the DPO adapter differs from the SFT one');
  });
});

/** HF Trainer's tags for log_history entries: { tag: [[step, float32 value], ...] }. */
function expectedScalars(entries: Entry[]): Record<string, [number, number][]> {
  const expected: Record<string, [number, number][]> = {};
  for (const entry of entries) {
    for (const [key, value] of Object.entries(entry)) {
      if (key === 'step') continue;
      const tag = key.startsWith('eval_') ? `eval/${key.slice(5)}` : key.startsWith('test_') ? `test/${key.slice(5)}` : `train/${key}`;
      (expected[tag] ??= []).push([entry.step, Math.fround(value)]);
    }
  }
  return expected;
}

/** The scalars TensorBoard's own reader finds in a run folder, or null (test skipped) without it. */
function readScalars(t: { skip(message: string): void }, dir: string): Record<string, [number, number][]> | null {
  const python = referencePython(['tensorboard']);
  if (!python.python) {
    t.skip(python.skipReason!);
    return null;
  }
  const script = join(work, 'read_events.py');
  writeFileSync(script, READ_EVENTS);
  return JSON.parse(runPython(python.python, script, [dir])) as Record<string, [number, number][]>;
}

/** Every scalar of every event file in a folder, by tag: [[step, value], ...] in file order. */
const READ_EVENTS = `
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
accumulator = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
accumulator.Reload()
out = {tag: [[event.step, event.value] for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
print(json.dumps(out))
`;
