/**
 * The child process behind `isolate: true`: runs the stages it is sent and reports events and
 * the outcome over IPC. An abort message stops the run after the current step.
 */
import type { Stage } from './config.js';
import { runStagesInProcess, TrainingRun, type TrainingConfig } from './api.js';

interface StartMessage {
  type: 'start';
  stages: { stage: Stage; config: TrainingConfig }[];
  options: { progress?: 'auto' | 'silent'; where?: string };
}

const abort = new AbortController();

process.on('message', (message: StartMessage | { type: 'abort' }) => {
  if (message.type === 'abort') {
    abort.abort();
    return;
  }
  const run = new TrainingRun((self) => runStagesInProcess(message.stages, self, { ...message.options, signal: abort.signal }));
  run.on('log', (entry) => process.send?.({ type: 'log', entry }));
  run.on('checkpoint', (dir) => process.send?.({ type: 'checkpoint', dir }));
  run.result.then(
    (results) => process.send?.({ type: 'done', results }, () => process.exit(0)),
    (error: Error) => process.send?.({ type: 'error', message: error.message }, () => process.exit(1)),
  );
});
