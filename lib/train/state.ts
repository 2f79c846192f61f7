/**
 * Trainer state as HF Trainer writes it (`trainer_state.json` with `log_history`), and the
 * metrics stream (`metrics.jsonl`, one JSON object per logged step, flushed as training goes).
 */
import { appendFileSync, closeSync, fsyncSync, openSync } from 'node:fs';
import { join } from 'node:path';

import { writeJsonAtomic } from '../io/atomic.js';

export type LogEntry = Record<string, number | string | null>;

export interface TrainerStateJson {
  best_global_step: null;
  best_metric: null;
  best_model_checkpoint: null;
  epoch: number;
  eval_steps: number;
  global_step: number;
  is_hyper_param_search: false;
  is_local_process_zero: true;
  is_world_process_zero: true;
  log_history: LogEntry[];
  logging_steps: number;
  max_steps: number;
  num_input_tokens_seen: number;
  num_train_epochs: number;
  save_steps: number;
  stateful_callbacks: Record<string, unknown>;
  total_flos: number;
  train_batch_size: number;
  trial_name: null;
  trial_params: null;
}

export interface StateFields {
  globalStep: number;
  epoch: number;
  maxSteps: number;
  numTrainEpochs: number;
  loggingSteps: number;
  evalSteps: number;
  saveSteps: number;
  trainBatchSize: number;
  tokensSeen: number;
  logHistory: LogEntry[];
}

export function trainerStateJson(fields: StateFields): TrainerStateJson {
  return {
    best_global_step: null,
    best_metric: null,
    best_model_checkpoint: null,
    epoch: fields.epoch,
    eval_steps: fields.evalSteps,
    global_step: fields.globalStep,
    is_hyper_param_search: false,
    is_local_process_zero: true,
    is_world_process_zero: true,
    log_history: fields.logHistory,
    logging_steps: fields.loggingSteps,
    max_steps: fields.maxSteps,
    num_input_tokens_seen: fields.tokensSeen,
    num_train_epochs: fields.numTrainEpochs,
    save_steps: fields.saveSteps,
    stateful_callbacks: {},
    total_flos: 0,
    train_batch_size: fields.trainBatchSize,
    trial_name: null,
    trial_params: null,
  };
}

export function writeTrainerState(dir: string, fields: StateFields): void {
  writeJsonAtomic(join(dir, 'trainer_state.json'), trainerStateJson(fields));
}

/** Appends one line per entry and fsyncs, so a crash loses nothing already logged. */
export class MetricsStream {
  constructor(private readonly path: string) {}

  static inDir(dir: string): MetricsStream {
    return new MetricsStream(join(dir, 'metrics.jsonl'));
  }

  append(entry: LogEntry): void {
    appendFileSync(this.path, `${JSON.stringify(entry)}\n`);
    const fd = openSync(this.path, 'r+');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }
}
