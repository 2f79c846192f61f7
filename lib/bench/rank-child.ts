/**
 * A rank of the multi-rank step benchmark: `node rank-child.js '<RankStepOptions JSON>'`, under
 * mpirun for N ranks or on its own for one. Every rank measures its part of the step
 * (lib/bench/rank-step.ts); rank 0 gathers the measurements and prints them as one line,
 * `rank-bench: {"ranks": [...]}`, which lib/bench/rank-bench.ts reads.
 */
import { openRanks } from '../model/ranks.js';
import { packMeasurement, RESULT_PREFIX, type RankStepOptions, runRankStep, unpackMeasurements } from './rank-step.js';

async function main(): Promise<void> {
  const options = JSON.parse(process.argv[2] ?? '') as RankStepOptions;
  // Long enough for the slowest preset's step on a busy machine.
  const ranks = openRanks(1800);
  try {
    const mine = await runRankStep(options, ranks);
    const all = await ranks.allGather(packMeasurement(mine), 'the benchmark results');
    if (ranks.isLeader) {
      const measurements = unpackMeasurements(all, ranks.size, mine.steps_s.length, mine.losses.length);
      process.stdout.write(`${RESULT_PREFIX}${JSON.stringify({ ranks: measurements })}\n`);
    }
  } catch (error) {
    ranks.abort(`bench: ${(error as Error).message}`);
  }
}

main().catch((error: Error) => {
  process.stderr.write(`bench rank: ${error.message}\n`);
  process.exitCode = 1;
});
