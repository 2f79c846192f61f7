/**
 * The child process behind lib/bench/recipe-bench.ts: runs the one recipe-step configuration it
 * is sent and reports it over IPC, so each configuration's peak RSS and device memory are its own.
 */
import { runRecipeStep, type RecipeStepOptions } from './recipe-steps.js';

process.once('message', (options: RecipeStepOptions) => {
  runRecipeStep(options).then(
    (result) => process.send?.({ type: 'result', result }, () => process.exit(0)),
    (error: Error) => process.send?.({ type: 'error', message: error.message }, () => process.exit(1)),
  );
});
