import { SingleBar } from 'cli-progress';
import type { CommandModule } from 'yargs';

import { judgeApiKeyFromEnv } from '../aif/judge.js';
import { type RateProgress, type RateStats, rateFile } from '../aif/rate.js';
import { countRows } from '../data/readers.js';
import { UsageError, ZnError } from '../errors.js';
import { untilStopSignal } from './stop-signals.js';
import { lockOutputFile, resolveDatasetPath } from './hub-args.js';

interface RateArgs {
  input: string;
  split?: string;
  output: string;
  judge_url: string;
  judge_model: string;
  concurrency: number;
  timeout: number;
  max_retries: number;
  backoff_base: number;
  backoff_max: number;
  temperature: number;
  max_tokens: number;
}

/** `zephyr-native rate`: AI-judge ratings of completions, resumable (lib/aif/rate.ts). */
export const rateCommand: CommandModule<object, RateArgs> = {
  command: 'rate',
  describe: 'Rate completions with an AI judge behind an OpenAI-compatible API',
  builder: (yargs) =>
    yargs
      .option('input', { type: 'string', demandOption: true, describe: 'Rows {instruction|prompt, completions[]}: .jsonl, .json, .parquet or an HF folder' })
      .option('split', { type: 'string', describe: 'Split to read when --input is a dataset folder with several' })
      .option('output', { type: 'string', demandOption: true, describe: 'JSON Lines file, appended row by row; rerun to resume' })
      .option('judge_url', { type: 'string', demandOption: true, describe: 'OpenAI-compatible base URL (https://host/v1) or .../chat/completions' })
      .option('judge_model', { type: 'string', demandOption: true, describe: 'Model name sent to the judge' })
      .option('concurrency', { type: 'number', default: 8, describe: 'Requests in flight at once' })
      .option('timeout', { type: 'number', default: 120, describe: 'Seconds per request attempt' })
      .option('max_retries', { type: 'number', default: 6, describe: 'Retries per request on 429, 5xx, timeouts and network errors' })
      .option('backoff_base', { type: 'number', default: 1, describe: 'Seconds: backoff is random * min(backoff_max, backoff_base * 2^attempt)' })
      .option('backoff_max', { type: 'number', default: 60, describe: 'Seconds: the longest backoff (Retry-After is honoured as sent)' })
      .option('temperature', { type: 'number', default: 0, describe: 'Sampling temperature of the judge' })
      .option('max_tokens', { type: 'number', default: 1024, describe: 'Longest judge answer, in tokens' })
      .check((args) => {
        if (!/\.jsonl$/i.test(args.output)) throw new UsageError(`--output must be a .jsonl file (rate appends to it row by row), got ${args.output}`);
        if (!Number.isInteger(args.concurrency) || args.concurrency < 1) throw new UsageError(`--concurrency must be a positive integer, got ${args.concurrency}`);
        if (!Number.isInteger(args.max_retries) || args.max_retries < 0) throw new UsageError(`--max_retries must be an integer >= 0, got ${args.max_retries}`);
        for (const name of ['timeout', 'backoff_base', 'backoff_max'] as const) {
          if (!(args[name] > 0)) throw new UsageError(`--${name} must be a positive number of seconds, got ${args[name]}`);
        }
        try {
          new URL(args.judge_url);
        } catch {
          throw new UsageError(`--judge_url is not a URL: ${args.judge_url}`);
        }
        return true;
      }),
  handler: async (args) => {
    lockOutputFile(args.output);
    const input = await resolveDatasetPath(args.input, { splits: args.split ? [args.split] : [] });
    const total = await countRows(input, { split: args.split });
    const apiKey = judgeApiKeyFromEnv();
    if (!apiKey) process.stderr.write('rate: no ZN_JUDGE_API_KEY or OPENAI_API_KEY set: requests go without an Authorization header\n');
    const progress = new ProgressDisplay(total);
    let stats: RateStats;
    try {
      stats = await untilStopSignal((signal) =>
        rateFile(input, args.split, {
          output: args.output,
          url: args.judge_url,
          model: args.judge_model,
          apiKey,
          concurrency: args.concurrency,
          timeoutMs: args.timeout * 1000,
          maxRetries: args.max_retries,
          backoffBaseMs: args.backoff_base * 1000,
          backoffMaxMs: args.backoff_max * 1000,
          temperature: args.temperature,
          maxTokens: args.max_tokens,
          total,
          signal,
          onProgress: (p) => progress.update(p),
          onRetry: () => progress.retried(),
        }),
      );
    } finally {
      progress.stop();
    }
    process.stderr.write(summary(stats, args.output));
    if (stats.failed > 0) {
      throw new ZnError(`${stats.failed} rows were not rated (the judge stayed unavailable); run the same command again to rate them`);
    }
  },
};

/**
 * A cli-progress bar on a terminal; on anything else (a log file, CI) a plain status line every
 * 10 s. Speed and ETA count rows rated in this run, so resumed rows do not make it look fast.
 */
class ProgressDisplay {
  private readonly bar: SingleBar;
  private readonly started = Date.now();
  private retries = 0;
  private last: RateProgress = { handled: 0, rated: 0, resumed: 0, failed: 0 };

  constructor(private readonly total: number) {
    const tty = Boolean(process.stderr.isTTY);
    this.bar = new SingleBar({
      stream: process.stderr,
      format: tty
        ? 'rate {bar} {value}/{total} rows | {speed} rows/s | ETA {eta_text} | failed {failed} | retries {retries}'
        : 'rate: {value}/{total} rows ({percentage}%), {speed} rows/s, ETA {eta_text}, failed {failed}, retries {retries}',
      noTTYOutput: true,
      notTTYSchedule: 10_000,
      hideCursor: tty,
      gracefulExit: false,
    });
    this.bar.start(total, 0, this.payload());
  }

  update(progress: RateProgress): void {
    this.last = progress;
    this.bar.update(progress.handled, this.payload());
  }

  retried(): void {
    this.retries++;
    this.bar.update(this.last.handled, this.payload());
  }

  stop(): void {
    this.bar.update(this.last.handled, this.payload());
    this.bar.stop();
  }

  private payload() {
    const seconds = (Date.now() - this.started) / 1000;
    const speed = seconds > 0 ? this.last.rated / seconds : 0;
    const remaining = Math.max(0, this.total - this.last.handled);
    const eta = speed > 0 ? remaining / speed : Infinity;
    return { speed: speed.toFixed(2), eta_text: formatDuration(eta), failed: this.last.failed, retries: this.retries };
  }
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function summary(stats: RateStats, output: string): string {
  const lines = [
    `rate: ${stats.rows} rows: ${stats.rated} rated, ${stats.resumed} already in the output, ${stats.failed} failed, ${stats.invalid} invalid`,
    `  judge: ${stats.requests} requests, ${stats.retries} retries, ${stats.reasked} answers asked again, ${stats.aspectFailures} aspects recorded as failures`,
    `  output: ${output}`,
    ...stats.examples.map((example) => `  e.g. ${example}`),
  ];
  return `${lines.join('\n')}\n`;
}
