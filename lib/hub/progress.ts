/**
 * Download and upload progress on stderr: a bar (bytes, rate, ETA) on a terminal, and otherwise
 * a line per finished file and a status line every 10 s, so CI logs stay readable.
 */
import cliProgress from 'cli-progress';

import type { DownloadProgress } from './download.js';

export type ProgressMode = 'auto' | 'silent';

export interface TransferReporter {
  update(progress: DownloadProgress): void;
  file(file: string, bytes: number): void;
  stop(): void;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds)) return '-';
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m` : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

/** Rate and ETA over the bytes fetched by this process (not those already cached). */
function rates(progress: DownloadProgress, startedAt: number): { rate: string; eta: string } {
  const seconds = (Date.now() - startedAt) / 1000;
  const perSecond = seconds > 0 ? (progress.bytes - progress.startBytes) / seconds : 0;
  return { rate: `${formatBytes(perSecond)}/s`, eta: formatSeconds(perSecond > 0 ? (progress.totalBytes - progress.bytes) / perSecond : Infinity) };
}

class BarReporter implements TransferReporter {
  private bar: cliProgress.SingleBar | null = null;
  private readonly startedAt = Date.now();

  constructor(private readonly verb: string) {}

  update(progress: DownloadProgress): void {
    const { rate, eta } = rates(progress, this.startedAt);
    const payload = { repo: progress.repo, done: formatBytes(progress.bytes), size: formatBytes(progress.totalBytes), rate, eta, files: `${progress.filesDone}/${progress.files}` };
    if (!this.bar) {
      this.bar = new cliProgress.SingleBar(
        { format: `${this.verb} {repo} [{bar}] {done}/{size} | {rate} | ETA {eta} | {files} files`, stream: process.stderr, hideCursor: true },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(Math.max(1, progress.totalBytes), progress.bytes, payload);
    } else this.bar.update(progress.bytes, payload);
  }

  file(): void {}

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}

class LineReporter implements TransferReporter {
  private readonly startedAt = Date.now();
  private lastLine = 0;
  private last: DownloadProgress | null = null;

  constructor(private readonly verb: string) {}

  update(progress: DownloadProgress): void {
    this.last = progress;
    if (Date.now() - this.lastLine < 10_000) return;
    this.lastLine = Date.now();
    const { rate, eta } = rates(progress, this.startedAt);
    process.stderr.write(`${this.verb} ${progress.repo}: ${formatBytes(progress.bytes)}/${formatBytes(progress.totalBytes)}, ${rate}, ETA ${eta}\n`);
  }

  file(file: string, bytes: number): void {
    process.stderr.write(`${this.verb} ${this.last?.repo ?? ''}: ${file} (${formatBytes(bytes)})\n`);
  }

  stop(): void {}
}

class SilentReporter implements TransferReporter {
  update(): void {}
  file(): void {}
  stop(): void {}
}

export function transferReporter(mode: ProgressMode, verb: string): TransferReporter {
  if (mode === 'silent') return new SilentReporter();
  return process.stderr.isTTY ? new BarReporter(verb) : new LineReporter(verb);
}
