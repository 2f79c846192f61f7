/**
 * The child process behind lib/bench/run.ts: runs the one configuration it is sent and reports
 * the measurement over IPC, so each configuration's peak RSS is its own.
 */
import { runStepBench, type StepBenchOptions } from './step-bench.js';

process.once('message', (options: StepBenchOptions) => {
  runStepBench(options).then(
    (result) => process.send?.({ type: 'result', result }, () => process.exit(0)),
    (error: Error) => process.send?.({ type: 'error', message: error.message }, () => process.exit(1)),
  );
});
