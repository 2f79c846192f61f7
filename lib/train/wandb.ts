/**
 * `report_to: wandb` through Weights & Biases' JavaScript client (@wandb/sdk), as HF Trainer's
 * WandbCallback does it: the run config at init, then each logged entry under HF's names
 * (`train/loss`, `eval/loss`, ...) with `train/global_step`. The environment is W&B's:
 * WANDB_PROJECT (default `huggingface`, as HF), WANDB_ENTITY, WANDB_API_KEY (else ~/.netrc from
 * `wandb login`), WANDB_BASE_URL, WANDB_MODE.
 *
 * WANDB_MODE=disabled sends nothing and trains. WANDB_MODE=offline (or dryrun) is refused: the
 * JavaScript client cannot record an offline run for `wandb sync` (its offline setting still
 * calls the API and then drops the history), and dropping the logs quietly is not an option.
 * Online without a key is an error before training starts.
 */
import type WandbSdk from '@wandb/sdk';

import { UsageError } from '../errors.js';
import { type Reporter, rewriteLogs } from './reporter.js';

/** How long the run may take to open before the stage fails (the client retries for minutes). */
const INIT_TIMEOUT_MS = 60_000;
const SIGNALS = ['SIGINT', 'SIGTERM', 'beforeExit'] as const;

export type WandbMode = 'online' | 'disabled';

/** WANDB_MODE as the Python client reads it, limited to what the JavaScript client can do. */
export function wandbMode(env: NodeJS.ProcessEnv = process.env): WandbMode {
  const mode = (env.WANDB_MODE ?? '').trim().toLowerCase();
  if (mode === '' || mode === 'online' || mode === 'run') return 'online';
  if (mode === 'disabled') return 'disabled';
  if (mode === 'offline' || mode === 'dryrun') {
    throw new UsageError(
      `report_to wandb: WANDB_MODE=${env.WANDB_MODE} is not supported: the W&B JavaScript client cannot record offline runs ` +
        '(set WANDB_MODE=disabled to train without W&B, or use report_to tensorboard and upload its event files later)',
    );
  }
  throw new UsageError(`report_to wandb: WANDB_MODE=${env.WANDB_MODE} is not one of online, offline, disabled`);
}

function baseUrl(): string {
  return process.env.WANDB_BASE_URL || 'https://api.wandb.ai';
}

/** The client, loaded on first use: importing it costs about a second, which no other command should pay. */
async function client(): Promise<typeof WandbSdk> {
  return (await import('@wandb/sdk')).default;
}

/** The API key from WANDB_API_KEY or ~/.netrc (the client's own lookup); an error before training without one. */
async function apiKey(wandb: typeof WandbSdk): Promise<string> {
  try {
    return await wandb.login({ key: process.env.WANDB_API_KEY ?? '', host: baseUrl(), timeout: 60_000 });
  } catch (error) {
    throw new UsageError(
      `report_to wandb: no W&B API key (${(error as Error).message}); set WANDB_API_KEY (or run \`wandb login\`), ` +
        'or set WANDB_MODE=disabled, or remove wandb from report_to',
    );
  }
}

/**
 * The client installs process handlers (SIGINT exits the process) when a run opens. The trainer's
 * own SIGINT/SIGTERM handling (finish the step, write a checkpoint) must keep its meaning, and a
 * library must not install handlers at all, so the ones it added are removed; the run is finished
 * by `close()` instead.
 */
async function withoutNewProcessHandlers<T>(open: () => Promise<T>): Promise<T> {
  const before = new Map(SIGNALS.map((name) => [name, new Set(process.listeners(name as NodeJS.Signals))]));
  try {
    return await open();
  } finally {
    for (const name of SIGNALS) {
      for (const listener of process.listeners(name as NodeJS.Signals)) {
        if (!before.get(name)!.has(listener)) process.removeListener(name, listener);
      }
    }
  }
}

function timeout(ms: number, what: string): Promise<never> {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`${what} took over ${ms / 1000} s`)), ms).unref());
}

/** A W&B run for the stage, or null when WANDB_MODE=disabled. */
export async function openWandb(run: { runName: string | null; config: Record<string, unknown> }, log: (line: string) => void): Promise<Reporter | null> {
  if (wandbMode() === 'disabled') {
    log('report_to wandb: WANDB_MODE=disabled, nothing is sent to W&B');
    return null;
  }
  const wandb = await client();
  const key = await apiKey(wandb);
  const project = process.env.WANDB_PROJECT || 'huggingface';
  let opened;
  try {
    opened = await withoutNewProcessHandlers(() =>
      Promise.race([
        wandb.init({
          project,
          entity: process.env.WANDB_ENTITY,
          name: run.runName ?? undefined,
          config: run.config,
          settings: { apiKey: key, baseUrl: baseUrl(), offline: false, silent: true },
        }),
        timeout(INIT_TIMEOUT_MS, 'opening the run'),
      ]),
    );
  } catch (error) {
    throw new UsageError(`report_to wandb: cannot open a run at ${baseUrl()} (project ${project}): ${(error as Error).message}`);
  }
  log(`report_to wandb: logging to ${opened.url()}`);
  return {
    log(entry) {
      opened.log({ ...rewriteLogs(entry), 'train/global_step': Number(entry.step ?? 0) });
    },
    async close() {
      await opened.finish();
    },
  };
}
