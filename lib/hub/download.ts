/**
 * Downloads of Hub files into the shared cache (lib/hub/cache.ts), through Hugging Face's
 * JavaScript client (@huggingface/hub) for the HTTP: the revision's commit (model/dataset
 * info), the file list with each file's hash (the tree API), and the bytes (`downloadFile`,
 * which follows the Hub's redirects, serves ranges and reads Xet-stored files).
 *
 * The cache files are written here, not by the client's downloadFileToCacheDir, because that one
 * files a download under the commit that last touched the file instead of the revision's commit,
 * writes no refs/<revision>, restarts interrupted downloads and checks no hash: Python's
 * huggingface_hub would not find such files, and a bad transfer would be kept.
 *
 * Each file goes to blobs/<etag>.incomplete (Python's name, so either tool resumes the other's
 * partial file), continues from its length with a Range request after an interruption, is
 * checked against the Hub's hash (sha256 for LFS files, the git blob sha1 otherwise) and only
 * then renamed to its blob and linked from the snapshot. A mismatch deletes the partial file and
 * fails. A per-blob lock keeps two zephyr-native processes from appending to one partial file.
 */
import { createHash, type Hash } from 'node:crypto';
import { closeSync, createReadStream, existsSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';

import { datasetInfo, downloadFile, listFiles, type ListFileEntry, modelInfo } from '@huggingface/hub';

import { ZnError } from '../errors.js';
import { lockOutput } from '../io/output-lock.js';
import { blobPath, isCommitHash, linkSnapshotFile, repoCacheDir, repoFolderName, snapshotFileReady, writeRef } from './cache.js';
import type { HubEnvironment } from './environment.js';
import { OPTIONAL_MODEL_FILES, selectFiles, type Selection } from './file-selection.js';
import { hubError } from './hub-errors.js';
import { describeRepo, type RepoRef } from './repo-id.js';

export interface DownloadProgress {
  repo: string;
  file: string;
  /** Bytes of the selected files present so far (cached ones included). */
  bytes: number;
  totalBytes: number;
  /** Bytes that were already there when this download started (cached or partial). */
  startBytes: number;
  filesDone: number;
  files: number;
}

export interface DownloadOptions {
  env: HubEnvironment;
  /** Fetch override (tests, proxies). */
  fetch?: typeof fetch;
  onProgress?: (progress: DownloadProgress) => void;
  /** Called once per file that was fetched (not for files the cache had). */
  onFile?: (file: string, bytes: number) => void;
}

export interface DownloadResult {
  commit: string;
  /** snapshots/<commit>: the folder to read. */
  dir: string;
  files: string[];
  /** Bytes fetched over the network by this call. */
  fetchedBytes: number;
}

interface RemoteFile {
  path: string;
  size: number;
  etag: string;
  hash: 'sha256' | 'git-sha1';
}

function credentials(options: DownloadOptions): { hubUrl: string; accessToken?: string; fetch?: typeof fetch } {
  return { hubUrl: options.env.endpoint, ...(options.env.token ? { accessToken: options.env.token } : {}), ...(options.fetch ? { fetch: options.fetch } : {}) };
}

/** The commit a revision points at now, asked of the Hub. */
async function remoteCommit(repo: RepoRef, options: DownloadOptions): Promise<string> {
  const params = { name: repo.id, revision: repo.revision, additionalFields: ['sha' as const], ...credentials(options) };
  const info = repo.type === 'model' ? await modelInfo(params) : await datasetInfo(params);
  const sha = (info as { sha?: unknown }).sha;
  if (typeof sha !== 'string' || !isCommitHash(sha)) throw new ZnError(`${describeRepo(repo)}: the Hub gave no commit for revision '${repo.revision}'`);
  return sha;
}

function remoteFileOf(entry: ListFileEntry): RemoteFile {
  if (entry.lfs) return { path: entry.path, size: entry.lfs.size, etag: entry.lfs.oid, hash: 'sha256' };
  if (!entry.oid) throw new ZnError(`${entry.path}: the Hub listed the file without a hash`);
  return { path: entry.path, size: entry.size, etag: entry.oid, hash: 'git-sha1' };
}

async function remoteFiles(repo: RepoRef, commit: string, options: DownloadOptions): Promise<RemoteFile[]> {
  const files: RemoteFile[] = [];
  for await (const entry of listFiles({ repo: { type: repo.type, name: repo.id }, revision: commit, recursive: true, ...credentials(options) })) {
    if (entry.type === 'file') files.push(remoteFileOf(entry));
  }
  return files;
}

function newHash(file: RemoteFile): Hash {
  if (file.hash === 'sha256') return createHash('sha256');
  // git's blob id: sha1 over "blob <size>\0" and the contents.
  return createHash('sha1').update(`blob ${file.size}\0`);
}

async function hashExisting(path: string, hash: Hash): Promise<void> {
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
}

function sizeOf(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/**
 * Appends a response body to the partial file chunk by chunk, each chunk on disk before it is
 * counted, so an interrupted transfer keeps every byte it received for the next try to resume from.
 */
async function appendBody(body: Readable, path: string, onChunk: (chunk: Buffer) => void): Promise<void> {
  const fd = openSync(path, 'a');
  try {
    for await (const chunk of body) {
      const data = chunk as Buffer;
      let written = 0;
      while (written < data.length) written += writeSync(fd, data, written, data.length - written);
      onChunk(data);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Fetches one file into its blob: resumes a partial file, checks the hash, renames it into
 * place. `advance` is told of every byte written.
 */
async function fetchBlob(repo: RepoRef, commit: string, file: RemoteFile, blob: string, options: DownloadOptions, advance: (bytes: number) => void): Promise<number> {
  const incomplete = `${blob}.incomplete`;
  let offset = sizeOf(incomplete);
  if (offset > file.size) {
    rmSync(incomplete, { force: true });
    offset = 0;
  }
  const hash = newHash(file);
  if (offset > 0) await hashExisting(incomplete, hash);
  if (offset < file.size) {
    const remote = await downloadFile({ repo: { type: repo.type, name: repo.id }, path: file.path, revision: commit, ...credentials(options) });
    if (!remote) throw new ZnError(`${describeRepo(repo)}: ${file.path}: the Hub has no such file at ${commit}`);
    const body = Readable.fromWeb((offset > 0 ? remote.slice(offset) : remote).stream() as import('node:stream/web').ReadableStream);
    await appendBody(body, incomplete, (chunk) => {
      hash.update(chunk);
      advance(chunk.length);
    });
  }
  const written = sizeOf(incomplete);
  const digest = hash.digest('hex');
  if (written !== file.size || digest !== file.etag) {
    rmSync(incomplete, { force: true });
    const found = written !== file.size ? `${written} bytes, expected ${file.size}` : `${file.hash} ${digest}, expected ${file.etag}`;
    throw new ZnError(`${describeRepo(repo)}: ${file.path}: the downloaded file does not match the Hub's hash (${found}); refused and deleted, run again to download it anew`);
  }
  renameSync(incomplete, blob);
  return file.size - offset;
}

/** One file into the cache (blob + snapshot link), under a lock shared by our processes. */
async function cacheFile(repo: RepoRef, commit: string, file: RemoteFile, options: DownloadOptions, advance: (bytes: number) => void): Promise<number> {
  const repoDir = repoCacheDir(options.env.cacheDir, repo);
  const blob = blobPath(repoDir, file.etag);
  mkdirSync(dirname(blob), { recursive: true });
  let fetched = 0;
  if (!existsSync(blob)) {
    const locks = join(options.env.cacheDir, '.locks', repoFolderName(repo.type, repo.id));
    mkdirSync(locks, { recursive: true });
    const lock = lockOutput(blob, { what: 'download of', lockPath: join(locks, `${file.etag}.zephyr-native.lock`) });
    try {
      if (!existsSync(blob)) fetched = await fetchBlob(repo, commit, file, blob, options, advance);
    } finally {
      lock.release();
    }
  }
  linkSnapshotFile(repoDir, commit, file.path, file.etag);
  return fetched;
}

/**
 * Records the model files the revision does not have in .no_exist/<commit>/, as Python does, so
 * that a later offline run (ours or Python's) knows they are absent rather than not yet fetched.
 */
function markMissing(repoDir: string, commit: string, files: RemoteFile[]): void {
  const present = new Set(files.map((f) => f.path));
  const dir = join(repoDir, '.no_exist', commit);
  for (const name of OPTIONAL_MODEL_FILES) {
    if (present.has(name)) continue;
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, name), '');
  }
}

/**
 * Downloads the selected files of a revision into the cache and records the revision's commit
 * in refs/. Files the snapshot already has are not fetched again.
 */
export async function downloadRepo(repo: RepoRef, selection: Omit<Selection, 'type'>, options: DownloadOptions): Promise<DownloadResult> {
  const name = describeRepo(repo);
  const repoDir = repoCacheDir(options.env.cacheDir, repo);
  let commit: string;
  let selected: RemoteFile[];
  try {
    commit = await remoteCommit(repo, options);
    const files = await remoteFiles(repo, commit, options);
    const wanted = new Set(selectFiles(files.map((f) => f.path), { ...selection, type: repo.type }, name));
    // config.json last: a snapshot that has it has every other file of the download.
    selected = files.filter((f) => wanted.has(f.path)).sort((a, b) => Number(a.path === 'config.json') - Number(b.path === 'config.json'));
    if (repo.type === 'model' && !selection.include?.length) markMissing(repoDir, commit, files);
  } catch (error) {
    throw hubError(error, repo, options.env);
  }
  if (selected.length === 0) throw new ZnError(`${name}: none of the repository's files are ones zephyr-native reads${selection.splits?.length ? ` for split ${selection.splits.join(', ')}` : ''}${selection.include?.length ? ` matching ${selection.include.join(', ')}` : ''}`);
  const totalBytes = selected.reduce((sum, f) => sum + f.size, 0);
  const ready = (f: RemoteFile) => snapshotFileReady(repoDir, commit, f.path) || existsSync(blobPath(repoDir, f.etag));
  let bytes = selected.filter(ready).reduce((sum, f) => sum + f.size, 0);
  let filesDone = 0;
  let fetchedBytes = 0;
  const startBytes = bytes + selected.filter((f) => !ready(f)).reduce((sum, f) => sum + Math.min(f.size, sizeOf(`${blobPath(repoDir, f.etag)}.incomplete`)), 0);
  bytes = startBytes;
  const report = (file: string) => options.onProgress?.({ repo: name, file, bytes, totalBytes, startBytes, filesDone, files: selected.length });
  for (const file of selected) {
    report(file.path);
    try {
      const fetched = await cacheFile(repo, commit, file, options, (n) => {
        bytes += n;
        report(file.path);
      });
      if (fetched > 0) options.onFile?.(file.path, fetched);
      fetchedBytes += fetched;
    } catch (error) {
      throw hubError(error, repo, options.env, file.path);
    }
    filesDone++;
    report(file.path);
  }
  writeRef(repoDir, repo.revision, commit);
  return { commit, dir: join(repoDir, 'snapshots', commit), files: selected.map((f) => f.path), fetchedBytes };
}
