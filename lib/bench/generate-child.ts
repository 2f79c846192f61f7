/**
 * The child process behind bench/generate.ts: runs the one generation configuration it is sent
 * and reports the measurement over IPC, so each configuration's peak RSS is its own.
 */
import { type GenerateBenchOptions, runGenerateBench } from './generate-bench.js';

process.once('message', (options: GenerateBenchOptions) => {
  runGenerateBench(options).then(
    (result) => process.send?.({ type: 'result', result }, () => process.exit(0)),
    (error: Error) => process.send?.({ type: 'error', message: error.message }, () => process.exit(1)),
  );
});
