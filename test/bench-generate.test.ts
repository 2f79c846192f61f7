/**
 * A seconds-long smoke of `npm run bench:generate` (tiny preset, batch 2, a few tokens, both
 * implementations where the reference Python stack is there): the JSON report's fields and that
 * its numbers are sane. No speed is asserted: the figures depend on the machine and its load.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { packageRoot } from '../lib/native.js';
import { referencePython } from './support/python.js';

const FIELDS = ['preset', 'implementation', 'device', 'precision', 'batch', 'prompt_tokens', 'new_tokens', 'prefill_tokens_per_s', 'decode_tokens_per_s', 'peak_bytes'];

describe('bench:generate', () => {
  const dir = mkdtempSync(join(tmpdir(), 'zn-bench-generate-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('tiny preset, batch 2: a row per implementation with every field, and the table', () => {
    const file = join(dir, 'generate.json');
    const script = join(packageRoot(), 'dist', 'bench', 'generate.js');
    const result = spawnSync(process.execPath, [script, '--preset', 'tiny', '--batch', '2', '--prompt-tokens', '6', '--new-tokens', '4', '--json', file], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /\| zephyr-native \| 2 \| 6 \| 4 \|/);
    const report = JSON.parse(readFileSync(file, 'utf8')) as { results: Record<string, unknown>[]; settings: { threads: number } };
    const implementations = referencePython(['torch', 'transformers']).python ? ['zephyr-native', 'transformers'] : ['zephyr-native'];
    assert.deepEqual(report.results.map((r) => r.implementation), implementations);
    for (const row of report.results) {
      for (const field of FIELDS) assert.ok(field in row, `${row.implementation}: ${field}`);
      assert.deepEqual([row.preset, row.device, row.precision, row.batch, row.prompt_tokens, row.new_tokens], ['tiny', 'cpu', 'f32', 2, 6, 4]);
      for (const field of ['prefill_tokens_per_s', 'decode_tokens_per_s', 'peak_bytes'] as const) {
        assert.ok(Number.isFinite(row[field]) && (row[field] as number) > 0, `${row.implementation}: ${field} = ${row[field]}`);
      }
      assert.equal(row.threads, report.settings.threads, 'both sides use the same thread count');
    }
  });
});
