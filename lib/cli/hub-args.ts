/**
 * Command-line paths that may be Hub ids (lib/hub/resolve.ts): a model folder or `org/name`, a
 * dataset file or folder or `org/name`; and the lock that makes a command the only writer of
 * its output (lib/io/output-lock.ts).
 */
import { existsSync, statSync } from 'node:fs';

import { UsageError } from '../errors.js';
import { isRepoId } from '../hub/repo-id.js';
import { lockOutput, type OutputLock } from '../io/output-lock.js';

export { resolveDatasetPath, resolveModelPath } from '../hub/resolve.js';

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
