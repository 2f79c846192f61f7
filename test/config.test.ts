import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { UsageError } from '../lib/errors.js';
import { describeKeys, readRecipeFile, removedIn, resolveStage } from '../lib/train/config.js';
import { integrationsOf } from '../lib/train/report-to.js';
import { flagsFrom } from '../lib/cli/training-flags.js';

describe('training configuration', () => {
  it('layers defaults, recipe and flags (flags win) with TRL stage defaults', () => {
    const config = resolveStage('dpo', [
      { values: { learning_rate: 5e-7, beta: 0.01, num_train_epochs: 1 }, where: 'recipe.yaml' },
      { values: { beta: '0.1' }, where: 'command line' },
    ]);
    assert.equal(config.values.learning_rate, 5e-7);
    assert.equal(config.values.beta, 0.1);
    assert.equal(config.origin.beta, 'command line');
    assert.equal(config.values.gradient_accumulation_steps, 1);
    assert.equal(resolveStage('sft', []).values.learning_rate, 2e-5);
    assert.equal(resolveStage('dpo', []).values.learning_rate, 1e-6);
  });

  it('an unknown key is an error naming it', () => {
    assert.throws(
      () => resolveStage('sft', [{ values: { learnig_rate: 1 }, where: 'r.yaml' }]),
      (e: unknown) => e instanceof UsageError && /r\.yaml: unknown key 'learnig_rate'/.test(e.message),
    );
  });

  it('a known but unimplemented key is accepted at its default and rejected otherwise', () => {
    assert.doesNotThrow(() => resolveStage('sft', [{ values: { hub_always_push: false, use_liger_kernel: false }, where: 'r' }]));
    assert.throws(() => resolveStage('sft', [{ values: { use_liger_kernel: true }, where: 'r' }]), /'use_liger_kernel: true' is not supported/);
    assert.throws(() => resolveStage('dpo', [{ values: { f_divergence_type: 'js_divergence' }, where: 'r' }]), /not supported/);
    assert.doesNotThrow(() => resolveStage('dpo', [{ values: { f_divergence_type: 'reverse_kl', use_cpu: true }, where: 'r' }]));
  });

  it('a key of the other stage or a bad value is an error naming it', () => {
    assert.throws(() => resolveStage('sft', [{ values: { beta: 0.1 }, where: 'r' }]), /'beta' is a dpo key/);
    assert.throws(() => resolveStage('sft', [{ values: { max_steps: 1.5 }, where: 'r' }]), /'max_steps' must be an integer/);
    assert.throws(() => resolveStage('sft', [{ values: { lr_scheduler_type: 'polynomial' }, where: 'r' }]), /one of linear/);
  });

  it('types each value once: null takes the default, lists and flag text become the key\'s type', () => {
    const config = resolveStage('dpo', [
      { values: { learning_rate: null, gradient_checkpointing: null, max_length: null, loss_type: ['ipo'] }, where: 'r.yaml' },
      { values: { resume_from_checkpoint: 'true', logging_first_step: 'True' }, where: 'command line' },
    ]);
    assert.equal(config.values.learning_rate, 1e-6);
    assert.equal(config.values.gradient_checkpointing, true);
    assert.equal(config.values.max_length, null, 'max_length: null means no limit');
    assert.equal(config.values.loss_type, 'ipo');
    assert.equal(config.values.resume_from_checkpoint, true);
    assert.equal(config.values.logging_first_step, true);
    assert.equal(resolveStage('sft', [{ values: { resume_from_checkpoint: 'runs/x/checkpoint-4' }, where: 'r' }]).values.resume_from_checkpoint, 'runs/x/checkpoint-4');
    assert.throws(() => resolveStage('dpo', [{ values: { loss_type: ['sigmoid', 'ipo'] }, where: 'r.yaml' }]), /r\.yaml: 'loss_type' must be one value/);
    assert.throws(() => resolveStage('sft', [{ values: { resume_from_checkpoint: 3 }, where: '--resume_from_checkpoint' }]), /--resume_from_checkpoint: 'resume_from_checkpoint' must be a checkpoint folder or true/);
  });

  it('reads an alignment-handbook style recipe', () => {
    const dir = mkdtempSync(join(tmpdir(), 'zn-recipe-'));
    const file = join(dir, 'dpo.yaml');
    writeFileSync(
      file,
      [
        'model_name_or_path: some/model',
        'torch_dtype: null',
        'bf16: true',
        'beta: 0.01',
        'gradient_checkpointing_kwargs:',
        '  use_reentrant: False',
        'optim: adamw_torch',
        'lr_scheduler_type: cosine',
        'warmup_ratio: 0.1',
        'report_to: []',
      ].join('\n'),
    );
    const config = resolveStage('dpo', [{ values: readRecipeFile(file), where: file }]);
    assert.equal(config.values.bf16, true);
    assert.equal(config.values.lr_scheduler_type, 'cosine');
    assert.equal(config.values.warmup_ratio, 0.1);
    writeFileSync(file, 'a: [1, 2\n');
    assert.throws(() => readRecipeFile(file), /not valid YAML/);
  });

  it('keys older transformers / TRL / handbook versions defined: honoured, or accepted with a notice, or refused', () => {
    const config = resolveStage('sft', [
      {
        values: { overwrite_output_dir: true, evaluation_strategy: 'epoch', no_cuda: true, logging_dir: 'tb', preprocessing_num_workers: 12, push_to_hub_revision: false },
        where: 'old.yaml',
      },
    ]);
    assert.equal(config.values.overwrite_output_dir, true);
    assert.equal(config.values.eval_strategy, 'epoch', 'evaluation_strategy is eval_strategy');
    assert.equal(config.values.use_cpu, true, 'no_cuda is use_cpu');
    assert.equal(config.values.logging_dir, 'tb');
    assert.deepEqual(config.notices, [
      "old.yaml: 'preprocessing_num_workers' (dropped in alignment-handbook's H4 arguments (before its move to TRL's config classes)) changes nothing here; accepted",
      "old.yaml: 'push_to_hub_revision' (dropped in alignment-handbook's H4 arguments (before its move to TRL's config classes)) changes nothing here; accepted",
    ]);
    assert.throws(() => resolveStage('sft', [{ values: { hub_model_revision: 'v1.0' }, where: 'r' }]), /'hub_model_revision: "v1.0"' is not supported .*dropped in alignment-handbook/);
    assert.throws(() => resolveStage('sft', [{ values: { evaluation_strategy: 'sometimes' }, where: 'r' }]), /'evaluation_strategy' must be one of no, steps, epoch/);
    // The H4 handbook's default (true) inserted an empty system turn, which is not implemented.
    assert.throws(() => resolveStage('sft', [{ values: { auto_insert_empty_system_msg: true }, where: 'r' }]), /'auto_insert_empty_system_msg: true' is not supported by zephyr-native \(this value is not implemented; the key was dropped in alignment-handbook/);
    assert.equal(resolveStage('sft', [{ values: { auto_insert_empty_system_msg: false }, where: 'r' }]).notices.length, 1);
    assert.equal(removedIn('overwrite_output_dir'), 'transformers 5.0');
    assert.equal(removedIn('evaluation_strategy'), 'transformers 4.46');
    assert.equal(removedIn('max_seq_length'), 'trl 0.20');
    assert.equal(removedIn('learning_rate'), null);
    assert.equal(describeKeys('sft').find((k) => k.name === 'warmup_ratio')?.removedIn, 'transformers 5.15');
  });

  it('report_to takes tensorboard, wandb, all, none or a list of them', () => {
    const reportTo = (value: unknown) => resolveStage('sft', [{ values: { report_to: value }, where: 'r' }]).values.report_to;
    assert.deepEqual(integrationsOf(reportTo('none')), []);
    assert.deepEqual(integrationsOf(reportTo([])), []);
    assert.deepEqual(integrationsOf(reportTo('all')), ['tensorboard', 'wandb']);
    assert.deepEqual(integrationsOf(reportTo(['wandb', 'tensorboard', 'wandb'])), ['wandb', 'tensorboard']);
    assert.deepEqual(integrationsOf(reportTo('tensorboard')), ['tensorboard']);
    assert.throws(() => reportTo(['mlflow']), /'report_to' must be one of none, all, tensorboard, wandb/);
  });

  it('--no_X flags (HfArgumentParser) set a boolean key to false; a key named no_X keeps its name', () => {
    assert.deepEqual(flagsFrom({ _: [], $0: 'zn', no_remove_unused_columns: true, no_cuda: true, bf16: true }), { remove_unused_columns: false, no_cuda: true, bf16: true });
    assert.deepEqual(flagsFrom({ _: [], $0: 'zn', no_learning_rate: true }), { no_learning_rate: true }, 'not a boolean key: left for the unknown-key error');
  });

  it("'tf32: true' is accepted with a notice (f32 matmuls stay full f32)", () => {
    const config = resolveStage('sft', [{ values: { tf32: true }, where: 'r' }]);
    assert.deepEqual(config.notices, ["r: 'tf32: true': f32 matmuls stay full f32 here (no TF32), so results are at least as precise; accepted"]);
  });
});
