/**
 * Uploads of a local folder (a model folder, an adapter, a dataset) to a Hub repository in one
 * commit, through @huggingface/hub: the repository is created when missing (private when asked),
 * the branch too; large files go through the Hub's LFS/Xet transfer, which hashes them and skips
 * what the Hub already holds. Progress (bytes, rate, ETA) as for downloads.
 */
import { readdirSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { pathToFileURL } from 'node:url';

import { createBranch, createRepo, HubApiError, uploadFilesWithProgress } from '@huggingface/hub';

import { UsageError, ZnError } from '../errors.js';
import type { HubEnvironment } from './environment.js';
import { hubError } from './hub-errors.js';
import { type ProgressMode, transferReporter } from './progress.js';
import { checkRepoId, DEFAULT_REVISION, type RepoRef, type RepoType } from './repo-id.js';

export interface UploadOptions {
  env: HubEnvironment;
  type?: RepoType;
  /** Branch to commit to (created from main when missing). */
  revision?: string | null;
  private?: boolean | null;
  commitMessage?: string;
  /** Folder in the repository the files go under ('' : its root). */
  pathInRepo?: string;
  /** Which files of the folder to send (paths relative to it, '/'-separated); default all but lock and temporary files. */
  filter?: (path: string) => boolean;
  progress?: ProgressMode;
  fetch?: typeof fetch;
}

export interface UploadResult {
  repo: string;
  commit: string;
  url: string;
  files: string[];
}

/**
 * Lock files, temporary files of atomic writes (`.name.tmp-...`), partial downloads, and what
 * huggingface_hub's upload_folder leaves out too (`.git/`, `.cache/huggingface/`) never leave
 * the machine.
 */
function isScratch(path: string): boolean {
  const parts = path.split('/');
  const name = parts[parts.length - 1]!;
  if (parts.includes('.git') || path.startsWith('.cache/huggingface/') || path.includes('/.cache/huggingface/')) return true;
  return name.endsWith('.lock') || name.endsWith('.incomplete') || /^\..+\.tmp/.test(parts.find((p) => p.startsWith('.')) ?? '');
}

function listFolder(dir: string): string[] {
  const out: string[] = [];
  const walk = (folder: string): void => {
    for (const entry of readdirSync(folder, { withFileTypes: true })) {
      const path = join(folder, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (statSync(path).isFile()) out.push(relative(dir, path).split(sep).join('/'));
    }
  };
  walk(dir);
  return out.sort();
}

/** Runs a Hub call whose 409 (already exists) is the outcome we want. */
async function existsOk(call: () => Promise<unknown>): Promise<void> {
  try {
    await call();
  } catch (error) {
    if (!(error instanceof HubApiError && error.statusCode === 409)) throw error;
  }
}

export async function uploadFolder(dir: string, repoId: string, options: UploadOptions): Promise<UploadResult> {
  checkRepoId(repoId, 'upload');
  if (options.env.offline) throw new UsageError(`upload to ${repoId}: HF_HUB_OFFLINE is set; unset it to upload`);
  const token = options.env.token;
  if (!token) throw new UsageError(`upload to ${repoId}: no Hub token (set HF_TOKEN, or run \`hf auth login\`)`);
  let files: string[];
  try {
    files = listFolder(dir).filter((path) => !isScratch(path) && (options.filter?.(path) ?? true));
  } catch (error) {
    throw new ZnError(`upload: cannot read ${dir}: ${(error as Error).message}`);
  }
  if (files.length === 0) throw new ZnError(`upload: ${dir} has no files to upload`);
  const type = options.type ?? 'model';
  const branch = options.revision ?? DEFAULT_REVISION;
  const repo: RepoRef = { type, id: repoId, revision: branch };
  const common = { repo: { type, name: repoId }, hubUrl: options.env.endpoint, accessToken: token, ...(options.fetch ? { fetch: options.fetch } : {}) };
  const prefix = options.pathInRepo ? `${options.pathInRepo.replace(/\/+$/, '')}/` : '';
  const sizes = new Map(files.map((path) => [`${prefix}${path}`, statSync(join(dir, path)).size]));
  const totalBytes = [...sizes.values()].reduce((a, b) => a + b, 0);
  const reporter = transferReporter(options.progress ?? 'auto', 'upload');
  try {
    await existsOk(() => createRepo({ ...common, ...(options.private === null || options.private === undefined ? {} : { private: options.private }) }));
    if (branch !== DEFAULT_REVISION) await existsOk(() => createBranch({ ...common, branch }));
    const done = new Map<string, number>();
    const events = uploadFilesWithProgress({
      ...common,
      branch,
      commitTitle: options.commitMessage ?? `Upload ${files.length} files with zephyr-native`,
      files: files.map((path) => ({ path: `${prefix}${path}`, content: pathToFileURL(join(dir, path)) })),
    });
    let result: IteratorResult<unknown, { commit: { oid: string; url: string } } | undefined>;
    while (!(result = await events.next()).done) {
      const event = result.value as { event: string; path?: string; progress?: number; state?: string };
      if (event.event !== 'fileProgress' || event.state !== 'uploading' || !event.path) continue;
      done.set(event.path, (sizes.get(event.path) ?? 0) * (event.progress ?? 0));
      const bytes = [...done.values()].reduce((a, b) => a + b, 0);
      reporter.update({ repo: repoId, file: event.path, bytes, totalBytes, startBytes: 0, filesDone: 0, files: files.length });
    }
    const output = result.value;
    if (!output) throw new ZnError(`upload to ${repoId}: the Hub returned no commit`);
    return { repo: repoId, commit: output.commit.oid, url: output.commit.url, files: files.map((path) => `${prefix}${path}`) };
  } catch (error) {
    throw hubError(error, repo, options.env, undefined, 'upload');
  } finally {
    reporter.stop();
  }
}
