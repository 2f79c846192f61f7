/**
 * The step benchmark: its FLOP count against sums written out here, and a seconds-long smoke of
 * `zephyr-native bench` (tiny preset, one timed step, each mode in its own child process) that
 * checks the report's shape and that its numbers are sane. No speed is asserted: the figures
 * depend on the machine and on whatever else runs on it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { attentionForwardFlops, loraParameters, matmulParameters, stepFlops, visiblePairs } from '../lib/bench/flops.js';
import { BENCH_PEFT, benchLoraSettings, PRESETS } from '../lib/bench/presets.js';
import { mistralConfig } from '../lib/model/init.js';
import { modelMemoryPlan } from '../lib/model/model.js';
import { mistralParameterShapes } from '../lib/model/parameters.js';
import { packageRoot } from '../lib/native.js';

const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 240_000 });

describe('bench FLOPs', () => {
  const small = mistralConfig(PRESETS.small.model);

  it('matmul parameters: every projection and the lm_head, not the embedding or the norms', () => {
    // small: per layer q 512x512, k and v 256x512 each, o 512x512, gate/up/down 1408x512; lm_head 32000x512.
    const perLayer = 512 * 512 + 2 * 256 * 512 + 512 * 512 + 3 * 1408 * 512;
    assert.equal(matmulParameters(small), 8 * perLayer + 32000 * 512);
    // The same from the parameter table: everything but the embedding lookup and the norm weights.
    const table = mistralParameterShapes(small)
      .filter(({ name }) => name !== 'model.embed_tokens.weight' && !name.endsWith('norm.weight'))
      .reduce((sum, { shape }) => sum + shape.reduce((a, b) => a * b, 1), 0);
    assert.equal(matmulParameters(small), table);
    // Tied embeddings: the lm_head matmul still happens (on the embedding matrix).
    const tiny = mistralConfig(PRESETS.tiny.model);
    assert.equal(matmulParameters(tiny), 4 * (128 * 128 * 2 + 2 * 64 * 128 + 3 * 352 * 128) + 32000 * 128);
  });

  it('visible (query, key) pairs match a brute-force count, with and without a window', () => {
    for (const [tokens, window] of [[1, null], [7, null], [10, 3], [10, 10], [10, 20], [512, 256]] as [number, number | null][]) {
      let pairs = 0;
      for (let i = 0; i < tokens; i++) for (let j = 0; j <= i; j++) if (window === null || i - j < window) pairs++;
      assert.equal(visiblePairs(tokens, window), pairs, `tokens ${tokens}, window ${window}`);
    }
  });

  it('a step: 6N per policy token, 2N per reference token, attention 3x forward for the policy', () => {
    const preset = PRESETS.small;
    const n = matmulParameters(small);
    const attention = 4 * 8 * 8 * 64 * ((512 * 513) / 2); // one 512-token document, window 4096
    assert.equal(attentionForwardFlops(small, [512]), attention);
    assert.equal(stepFlops(small, preset, 'sft').flops, 6 * n * 2048 + 3 * 4 * attention);
    assert.equal(stepFlops(small, preset, 'dpo').flops, 6 * n * 4096 + 3 * 8 * attention + 2 * n * 4096 + 8 * attention);
  });

  it('LoRA (--peft): 4N + 6L per policy token (no base weight gradients), 2N per reference token', () => {
    // small, all-linear r 16: r x (in + out) for q 512+512, k and v 512+256, o 512+512,
    // gate and up 512+1408, down 1408+512, on each of 8 layers.
    const adapters = 8 * 16 * (1024 + 2 * 768 + 1024 + 2 * 1920 + 1920);
    assert.equal(loraParameters(small, 16), adapters);
    const n = matmulParameters(small);
    const attention = 4 * 8 * 8 * 64 * ((512 * 513) / 2);
    const preset = PRESETS.small;
    assert.equal(stepFlops(small, preset, 'sft', BENCH_PEFT).flops, (4 * n + 6 * adapters) * 2048 + 3 * 4 * attention);
    assert.equal(stepFlops(small, preset, 'dpo', BENCH_PEFT).flops, (4 * n + 6 * adapters) * 4096 + 3 * 8 * attention + 2 * n * 4096 + 8 * attention);
  });
});

describe('zephyr-native bench', () => {
  const dir = mkdtempSync(join(tmpdir(), 'zn-bench-test-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('tiny preset, one step per mode: JSON report with sane numbers and a Markdown table', () => {
    const json = join(dir, 'bench.json');
    const result = run('bench', '--preset', 'tiny', '--steps', '1', '--warmup', '0', '--precision', 'f32', '--json', json, '--cache-dir', join(dir, 'cache'));
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /^\| preset \| mode \| precision \| implementation \|/);
    const report = JSON.parse(readFileSync(json, 'utf8'));
    assert.deepEqual(
      report.results.map((r: { mode: string }) => r.mode),
      ['sft', 'dpo'],
    );
    const tokens = { sft: 4 * 128, dpo: 2 * 4 * 128 } as Record<string, number>;
    for (const r of report.results) {
      assert.equal(r.preset, 'tiny');
      assert.equal(r.implementation, 'zephyr-native');
      assert.equal(r.precision, 'f32');
      assert.equal(r.tokens_per_step, tokens[r.mode]);
      assert.ok(r.step_s > 0 && Number.isFinite(r.step_s), `step_s ${r.step_s}`);
      assert.ok(Math.abs(r.tokens_per_s * r.step_s - tokens[r.mode]!) < 1e-6, 'tokens/s = tokens per step / step_s');
      assert.equal(r.steps_s.length, 1);
      assert.ok(r.mfu === null || (r.mfu > 0 && Number.isFinite(r.mfu)), `mfu ${r.mfu}`);
      assert.equal(r.flops_per_step, stepFlops(mistralConfig(PRESETS.tiny.model), PRESETS.tiny, r.mode).flops);
      // The process's max RSS covers at least what the models allocated and touched.
      assert.ok(r.peak_bytes > r.planned_bytes && r.planned_bytes > 0, `peak ${r.peak_bytes}, planned ${r.planned_bytes}`);
      assert.ok(r.threads >= 1);
    }
    const [sft, dpo] = report.results;
    // Random init (std 0.02) predicts nearly uniformly: loss close to ln(vocab).
    assert.ok(Math.abs(sft.losses[0] - Math.log(32000)) < 0.2, `SFT loss ${sft.losses[0]}`);
    // Before the first update the policy equals the reference: -log sigmoid(0) = ln 2.
    assert.ok(Math.abs(dpo.losses[0] - Math.LN2) < 1e-6, `DPO loss ${dpo.losses[0]}`);
    assert.ok(dpo.phases_s.reference > 0, 'the DPO step ran the reference model');
    assert.ok(report.machine.cores >= 1 && report.machine.threads >= 1);
    if (report.machine.cpu_features.includes('fma')) assert.ok(report.machine.peak_gflops!.f32 > 0);
    assert.equal(typeof report.versions['zephyr-native'], 'string');
  });

  it('--peft: LoRA steps on the tiny preset, the reference being the policy with its adapters off', () => {
    const json = join(dir, 'bench-peft.json');
    const result = run('bench', '--preset', 'tiny', '--peft', '--steps', '1', '--warmup', '0', '--precision', 'f32', '--json', json, '--cache-dir', join(dir, 'cache'));
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /\| tiny \| sft \| f32 \| zephyr-native \| LoRA r 16, alpha 32, all-linear \|/);
    const report = JSON.parse(readFileSync(json, 'utf8'));
    assert.deepEqual(report.results.map((r: { mode: string }) => r.mode), ['sft', 'dpo']);
    const config = mistralConfig(PRESETS.tiny.model);
    const tokens = { sft: 4 * 128, dpo: 2 * 4 * 128 } as Record<string, number>;
    for (const r of report.results) {
      assert.deepEqual(r.peft, { r: 16, alpha: 32, target_modules: 'all-linear' });
      assert.equal(r.tokens_per_step, tokens[r.mode]);
      assert.ok(r.step_s > 0 && Math.abs(r.tokens_per_s * r.step_s - tokens[r.mode]!) < 1e-6);
      assert.equal(r.flops_per_step, stepFlops(config, PRESETS.tiny, r.mode, BENCH_PEFT).flops);
      // One model, the policy with adapters: no second copy of the base for DPO's reference.
      const policyPlan = modelMemoryPlan(config, { dtype: 'f32', maxTokens: tokens[r.mode], trainable: true, lora: benchLoraSettings(BENCH_PEFT) });
      assert.equal(r.planned_bytes, policyPlan.total);
      // The frozen base: gradients and AdamW moments of the adapters only.
      const full = modelMemoryPlan(config, { dtype: 'f32', maxTokens: tokens[r.mode], trainable: true });
      assert.ok(policyPlan.optimizer < full.optimizer / 10, `optimizer ${policyPlan.optimizer} vs full ${full.optimizer}`);
      assert.ok(r.peak_bytes > r.planned_bytes, `peak ${r.peak_bytes}, planned ${r.planned_bytes}`);
    }
    const [sft, dpo] = report.results;
    // B starts at zero (PEFT's init): the policy is the random base, loss close to ln(vocab) ...
    assert.ok(Math.abs(sft.losses[0] - Math.log(32000)) < 0.2, `SFT loss ${sft.losses[0]}`);
    // ... and equals its adapters-off reference: -log sigmoid(0) = ln 2.
    assert.ok(Math.abs(dpo.losses[0] - Math.LN2) < 1e-6, `DPO loss ${dpo.losses[0]}`);
    assert.ok(dpo.phases_s.reference > 0, 'the DPO step ran the adapters-off reference');
  });

  it('mistral-7b on the CPU is refused with the reason, before anything is written', () => {
    const result = run('bench', '--preset', 'mistral-7b', '--cache-dir', join(dir, 'never'));
    assert.equal(result.status, 1);
    assert.match(result.stderr, /mistral-7b is GPU-only: one full fine-tuning step needs \d+ GiB/);
  });

  it('--device cuda fails clearly (no CUDA build, no usable GPU, or no CUDA model yet)', () => {
    const result = run('bench', '--device', 'cuda', '--cache-dir', join(dir, 'never'));
    assert.equal(result.status, 1);
    assert.match(result.stderr, /CUDA backend (has kernels but no model yet|is not built|\(.*\) cannot use a GPU)/);
    assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
  });

  it('bad --steps is a usage error', () => {
    const result = run('bench', '--steps', '0');
    assert.equal(result.status, 2);
    assert.match(result.stderr, /--steps must be an integer >= 1/);
  });
});
