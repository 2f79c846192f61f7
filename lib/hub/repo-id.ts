/**
 * Hub repository ids (`org/name`) and how a value that names a path or a repository is told
 * apart: an existing local path always wins; otherwise a value shaped like `org/name` (as
 * huggingface_hub's validate_repo_id accepts them) is a Hub repository.
 */
import { existsSync } from 'node:fs';

import { UsageError } from '../errors.js';

export type RepoType = 'model' | 'dataset';

export interface RepoRef {
  type: RepoType;
  /** `org/name`. */
  id: string;
  /** A branch, tag or commit hash; `main` when not given. */
  revision: string;
}

export const DEFAULT_REVISION = 'main';

// huggingface_hub: `[\w\-.]{1,96}` per part, no `--` or `..`, no leading or trailing `-` or `.`.
const PART = /^(?!.*(--|\.\.))[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?$/;

/** Whether `value` has the shape of an `org/name` repository id. */
export function isRepoId(value: string): boolean {
  const parts = value.split('/');
  return parts.length === 2 && parts.every((part) => PART.test(part)) && !value.endsWith('.git');
}

/** A Hub repository when `value` is not an existing local path and looks like `org/name`; else null. */
export function hubRepoOf(value: string, type: RepoType, revision: string | null | undefined): RepoRef | null {
  if (existsSync(value) || !isRepoId(value)) return null;
  return { type, id: value, revision: revision ?? DEFAULT_REVISION };
}

export function checkRepoId(value: string, what: string): string {
  if (!isRepoId(value)) throw new UsageError(`${what}: '${value}' is not a Hub repository id (expected org/name)`);
  return value;
}

/** `org/name` (and `@revision` when it is not main), as messages show a repository. */
export function describeRepo(repo: RepoRef): string {
  const kind = repo.type === 'dataset' ? 'dataset ' : '';
  return `${kind}${repo.id}${repo.revision === DEFAULT_REVISION ? '' : `@${repo.revision}`}`;
}
