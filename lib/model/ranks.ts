/**
 * The ranks of a data-parallel job: which process this is, how many there are, and MPI's
 * collectives among them (the optional zn_mpi addon). A process started on its own is a job of
 * one rank, with no MPI at all; `mpirun -n N` starts N ranks.
 *
 * A rank that dies is noticed by mpirun, which ends the whole job naming it. A rank that fails
 * prints `rank R: <error>` and aborts the job (MPI_Abort) rather than leaving the others waiting.
 * A rank that is alive but never reaches a collective is caught by the deadline every collective
 * has (ddp_timeout, HF TrainingArguments' name and default): the waiting rank says what it
 * waited for and aborts the job.
 */
import { UsageError, ZnError } from '../errors.js';
import { loadMpi, type MpiAddon } from '../native.js';

/** What the launcher told this process, from its environment. */
export interface LaunchEnvironment {
  rank: number;
  worldSize: number;
  /** The rank among this node's ranks (a GPU's index, once ranks have GPUs). */
  localRank: number;
  /** mpirun (Open MPI's or MPICH's variables), torchrun's (RANK, WORLD_SIZE, LOCAL_RANK), or none. */
  launcher: 'mpirun' | 'torchrun' | 'none';
}

function envInteger(env: NodeJS.ProcessEnv, name: string, min: number): number | null {
  const text = env[name];
  if (text === undefined || text === '') return null;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < min) throw new UsageError(`environment ${name}=${text}: expected an integer >= ${min}`);
  return value;
}

/**
 * The rank, world size and local rank the launcher set: Open MPI's OMPI_COMM_WORLD_RANK / _SIZE /
 * _LOCAL_RANK, MPICH's PMI_RANK / PMI_SIZE, else torchrun's RANK / WORLD_SIZE / LOCAL_RANK.
 */
export function launchEnvironment(env: NodeJS.ProcessEnv = process.env): LaunchEnvironment {
  const schemes: { launcher: LaunchEnvironment['launcher']; rank: string; size: string; local: string }[] = [
    { launcher: 'mpirun', rank: 'OMPI_COMM_WORLD_RANK', size: 'OMPI_COMM_WORLD_SIZE', local: 'OMPI_COMM_WORLD_LOCAL_RANK' },
    { launcher: 'mpirun', rank: 'PMI_RANK', size: 'PMI_SIZE', local: 'MPI_LOCALRANKID' },
    { launcher: 'torchrun', rank: 'RANK', size: 'WORLD_SIZE', local: 'LOCAL_RANK' },
  ];
  for (const scheme of schemes) {
    const worldSize = envInteger(env, scheme.size, 1);
    if (worldSize === null) continue;
    const rank = envInteger(env, scheme.rank, 0) ?? 0;
    if (rank >= worldSize) throw new UsageError(`environment ${scheme.rank}=${rank} is not below ${scheme.size}=${worldSize}`);
    return { rank, worldSize, localRank: envInteger(env, scheme.local, 0) ?? rank, launcher: scheme.launcher };
  }
  return { rank: 0, worldSize: 1, localRank: 0, launcher: 'none' };
}

export type ReducibleArray = Float32Array | Float64Array;
export type GatherableArray = Float32Array | Float64Array | Int32Array | Uint8Array;

/** The ranks of the job and their collectives; every rank calls the same collectives in the same order. */
export interface Ranks {
  readonly rank: number;
  readonly size: number;
  readonly localRank: number;
  /** Rank 0: the one that logs, evaluates and writes files. */
  readonly isLeader: boolean;
  /** Sums each buffer across the ranks, in place. `what` names the wait in a timeout's message. */
  allReduceSum(buffers: ReducibleArray[], what: string): Promise<void>;
  /** Rank `root`'s values into every rank's buffer. */
  broadcast(data: GatherableArray, root: number, what: string): Promise<void>;
  /** Every rank's data in rank order (ranks x data.length). */
  allGather<T extends GatherableArray>(data: T, what: string): Promise<T>;
  /**
   * ZeRO: rank r's part of `data` (counts[r] elements after the parts of the ranks before it)
   * into every rank's data, in place.
   */
  allGatherInPlace(data: Float32Array | Uint16Array, counts: number[], what: string): Promise<void>;
  /** ZeRO stage 2: the sum across the ranks of this rank's part of `data`, in place; the rest is left undefined. */
  reduceScatterInPlace(data: Float32Array, counts: number[], what: string): Promise<void>;
  barrier(what: string): Promise<void>;
  /** True on every rank when any rank passes true (e.g. one rank's stop request). */
  any(flag: boolean, what: string): Promise<boolean>;
  /** Prints `rank R: message` and ends the whole job (one rank: throws instead). */
  abort(message: string): never;
}

/** A job of one rank: every collective is the identity. */
export const SINGLE_RANK: Ranks = {
  rank: 0,
  size: 1,
  localRank: 0,
  isLeader: true,
  allReduceSum: async () => {},
  broadcast: async () => {},
  allGather: async (data) => data.slice() as typeof data,
  allGatherInPlace: async () => {},
  reduceScatterInPlace: async () => {},
  barrier: async () => {},
  any: async (flag) => flag,
  abort: (message) => {
    throw new ZnError(message);
  },
};

class MpiRanks implements Ranks {
  readonly isLeader: boolean;

  constructor(
    private readonly mpi: MpiAddon,
    readonly rank: number,
    readonly size: number,
    readonly localRank: number,
    public timeoutSeconds: number,
  ) {
    this.isLeader = rank === 0;
  }

  /** Runs one collective under the deadline; past it, this rank aborts the job saying what it waited for. */
  private async deadline<T>(what: string, collective: () => Promise<T>): Promise<T> {
    const timer = setTimeout(
      () => this.abort(`${what} did not complete within ${this.timeoutSeconds} s (ddp_timeout): another rank is stuck or gone; aborting the job`),
      this.timeoutSeconds * 1000,
    );
    try {
      return await collective();
    } finally {
      clearTimeout(timer);
    }
  }

  async allReduceSum(buffers: ReducibleArray[], what: string): Promise<void> {
    for (const data of buffers) if (data.length > 0) await this.deadline(what, () => this.mpi.allReduceSum({ data }));
  }

  broadcast(data: GatherableArray, root: number, what: string): Promise<void> {
    return this.deadline(what, () => this.mpi.broadcast({ data, root }));
  }

  async allGather<T extends GatherableArray>(data: T, what: string): Promise<T> {
    const out = new (data.constructor as new (length: number) => T)(data.length * this.size);
    await this.deadline(what, () => this.mpi.allGather({ data, out }));
    return out;
  }

  allGatherInPlace(data: Float32Array | Uint16Array, counts: number[], what: string): Promise<void> {
    return this.deadline(what, () => this.mpi.allGatherInPlace({ data, counts: Float64Array.from(counts) }));
  }

  reduceScatterInPlace(data: Float32Array, counts: number[], what: string): Promise<void> {
    return this.deadline(what, () => this.mpi.reduceScatterInPlace({ data, counts: Float64Array.from(counts) }));
  }

  barrier(what: string): Promise<void> {
    return this.deadline(what, () => this.mpi.barrier({}));
  }

  async any(flag: boolean, what: string): Promise<boolean> {
    const votes = Float64Array.of(flag ? 1 : 0);
    await this.allReduceSum([votes], what);
    return votes[0] > 0;
  }

  abort(message: string): never {
    process.stderr.write(`zephyr-native: rank ${this.rank} of ${this.size}: ${message}\n`);
    this.mpi.abort({ code: 1 });
  }
}

let processRanks: Ranks | null = null;

/**
 * This process's ranks, opened once (MPI is initialised once per process, and finalised when
 * the process exits): SINGLE_RANK unless a launcher started several. `timeoutSeconds` is the
 * deadline of each later collective.
 */
export function openRanks(timeoutSeconds: number, env: NodeJS.ProcessEnv = process.env): Ranks {
  if (!(timeoutSeconds > 0)) throw new UsageError(`ddp_timeout must be a positive number of seconds, got ${timeoutSeconds}`);
  if (processRanks) {
    if (processRanks instanceof MpiRanks) processRanks.timeoutSeconds = timeoutSeconds;
    return processRanks;
  }
  const launch = launchEnvironment(env);
  if (launch.worldSize === 1) return (processRanks = SINGLE_RANK);
  if (launch.launcher === 'torchrun') {
    throw new UsageError(
      `WORLD_SIZE=${launch.worldSize} (torchrun's variables), but ranks here talk over MPI: start them with ` +
        `\`mpirun -n ${launch.worldSize} zephyr-native ...\`, or \`zephyr-native ... --nproc_per_node ${launch.worldSize}\` on one machine ` +
        "(torchrun's rendezvous is not built; GPU ranks also start under mpirun)",
    );
  }
  const mpi = loadMpi();
  const world = mpi.init();
  if (world.rank !== launch.rank || world.size !== launch.worldSize) {
    throw new ZnError(`MPI says rank ${world.rank} of ${world.size}, the launcher's environment rank ${launch.rank} of ${launch.worldSize}`);
  }
  // MPI_Finalize before exit: Open MPI's mpirun takes a rank that exits without it for a failure.
  process.once('exit', () => {
    try {
      mpi.finalize();
    } catch {
      // A collective still in flight (the process is exiting on an error): mpirun ends the job.
    }
  });
  return (processRanks = new MpiRanks(mpi, world.rank, world.size, launch.localRank, timeoutSeconds));
}

/** The ranks openRanks opened (SINGLE_RANK before, or without a launcher). */
export function currentRanks(): Ranks {
  return processRanks ?? SINGLE_RANK;
}
