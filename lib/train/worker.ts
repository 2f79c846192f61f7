/**
 * The child process behind `isolate: true`: runs the stages it is sent and reports events and
 * the outcome over IPC. An abort message, or the parent going away (the IPC channel closes),
 * stops the run after the current step with a checkpoint. It installs no signal handlers: the
 * parent forks it in its own process group, so a terminal's Ctrl-C goes to the parent.
 */
import type { Stage } from './config.js';
import { runStagesInProcess, TrainingRun, type Recipe } from './api.js';

interface StartMessage {
  type: 'start';
  stages: { stage: Stage; config: Recipe }[];
  options: { progress?: 'auto' | 'silent'; where?: string };
}

const abort = new AbortController();

function report(message: object, then: () => void = () => {}): void {
  if (process.connected && process.send) process.send(message, then);
  else then();
}

process.on('disconnect', () => abort.abort());
process.on('message', (message: StartMessage | { type: 'abort' }) => {
  if (message.type === 'abort') {
    abort.abort();
    return;
  }
  const run = new TrainingRun((self) => runStagesInProcess(message.stages, self, { ...message.options, signal: abort.signal }));
  run.on('log', (entry) => report({ type: 'log', entry }));
  run.on('checkpoint', (dir) => report({ type: 'checkpoint', dir }));
  run.result.then(
    (results) => report({ type: 'done', results }, () => process.exit(0)),
    (error: Error) => report({ type: 'error', message: error.message }, () => process.exit(1)),
  );
});
