import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { packageRoot } from '../lib/native.js';

const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');

function run(...args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
}

describe('cli', () => {
  it('--help lists every subcommand', () => {
    const result = run('--help');
    assert.equal(result.status, 0);
    for (const name of ['train', 'sft', 'dpo', 'generate', 'binarize', 'rate', 'score', 'bench', 'data']) {
      assert.match(result.stdout, new RegExp(`zephyr-native ${name}\\b`), `--help lacks ${name}`);
    }
  });

  it("package.json's bin runs as a program after build:ts (what npx and npm link execute)", () => {
    const manifest = JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8'));
    const result = spawnSync(join(packageRoot(), manifest.bin['zephyr-native']), ['--version'], {
      encoding: 'utf8',
    });
    assert.equal(result.error, undefined, `the bin is not executable: ${result.error?.message}`);
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stdout.trim(), manifest.version);
  });

  it('--version prints the package version', () => {
    const result = run('--version');
    assert.equal(result.status, 0);
    assert.match(result.stdout.trim(), /^\d+\.\d+\.\d+/);
  });

  it('a usage error exits 2 with one line', () => {
    const result = run('no-such-command');
    assert.equal(result.status, 2);
    assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
    assert.match(result.stderr, /^zephyr-native: usage:/);
  });

  it('info reports the backend through the real addon', () => {
    const result = run('info');
    assert.equal(result.status, 0, result.stderr);
    assert.equal(JSON.parse(result.stdout).backend, 'cpu');
  });

  it('a runtime failure exits 1 with a one-line reason; --verbose adds the stack', () => {
    const plain = run('info', '--device', 'cuda');
    if (plain.status === 0) return; // a CUDA build is present on this machine
    assert.equal(plain.status, 1);
    assert.equal(plain.stderr.trim().split('\n').length, 1, plain.stderr);
    const verbose = run('info', '--device', 'cuda', '--verbose');
    assert.equal(verbose.status, 1);
    assert.match(verbose.stderr, /\n\s+at /);
  });
});
