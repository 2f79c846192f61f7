/**
 * The CLI's Ctrl-C: the first SIGINT, SIGTERM or SIGUSR2 aborts the work's AbortSignal (it stops at a
 * safe point: the current training step and a checkpoint, or the rows in flight); a second one
 * has the default effect (the process exits at once). The library itself installs no handlers.
 * SIGUSR2 is there for data-parallel ranks: mpirun and mpiexec forward it to every rank (SIGINT
 * and SIGTERM they answer by killing the ranks), so `--nproc_per_node` (lib/cli/launch-ranks.ts),
 * or a user of mpirun, stops a job with it after the current step.
 */
export async function untilStopSignal<T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('SIGUSR2', onSignal);
  try {
    return await work(stop.signal);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('SIGUSR2', onSignal);
  }
}
