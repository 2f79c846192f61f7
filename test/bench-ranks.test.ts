/**
 * `npm run bench:steps -- --nproc_per_node N` (lib/bench/rank-bench.ts): its refusals, and a
 * smoke run on 2 MPI ranks (tiny preset, one step per mode) whose JSON has every field, with the
 * ranks' summed losses equal to one rank's on the same step (float rounding). No speed is
 * asserted: the machine is shared. The run skips with a message where MPI is missing.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { parseRankBenchArgs, wantsRanks } from '../lib/bench/rank-bench.js';
import { packageRoot } from '../lib/native.js';
import { CLI, mpiSkipReason, runNode } from './support/ranks.js';

const STEPS = join(packageRoot(), 'dist', 'bench', 'steps.js');

describe('bench --nproc_per_node: settings', () => {
  it('takes the rank count and the ZeRO stage, and refuses what it cannot run', () => {
    assert.ok(wantsRanks(['--preset', 'tiny', '--nproc_per_node', '2']));
    assert.ok(wantsRanks(['--nproc-per-node=2']));
    assert.ok(!wantsRanks(['--preset', 'tiny']));
    const settings = parseRankBenchArgs(['--nproc_per_node', '2', '--mode', 'sft']);
    assert.deepEqual([settings.ranks, settings.zeroStage, settings.modes, settings.precisions, settings.preset], [2, 0, ['sft'], ['bf16', 'f32'], 'tiny']);
    assert.throws(() => parseRankBenchArgs(['--nproc_per_node', '0']), /--nproc_per_node must be an integer >= 1, got '0'/);
    assert.throws(() => parseRankBenchArgs(['--nproc_per_node', 'x']), /got 'x'/);
    assert.equal(parseRankBenchArgs(['--nproc_per_node', '2', '--zero_stage', '2']).zeroStage, 2);
    assert.throws(() => parseRankBenchArgs(['--nproc_per_node', '2', '--zero_stage', '3']), /--zero_stage 3: the ZeRO stages are 0, 1, 2/);
    assert.throws(() => parseRankBenchArgs(['--nproc_per_node', '5']), /the tiny preset's step has 4 sequences to share, fewer than the ranks/);
  });

  it('zephyr-native bench --nproc_per_node refuses a ZeRO stage that does not exist (exit 2), before anything runs', async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'zn-bench-ranks-cli-'));
    const run = await runNode([CLI, 'bench', '--nproc_per_node', '2', '--zero_stage', '3', '--cache-dir', join(cwd, 'cache')], { cwd });
    assert.equal(run.code, 2, run.output);
    assert.match(run.output, /--zero_stage 3: the ZeRO stages are 0, 1, 2/);
    assert.deepEqual(readdirSync(cwd), []);
    rmSync(cwd, { recursive: true, force: true });
  });
});

const skip = mpiSkipReason();

describe('bench --nproc_per_node 2 on MPI ranks', { skip: skip ?? false }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'zn-bench-ranks-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('tiny preset, zero_stage 2, one step per mode: 1 rank and 2 ranks, every JSON field, the same losses', async () => {
    const json = join(dir, 'ranks.json');
    const run = await runNode([STEPS, '--nproc_per_node', '2', '--preset', 'tiny', '--precision', 'f32', '--steps', '1', '--warmup', '0', '--zero_stage', '2', '--json', json, '--cache-dir', join(dir, 'cache')]);
    assert.equal(run.code, 0, run.output);
    assert.match(run.output, /\| preset \| mode \| precision \| ZeRO \| ranks \| threads\/rank \| step s \| tokens\/s \| tokens\/s per rank \| scaling efficiency \|/);
    const report = JSON.parse(readFileSync(json, 'utf8'));
    assert.deepEqual(
      report.results.map((r: { mode: string; ranks: number }) => `${r.mode} ${r.ranks}`),
      ['sft 1', 'sft 2', 'dpo 1', 'dpo 2'],
    );
    const tokens = { sft: 4 * 128, dpo: 2 * 4 * 128 } as Record<string, number>;
    for (const r of report.results) {
      assert.equal(r.zero_stage, 2);
      assert.equal(r.precision, 'f32');
      assert.equal(r.per_rank.length, r.ranks);
      // Rows r, r + 2, ...: each rank half the global batch's tokens.
      assert.deepEqual(r.per_rank.map((m: { tokens_per_step: number }) => m.tokens_per_step), Array(r.ranks).fill(tokens[r.mode]! / r.ranks));
      assert.equal(r.tokens_per_step, tokens[r.mode]);
      assert.ok(r.step_s > 0 && Number.isFinite(r.step_s));
      assert.ok(Math.abs(r.tokens_per_s * r.step_s - tokens[r.mode]!) < 1e-6, 'tokens/s = global tokens / step_s');
      assert.ok(Math.abs(r.tokens_per_s_per_rank * r.ranks - r.tokens_per_s) < 1e-6);
      assert.ok(r.scaling_efficiency > 0 && Number.isFinite(r.scaling_efficiency));
      for (const m of r.per_rank) {
        assert.ok(m.peak_bytes > m.planned_bytes && m.planned_bytes > 0, `peak ${m.peak_bytes}, planned ${m.planned_bytes}`);
        assert.equal(m.threads, r.threads_per_rank);
        assert.ok(m.allreduce_s >= 0 && (r.ranks > 1 || m.allreduce_s === 0));
        assert.equal(m.steps_s.length, 1);
      }
      // The same weights and batch: 2 ranks' summed loss is one rank's (ln(vocab) for SFT, ln 2 for DPO's first step).
      assert.ok(r.max_loss_difference < 1e-5, `loss difference ${r.max_loss_difference}`);
      assert.ok(Math.abs(r.per_rank[0].losses[0] - (r.mode === 'sft' ? Math.log(32000) : Math.LN2)) < (r.mode === 'sft' ? 0.2 : 1e-6));
    }
    const pairs = [report.results.slice(0, 2), report.results.slice(2)];
    for (const [one, two] of pairs) {
      assert.equal(one.scaling_efficiency, 1);
      assert.ok(Math.abs(two.scaling_efficiency - two.tokens_per_s / (2 * one.tokens_per_s)) < 1e-4);
    }
    assert.equal(report.settings.nproc_per_node, 2);
    assert.equal(report.settings.zero_stage, 2);
    assert.match(report.settings.mpirun, /^mpirun -n 2 .*rank-child\.js/);
    assert.equal(report.machine.load_average_start.length, 3);
    assert.equal(typeof report.versions['zephyr-native'], 'string');
  });
});
