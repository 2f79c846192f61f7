/**
 * huggingface_hub's cache layout (huggingface_hub/file_download.py), read and written exactly
 * as Python does so that both share one cache:
 *
 *   <cache>/models--org--name/blobs/<etag>                 file contents, named by the Hub's hash
 *   <cache>/models--org--name/blobs/<etag>.incomplete      a download in progress (resumed by both)
 *   <cache>/models--org--name/snapshots/<commit>/<path>    relative symlink to ../../blobs/<etag>
 *   <cache>/models--org--name/refs/<revision>              the commit a branch or tag pointed at
 *   <cache>/datasets--org--name/...                        the same for datasets
 *
 * The etag is the git-LFS sha256 of a large file, the git blob sha1 of a small one.
 */
import { existsSync, lstatSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';

import { writeFileAtomic } from '../io/atomic.js';
import type { RepoRef, RepoType } from './repo-id.js';

const COMMIT_HASH = /^[0-9a-f]{40}$/;

export function isCommitHash(revision: string): boolean {
  return COMMIT_HASH.test(revision);
}

/** `models--org--name`: huggingface_hub's repo_folder_name. */
export function repoFolderName(type: RepoType, id: string): string {
  return [`${type}s`, ...id.split('/')].join('--');
}

export function repoCacheDir(cacheDir: string, repo: { type: RepoType; id: string }): string {
  return join(cacheDir, repoFolderName(repo.type, repo.id));
}

/** The commit a revision names in the cache: itself when it is a hash, else refs/<revision>. */
export function cachedCommit(repoDir: string, revision: string): string | null {
  if (isCommitHash(revision)) return revision;
  const ref = join(repoDir, 'refs', revision);
  if (!existsSync(ref)) return null;
  const commit = readFileSync(ref, 'utf8').trim();
  return isCommitHash(commit) ? commit : null;
}

/** The snapshot folder of a cached revision, or null when the cache does not have it. */
export function cachedSnapshot(cacheDir: string, repo: RepoRef): { commit: string; dir: string } | null {
  const repoDir = repoCacheDir(cacheDir, repo);
  const commit = cachedCommit(repoDir, repo.revision);
  if (commit === null) return null;
  const dir = join(repoDir, 'snapshots', commit);
  return existsSync(dir) ? { commit, dir } : null;
}

/** Records that `revision` (a branch or tag) points at `commit`, as Python's _cache_commit_hash_for_specific_revision. */
export function writeRef(repoDir: string, revision: string, commit: string): void {
  if (revision === commit) return;
  const ref = join(repoDir, 'refs', revision);
  if (existsSync(ref) && readFileSync(ref, 'utf8').trim() === commit) return;
  mkdirSync(dirname(ref), { recursive: true });
  writeFileAtomic(ref, commit);
}

export function blobPath(repoDir: string, etag: string): string {
  return join(repoDir, 'blobs', etag);
}

export function snapshotFilePath(repoDir: string, commit: string, path: string): string {
  return join(repoDir, 'snapshots', commit, ...path.split('/'));
}

/**
 * Points snapshots/<commit>/<path> at its blob with a relative symlink (as Python's
 * _create_symlink), replacing whatever was there; the link appears whole (made aside, renamed).
 */
export function linkSnapshotFile(repoDir: string, commit: string, path: string, etag: string): string {
  const pointer = snapshotFilePath(repoDir, commit, path);
  mkdirSync(dirname(pointer), { recursive: true });
  const target = relative(dirname(pointer), blobPath(repoDir, etag));
  const temp = `${pointer}.tmp-${process.pid}`;
  rmSync(temp, { force: true });
  symlinkSync(target, temp);
  renameSync(temp, pointer);
  return pointer;
}

/** Whether a snapshot file exists and is usable (a link to an existing blob, or a plain file). */
export function snapshotFileReady(repoDir: string, commit: string, path: string): boolean {
  const pointer = snapshotFilePath(repoDir, commit, path);
  try {
    lstatSync(pointer);
  } catch {
    return false;
  }
  return existsSync(pointer);
}
