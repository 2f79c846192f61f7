/**
 * Progress on stderr: a bar (step, loss, tokens/s, ETA) on a TTY, plain log lines otherwise
 * (CI, pipes, log files), so logs stay readable either way.
 */
import cliProgress from 'cli-progress';

import type { LogEntry } from './state.js';

export interface ProgressReporter {
  start(totalSteps: number, label: string): void;
  step(step: number, fields: { loss: number; tokensPerSecond: number }): void;
  log(entry: LogEntry): void;
  message(text: string): void;
  stop(): void;
}

function formatEntry(entry: LogEntry): string {
  return Object.entries(entry)
    .map(([k, v]) => `${k}=${typeof v === 'number' ? Number(v.toPrecision(5)) : v}`)
    .join(' ');
}

class BarReporter implements ProgressReporter {
  private bar: cliProgress.SingleBar | null = null;

  start(totalSteps: number, label: string): void {
    this.bar = new cliProgress.SingleBar(
      {
        format: `${label} [{bar}] {value}/{total} steps | loss {loss} | {tps} tok/s | ETA {eta_formatted}`,
        stream: process.stderr,
        hideCursor: true,
      },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(totalSteps, 0, { loss: '-', tps: '-' });
  }

  step(step: number, fields: { loss: number; tokensPerSecond: number }): void {
    this.bar?.update(step, { loss: fields.loss.toFixed(4), tps: Math.round(fields.tokensPerSecond) });
  }

  log(entry: LogEntry): void {
    this.message(formatEntry(entry));
  }

  message(text: string): void {
    if (this.bar) {
      process.stderr.write('\r\x1b[2K');
      process.stderr.write(`${text}\n`);
      this.bar.render();
    } else {
      process.stderr.write(`${text}\n`);
    }
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}

class LineReporter implements ProgressReporter {
  private label = '';
  private total = 0;

  start(totalSteps: number, label: string): void {
    this.label = label;
    this.total = totalSteps;
    process.stderr.write(`${label}: ${totalSteps} steps\n`);
  }

  step(): void {}

  log(entry: LogEntry): void {
    const step = entry.step ?? '?';
    process.stderr.write(`${this.label} step ${step}/${this.total}: ${formatEntry(entry)}\n`);
  }

  message(text: string): void {
    process.stderr.write(`${text}\n`);
  }

  stop(): void {}
}

class SilentReporter implements ProgressReporter {
  start(): void {}
  step(): void {}
  log(): void {}
  message(): void {}
  stop(): void {}
}

export function progressReporter(mode: 'auto' | 'silent' = 'auto'): ProgressReporter {
  if (mode === 'silent') return new SilentReporter();
  return process.stderr.isTTY ? new BarReporter() : new LineReporter();
}
