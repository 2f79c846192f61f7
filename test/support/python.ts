/**
 * The Python reference stack (torch, transformers, trl, safetensors, tokenizers) for
 * conformance tests: ZN_PYTHON, else .venv-ref/bin/python (scripts/setup-python-reference.sh),
 * else python3. When the packages are missing, tests skip with the reason.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { packageRoot } from '../../lib/native.js';

export interface ReferencePython {
  python: string | null;
  /** Why the reference tests skip (null when python is usable). */
  skipReason: string | null;
}

const cache = new Map<string, ReferencePython>();

export function referencePython(modules = ['torch', 'transformers', 'trl', 'safetensors', 'tokenizers']): ReferencePython {
  const key = modules.join(',');
  const cached = cache.get(key);
  if (cached) return cached;
  const venv = join(packageRoot(), '.venv-ref', 'bin', 'python');
  const python = process.env.ZN_PYTHON ?? (existsSync(venv) ? venv : 'python3');
  const probe = spawnSync(python, ['-c', `import ${modules.join(', ')}`], { encoding: 'utf8' });
  const found: ReferencePython =
    probe.status === 0
      ? { python, skipReason: null }
      : {
          python: null,
          skipReason:
            `reference Python stack not available (${python}: ${(probe.stderr || String(probe.error ?? '')).trim().split('\n').pop()}); ` +
            'run `bash scripts/setup-python-reference.sh` or set ZN_PYTHON',
        };
  cache.set(key, found);
  return found;
}

/** Runs a Python script with arguments; throws with its stderr when it fails. */
export function runPython(python: string, script: string, args: string[], timeoutMs = 300_000): string {
  const result = spawnSync(python, [script, ...args], { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 1 << 28 });
  if (result.status !== 0) {
    throw new Error(`${script} failed (${result.status ?? result.signal}): ${result.stderr}`);
  }
  return result.stdout;
}
