/**
 * `npm run bench:peer -- --preset small --json FILE`: the step benchmark side by side with
 * PyTorch + transformers + TRL (bench/steps.ts with the peer side on; options as there). Where
 * the reference Python stack is missing, the TRL side is skipped with the reason.
 */
import { main } from './steps.js';

main(process.argv.slice(2), { peer: true }).catch((error: Error) => {
  console.error(`bench:peer: ${error.message}`);
  process.exitCode = 1;
});
