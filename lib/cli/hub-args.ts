/**
 * Command-line paths that may be Hub ids (lib/hub/resolve.ts): a model folder or `org/name`, a
 * dataset file or folder or `org/name`; and the lock that makes a command the only writer of
 * its output (lib/io/output-lock.ts).
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { UsageError } from '../errors.js';
import { isRepoId } from '../hub/repo-id.js';
import { lockOutput, type OutputLock } from '../io/output-lock.js';

import { resolveDatasetPath } from '../hub/resolve.js';

export { resolveDatasetPath, resolveModelPath } from '../hub/resolve.js';

/**
 * `eval --questions`: a question.jsonl file, or a Hub dataset holding one (its `question.jsonl`,
 * else its only .jsonl file, as FastChat's data/<bench>/question.jsonl).
 */
export async function resolveQuestionsFile(value: string): Promise<string> {
  const dir = await resolveDatasetPath(value, { include: ['*.jsonl'] });
  if (dir === value) return value;
  const files = readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.jsonl'));
  const chosen = files.find((f) => f.split('/').pop() === 'question.jsonl') ?? (files.length === 1 ? files[0] : undefined);
  if (!chosen) throw new UsageError(`--questions: the Hub dataset ${value} has ${files.length === 0 ? 'no .jsonl file' : `several .jsonl files and no question.jsonl (${files.join(', ')})`}`);
  return join(dir, chosen);
}

/** For a flag's check: an existing folder, or a Hub id resolved when the command runs. */
export function checkModelArg(flag: string, value: string): void {
  if (existsSync(value) ? !statSync(value).isDirectory() : !isRepoId(value)) {
    throw new UsageError(`--${flag}: no such model folder: ${value}`);
  }
}

/** The command's output, locked for the life of the process. */
export function lockOutputFile(path: string, flag = '--output'): OutputLock {
  return lockOutput(path, { what: flag });
}
