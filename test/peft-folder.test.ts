/**
 * PEFT adapter folders (lib/model/peft.ts) as read: target_modules in each spelling PEFT writes,
 * and every refusal naming the file and the option: another peft_type, options that change the
 * maths, adapters on some layers only, a missing weights file, unreadable JSON, bad r/alpha.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, adapterConfigJson, readAdapterFolder } from '../lib/model/peft.js';

const work = mkdtempSync(join(tmpdir(), 'zn-peft-folder-'));
let count = 0;

/** An adapter folder holding this config (and an empty weights file unless told not to). */
function folder(config: Record<string, unknown> | string, weights = true): string {
  const dir = join(work, `a${count++}`);
  mkdirSync(dir);
  writeFileSync(join(dir, ADAPTER_CONFIG_FILE), typeof config === 'string' ? config : JSON.stringify(config));
  if (weights) writeFileSync(join(dir, ADAPTER_WEIGHTS_FILE), '');
  return dir;
}

const base = { peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 8, lora_alpha: 16, lora_dropout: 0.05, target_modules: ['q_proj', 'v_proj'] };

describe('PEFT adapter folders', () => {
  after(() => rmSync(work, { recursive: true, force: true }));

  it('reads target_modules as suffixes, all-linear, or full names covering every layer', () => {
    assert.deepEqual(readAdapterFolder(folder(base), 2).lora, { rank: 8, alpha: 16, rslora: false, targetModules: ['q_proj', 'v_proj'], dropout: 0.05 });
    assert.deepEqual(readAdapterFolder(folder({ ...base, target_modules: 'all-linear', use_rslora: true }), 2).lora.targetModules, ['all-linear']);
    const full = ['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.0.mlp.down_proj', 'model.layers.1.mlp.down_proj'];
    assert.deepEqual(readAdapterFolder(folder({ ...base, target_modules: full }), 2).lora.targetModules.sort(), ['down_proj', 'q_proj']);
    // What we write reads back as written.
    const written = adapterConfigJson({ rank: 4, alpha: 8, rslora: true, targetModules: ['k_proj'], dropout: 0 }, '/models/base');
    const read = readAdapterFolder(folder(written), 2);
    assert.deepEqual(read.lora, { rank: 4, alpha: 8, rslora: true, targetModules: ['k_proj'], dropout: 0 });
    assert.equal(read.baseModelNameOrPath, '/models/base');
    // modules_to_save as PEFT lists it (null when none).
    assert.equal(written.modules_to_save, null);
    const saving = adapterConfigJson({ rank: 4, alpha: 8, rslora: false, targetModules: ['q_proj'], dropout: 0, modulesToSave: ['lm_head', 'embed_tokens'] }, null);
    assert.deepEqual(saving.modules_to_save, ['lm_head', 'embed_tokens']);
    assert.deepEqual(readAdapterFolder(folder(saving), 2).lora.modulesToSave, ['lm_head', 'embed_tokens']);
    assert.deepEqual(readAdapterFolder(folder({ ...base, modules_to_save: 'lm_head' }), 2).lora.modulesToSave, ['lm_head']);
  });

  it('refuses what it cannot run, naming the file and the option', () => {
    const cases: [Record<string, unknown> | string, RegExp, boolean?][] = [
      [{ ...base, peft_type: 'IA3' }, /adapter_config\.json: peft_type is "IA3"; only LORA adapters are supported/],
      [{ ...base, task_type: 'SEQ_CLS' }, /task_type is "SEQ_CLS"/],
      [{ ...base, use_dora: true }, /adapter_config\.json: use_dora = true is not supported/],
      [{ ...base, bias: 'all' }, /bias = "all" is not supported/],
      [{ ...base, rank_pattern: { q_proj: 4 } }, /rank_pattern = \{"q_proj":4\} is not supported/],
      [{ ...base, modules_to_save: [3] }, /adapter_config\.json: modules_to_save must be null or a list of module names/],
      [{ ...base, target_modules: ['model.layers.0.self_attn.q_proj'] }, /adapts q_proj on 1 of 2 layers; adapters on some layers only are not supported/],
      [{ ...base, target_modules: ['qkv'] }, /lora_target_modules names 'qkv'/],
      [{ ...base, r: 0 }, /lora_r must be a positive integer, got 0/],
      [{ ...base, lora_alpha: -1 }, /lora_alpha must be positive, got -1/],
      ['{"peft_type": "LORA",', /adapter_config\.json: not a readable adapter config/],
      [base, /no adapter_model\.safetensors beside adapter_config\.json/, false],
    ];
    for (const [config, message, weights] of cases) {
      const dir = folder(config, weights ?? true);
      assert.throws(() => readAdapterFolder(dir, 2), (error: Error) => message.test(error.message) && error.message.includes(dir), String(message));
    }
  });
});
