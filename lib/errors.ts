/**
 * Errors users can act on. `UsageError` is a bad command line or config (exit 2); `ZnError`
 * is any other failure with a one-line reason (exit 1). Both carry context in the message:
 * file, row or offset, field, expected vs found.
 */
export class ZnError extends Error {
  override name = 'ZnError';
}

export class UsageError extends ZnError {
  override name = 'UsageError';
}
