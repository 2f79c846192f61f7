/**
 * Crash-safe writes: content goes to a temporary file in the destination's folder, is fsynced,
 * then renamed over the destination (and the folder fsynced), so a reader sees the old file or
 * the new one, never half of one. Folders are published the same way (write into a temporary
 * folder, fsync every file, rename).
 */
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

function tempName(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Date.now()}`);
}

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export function fsyncFile(path: string): void {
  const fd = openSync(path, 'r+');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export function writeFileAtomic(path: string, content: string | Uint8Array): void {
  const temp = tempName(path);
  try {
    const fd = openSync(temp, 'w');
    try {
      const data = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
      let offset = 0;
      while (offset < data.length) offset += writeSync(fd, data, offset, data.length - offset);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, path);
    fsyncDir(dirname(path));
  } catch (error) {
    rmSync(temp, { force: true });
    throw error;
  }
}

export function writeJsonAtomic(path: string, value: unknown): void {
  writeFileAtomic(path, `${JSON.stringify(value, null, 2)}\n`);
}

/** Renames a fully written (and fsynced) temporary folder into place. */
export function publishDir(tempDir: string, finalDir: string): void {
  rmSync(finalDir, { recursive: true, force: true });
  renameSync(tempDir, finalDir);
  fsyncDir(dirname(finalDir));
}
