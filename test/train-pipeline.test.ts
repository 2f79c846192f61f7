/**
 * The pipeline (sft then dpo from its output) in an isolated child process, evaluation with
 * eval_-prefixed metrics, checkpoint rotation, precomputed reference log-probs (same losses as a
 * live reference, cached on disk), and recipe errors from the CLI.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';

import { binarize } from '../lib/aif/binarize.js';
import { writePreferences } from '../lib/aif/preference-files.js';
import { ultrachatRows, ultrafeedbackRows } from '../lib/demo/teacher.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { writeRows } from '../lib/data/writers.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { MistralModel } from '../lib/model/model.js';
import { packageRoot } from '../lib/native.js';
import * as library from '../lib/index.js';
import { dpo, sft as sft_, train } from '../lib/train/api.js';

const work = mkdtempSync(join(tmpdir(), 'zn-pipeline-'));
const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');

type Entry = Record<string, number>;
const history = (dir: string): Entry[] => JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')).log_history as Entry[];

const common = {
  use_cpu: true,
  bf16: false,
  gradient_checkpointing: false,
  max_length: 64,
  logging_steps: 1,
  per_device_train_batch_size: 4,
  per_device_eval_batch_size: 4,
  seed: 1,
};

describe('training pipeline', () => {
  before(async () => {
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 128, sliding_window: 32, tie_word_embeddings: true,
      bos_token_id: 1, eos_token_id: 2,
    });
    await writeRandomModel(join(work, 'base'), config, { seed: 9, tokenizerDir: join(work, 'tokenizer') });
    await writeRows(join(work, 'chats.jsonl'), ultrachatRows(24, 4));
    const { pairs } = await binarize(ultrafeedbackRows(40, 5), { seed: 3 });
    await writePreferences(join(work, 'prefs'), pairs, { testSize: 8, seed: 3 });
  });

  it('runs sft then dpo from its output in a child process, with evaluation and checkpoint rotation', async () => {
    const logs: Entry[] = [];
    const run = train(
      {
        ...common,
        sft: {
          model_name_or_path: join(work, 'base'),
          dataset_name: join(work, 'chats.jsonl'),
          output_dir: join(work, 'sft'),
          max_steps: 3,
          learning_rate: 1e-3,
          save_steps: 1,
          save_total_limit: 2,
        },
        dpo: {
          dataset_name: join(work, 'prefs'),
          dataset_train_split: 'train_prefs',
          dataset_test_split: 'test_prefs',
          output_dir: join(work, 'dpo'),
          max_steps: 2,
          learning_rate: 1e-3,
          eval_strategy: 'steps',
          eval_steps: 2,
          save_strategy: 'no',
        },
      },
      { isolate: true, progress: 'silent' },
    );
    run.on('log', (entry) => logs.push(entry as Entry));
    const results = await run;
    assert.deepEqual(results.map((r) => [r.stage, r.globalStep]), [['sft', 3], ['dpo', 2]]);
    // The dpo stage started from the sft stage's output folder.
    assert.ok(existsSync(join(work, 'sft', 'model.safetensors')));
    assert.ok(existsSync(join(work, 'dpo', 'model.safetensors')));
    // save_total_limit 2 keeps the two newest checkpoints (the final step is the model itself).
    assert.deepEqual(readdirSync(join(work, 'sft')).filter((n) => n.startsWith('checkpoint-')).sort(), ['checkpoint-1', 'checkpoint-2']);
    const evals = history(join(work, 'dpo')).filter((e) => 'eval_loss' in e);
    assert.equal(evals.length, 1);
    for (const key of ['eval_rewards/accuracies', 'eval_rewards/margins', 'eval_logps/chosen']) assert.ok(key in evals[0], key);
    // Events crossed the process boundary, tagged with their stage.
    assert.ok(logs.some((e) => (e as unknown as { stage: string }).stage === 'dpo' && 'rewards/margins' in e));
  });

  it('precomputed reference log-probs give the same losses as a live reference, and are cached', async () => {
    const recipe = {
      ...common,
      model_name_or_path: join(work, 'base'),
      dataset_name: join(work, 'prefs'),
      dataset_train_split: 'train_prefs',
      dataset_test_split: 'test_prefs',
      max_steps: 3,
      learning_rate: 1e-3,
      save_strategy: 'no',
    };
    // Every model a stage loads is disposed by the time it returns: policy and reference (live),
    // policy and the precomputing reference.
    const disposed = new Set<MistralModel>();
    const dispose = MistralModel.prototype.dispose;
    MistralModel.prototype.dispose = function (this: MistralModel) {
      disposed.add(this);
      dispose.call(this);
    };
    try {
      await dpo({ ...recipe, output_dir: join(work, 'live') }, { progress: 'silent' });
      assert.equal(disposed.size, 2, 'live: policy and reference disposed');
      await dpo({ ...recipe, output_dir: join(work, 'pre'), precompute_ref_log_probs: true }, { progress: 'silent' });
      assert.equal(disposed.size, 4, 'precomputed: policy and the precomputing reference disposed');
    } finally {
      MistralModel.prototype.dispose = dispose;
    }
    const live = history(join(work, 'live')).filter((e) => 'loss' in e);
    const pre = history(join(work, 'pre')).filter((e) => 'loss' in e);
    assert.equal(pre.length, 3);
    pre.forEach((e, i) => {
      assert.ok(Math.abs(e.loss - live[i].loss) <= 1e-6 * live[i].loss, `step ${i + 1} loss`);
      assert.ok(Math.abs(e['rewards/margins'] - live[i]['rewards/margins']) <= 1e-5, `step ${i + 1} margins`);
    });
    assert.equal(readdirSync(join(work, 'pre', 'cache')).filter((n) => n.startsWith('ref-logps-')).length, 1);
  });

  it('the package entry point exports the training API the README shows', () => {
    assert.equal(library.sft, sft_);
    assert.equal(library.dpo, dpo);
    assert.equal(library.train, train);
  });

  it('the CLI reports recipe errors with the key, as a usage error', () => {
    const recipe = join(work, 'bad.yaml');
    writeFileSync(recipe, `model_name_or_path: ${join(work, 'base')}\nlearnig_rate: 1e-5\n`);
    const result = spawnSync(process.execPath, [cli, 'sft', '--config', recipe], { encoding: 'utf8' });
    assert.equal(result.status, 2);
    assert.match(result.stderr, /unknown key 'learnig_rate'/);
    const unsupported = spawnSync(process.execPath, [cli, 'dpo', '--model_name_or_path', 'x', '--use_liger_kernel', 'true'], { encoding: 'utf8' });
    assert.equal(unsupported.status, 2);
    assert.match(unsupported.stderr, /'use_liger_kernel: true' is not supported/);
    const badFlag = spawnSync(process.execPath, [cli, 'sft', '--config', recipe, '--max_steps', '1.5'], { encoding: 'utf8' });
    assert.equal(badFlag.status, 2);
    assert.match(badFlag.stderr, /command line: 'max_steps' must be an integer/, 'a bad flag is named as a flag, not as the file');
  });
});
