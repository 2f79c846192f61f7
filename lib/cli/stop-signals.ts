/**
 * The CLI's Ctrl-C: the first SIGINT or SIGTERM aborts the work's AbortSignal (it stops at a
 * safe point: the current training step and a checkpoint, or the rows in flight); a second one
 * has the default effect (the process exits at once). The library itself installs no handlers.
 */
export async function untilStopSignal<T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await work(stop.signal);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
