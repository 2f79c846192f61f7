/**
 * Run under `mpirun -n N` by test/gpu-ranks.test.ts: each rank opens the job's ranks over MPI and
 * takes rank 0's NCCL unique id through shareUniqueId (Ranks.broadcast). Rank 0's "id" is 128
 * bytes drawn here (not NCCL's: what is tested is what MPI carries); any other rank asked to make
 * one fails. Prints `rank R of N: <hex>` for the test to compare.
 */
import { randomBytes } from 'node:crypto';

import { shareUniqueId } from '../../lib/model/gradient-sum.js';
import { openRanks } from '../../lib/model/ranks.js';

const ranks = openRanks(60);
const id = await shareUniqueId(ranks, () => {
  if (!ranks.isLeader) throw new Error(`rank ${ranks.rank} was asked to make the id`);
  return new Uint8Array(randomBytes(128));
});
process.stdout.write(`rank ${ranks.rank} of ${ranks.size}: ${Buffer.from(id).toString('hex')}\n`);
