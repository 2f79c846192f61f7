/**
 * How the ranks of a data-parallel job sum a step's gradients (and, at ZeRO stages 1 and 2,
 * reduce-scatter them and all-gather the updated weights: lib/train/zero.ts), chosen by the
 * device the model is on:
 * - CPU ranks: MPI's all-reduce over the model's host gradient buffers (Ranks.allReduceSum).
 * - GPU ranks: NCCL over the device buffers. Rank 0 makes NCCL's unique id, MPI carries its 128
 *   bytes to the others (Ranks.broadcast), each rank joins a communicator on its own GPU (its
 *   LOCAL_RANK), and the model sums in place on its stream. MPI still carries the small control
 *   collectives (losses, stop votes, barriers). NCCL's own deadline is ddp_timeout too.
 * One rank sums nothing.
 */
import { ZnError } from '../errors.js';
import { loadNccl, type NcclCommunicator } from '../native.js';
import type { ComputeDevice } from './model.js';
import type { Ranks } from './ranks.js';

export type GradientTransport = 'none' | 'mpi' | 'nccl';

/** What a GPU model offers for its ranks' collectives (MistralModel implements it). */
export interface SummableModel {
  allReduceGradients(communicator: NcclCommunicator): Promise<void>;
  reduceScatterGradients(communicator: NcclCommunicator): Promise<void>;
  allGatherWeights(communicator: NcclCommunicator): Promise<void>;
}

/** GPU ranks' collectives over an open NCCL communicator. */
export interface NcclGradientSum {
  /** Sums this rank's device gradients with the other ranks', in place; after the last micro-batch's backward, before the clip. */
  sum(): Promise<void>;
  /** ZeRO stage 2: this rank's range of the device gradients summed across the ranks (the rest left as they are). */
  reduceScatter(): Promise<void>;
  /** ZeRO stages 1 and 2, after the step: each rank's range of the device weights from its owner. */
  allGather(): Promise<void>;
  /** Finalizes and frees the communicator (on the normal way out only: after an error the job is aborted). */
  close(): Promise<void>;
}

/** Which transport sums the gradients: none on one rank, NCCL on GPU ranks, MPI over host buffers on CPU ranks (the loop's own). */
export function gradientTransport(device: ComputeDevice, ranks: Pick<Ranks, 'size'>): GradientTransport {
  if (ranks.size === 1) return 'none';
  return device === 'cuda' ? 'nccl' : 'mpi';
}

/** The bytes of NCCL's unique id (NCCL_UNIQUE_ID_BYTES). */
export const NCCL_UNIQUE_ID_BYTES = 128;

/** Rank 0's NCCL unique id on every rank: `makeId` runs on rank 0 only, MPI broadcasts its bytes. */
export async function shareUniqueId(ranks: Ranks, makeId: () => Uint8Array): Promise<Uint8Array> {
  const id = ranks.isLeader ? makeId() : new Uint8Array(NCCL_UNIQUE_ID_BYTES);
  if (id.length !== NCCL_UNIQUE_ID_BYTES) throw new ZnError(`NCCL's unique id has ${id.length} bytes, expected ${NCCL_UNIQUE_ID_BYTES}`);
  await ranks.broadcast(id, 0, "rank 0's NCCL unique id");
  return id;
}

/**
 * GPU ranks: rank 0's unique id to every rank, then each rank joins the communicator on GPU
 * `ranks.localRank`, which the model must live on (ModelOptions.cudaDevice). Every rank calls this
 * at the same point; joining waits for all of them, at most timeoutSeconds.
 */
export async function openNcclGradientSum(model: SummableModel, ranks: Ranks, timeoutSeconds: number): Promise<NcclGradientSum> {
  const addon = loadNccl();
  const uniqueId = await shareUniqueId(ranks, () => addon.ncclUniqueId());
  const communicator = new addon.NcclCommunicator();
  await communicator.open({ uniqueId, rank: ranks.rank, size: ranks.size, device: ranks.localRank, timeoutSeconds });
  return {
    sum: () => model.allReduceGradients(communicator),
    reduceScatter: () => model.reduceScatterGradients(communicator),
    allGather: () => model.allGatherWeights(communicator),
    close: () => communicator.close({}),
  };
}
