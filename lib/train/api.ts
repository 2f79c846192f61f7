/**
 * The library API for Node services that embed training:
 *
 *   const run = sft({ model_name_or_path, dataset_name, output_dir, max_steps: 100 });
 *   run.on('log', (entry) => ...);          // every logged step, as metrics.jsonl has it
 *   run.on('checkpoint', (dir) => ...);
 *   const result = await run;               // also emits 'done' with the result
 *
 * Options: `signal` (an AbortSignal: the run stops after the current step and writes a
 * checkpoint), `isolate: true` (the job runs in a child process, so a native crash or a sticky
 * GPU error cannot take down the embedding service), `progress: 'silent'`.
 * `train(pipeline)` runs an `sft` stage then a `dpo` stage that starts from the SFT output.
 */
import { fork } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';

import { UsageError, ZnError } from '../errors.js';
import { launchEnvironment } from '../model/ranks.js';
import { resolveStage, type Stage } from './config.js';
import { TrainingEvents } from './loop.js';
import { type StageResult, runStage } from './stage.js';
import type { LogEntry } from './state.js';

/** One stage's settings under TRL / alignment-handbook key names, as a recipe file holds them (checked when the run starts). */
export type Recipe = Record<string, unknown>;

/** A pipeline: keys shared by both stages at the top level, per-stage keys under sft / dpo. */
export interface PipelineConfig extends Recipe {
  sft?: Recipe;
  dpo?: Recipe;
}

export interface RunOptions {
  signal?: AbortSignal;
  isolate?: boolean;
  progress?: 'auto' | 'silent';
  /** Names the source of the settings in error messages (e.g. the recipe's path). */
  where?: string;
}

interface RunEvents {
  log: [LogEntry & { stage?: string }];
  checkpoint: [string];
  done: [StageResult[]];
  error: [Error];
}

/** A running job: an event emitter you can await (resolves to each stage's result). */
export class TrainingRun extends EventEmitter<RunEvents> implements PromiseLike<StageResult[]> {
  readonly result: Promise<StageResult[]>;

  constructor(job: (run: TrainingRun) => Promise<StageResult[]>) {
    super();
    this.result = job(this).then(
      (results) => {
        this.emit('done', results);
        return results;
      },
      (error: Error) => {
        if (this.listenerCount('error') > 0) this.emit('error', error);
        throw error;
      },
    );
    // Unobserved rejections are the caller's to handle through the promise.
    this.result.catch(() => undefined);
  }

  then<A = StageResult[], B = never>(
    onFulfilled?: ((value: StageResult[]) => A | PromiseLike<A>) | null,
    onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
  ): PromiseLike<A | B> {
    return this.result.then(onFulfilled, onRejected);
  }
}

/** Splits a pipeline into ordered stages, filling the DPO model from the SFT output. */
export function pipelineStages(pipeline: PipelineConfig): { stage: Stage; config: Recipe }[] {
  const { sft, dpo, ...shared } = pipeline;
  if (!sft && !dpo) throw new ZnError('a pipeline needs an `sft` stage, a `dpo` stage, or both');
  const stages: { stage: Stage; config: Recipe }[] = [];
  if (sft) stages.push({ stage: 'sft', config: { ...shared, ...sft } });
  if (dpo) {
    const config = { ...shared, ...dpo };
    if (config.model_name_or_path === undefined) {
      if (!sft) throw new ZnError('the dpo stage needs model_name_or_path (there is no sft stage to start from)');
      config.model_name_or_path = (stages[0].config.output_dir as string | undefined) ?? null;
    }
    stages.push({ stage: 'dpo', config });
  }
  return stages;
}

async function runInProcess(stages: { stage: Stage; config: Recipe }[], run: TrainingRun, options: RunOptions): Promise<StageResult[]> {
  const resolved = stages.map(({ stage, config }) => resolveStage(stage, [{ values: config, where: options.where ?? `${stage} config` }]));
  const results: StageResult[] = [];
  for (const config of resolved) {
    const events = new TrainingEvents();
    events.on('log', (entry) => run.emit('log', { ...entry, stage: config.stage }));
    events.on('checkpoint', (dir) => run.emit('checkpoint', dir));
    const result = await runStage(config, { events, signal: options.signal, progress: options.progress });
    results.push(result);
    if (result.stoppedEarly) break;
  }
  return results;
}

type WorkerMessage =
  | { type: 'log'; entry: LogEntry & { stage?: string } }
  | { type: 'checkpoint'; dir: string }
  | { type: 'done'; results: StageResult[] }
  | { type: 'error'; message: string };

function runIsolated(stages: { stage: Stage; config: Recipe }[], run: TrainingRun, options: RunOptions): Promise<StageResult[]> {
  return new Promise((resolveRun, reject) => {
    // Its own process group: a terminal's Ctrl-C reaches this process only, which decides (through
    // options.signal) whether the job stops; the job stops by itself if this process goes away.
    const worker = fork(fileURLToPath(new URL('./worker.js', import.meta.url)), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], detached: true });
    let settled = false;
    const settle = (fn: () => void): void => {
      if (!settled) {
        settled = true;
        fn();
      }
    };
    const onAbort = (): void => void worker.send({ type: 'abort' });
    options.signal?.addEventListener('abort', onAbort);
    worker.on('message', (message: WorkerMessage) => {
      if (message.type === 'log') run.emit('log', message.entry);
      else if (message.type === 'checkpoint') run.emit('checkpoint', message.dir);
      else if (message.type === 'done') settle(() => resolveRun(message.results));
      else if (message.type === 'error') settle(() => reject(new ZnError(message.message)));
    });
    worker.on('exit', (code, signal) => {
      options.signal?.removeEventListener('abort', onAbort);
      settle(() => reject(new ZnError(`the isolated training process exited (${signal ?? `code ${code}`}) before finishing`)));
    });
    worker.send({ type: 'start', stages, options: { progress: options.progress, where: options.where } });
  });
}

function start(stages: { stage: Stage; config: Recipe }[], options: RunOptions): TrainingRun {
  // A child of an mpirun rank would read the rank's MPI environment as its own.
  if (options.isolate && launchEnvironment().worldSize > 1) {
    throw new UsageError('isolate (--isolate) runs the job in a child process, which ranks started by mpirun cannot do; leave it off');
  }
  return new TrainingRun((run) => (options.isolate ? runIsolated(stages, run, options) : runInProcess(stages, run, options)));
}

export function sft(config: Recipe, options: RunOptions = {}): TrainingRun {
  return start([{ stage: 'sft', config }], options);
}

export function dpo(config: Recipe, options: RunOptions = {}): TrainingRun {
  return start([{ stage: 'dpo', config }], options);
}

export function train(pipeline: PipelineConfig, options: RunOptions = {}): TrainingRun {
  return start(pipelineStages(pipeline), options);
}

export { runInProcess as runStagesInProcess };
