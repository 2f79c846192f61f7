/**
 * The Hub's HTTP failures as errors a user can act on: a gated or private repository (401/403),
 * a repository, revision or file that does not exist (404), no network. Each names the
 * repository and says what to do.
 */
import { HubApiError } from '@huggingface/hub';

import { ZnError } from '../errors.js';
import type { HubEnvironment } from './environment.js';
import { describeRepo, type RepoRef } from './repo-id.js';

function errorCode(error: HubApiError): string | null {
  const data = error.data as { error_code?: unknown } | undefined;
  return typeof data?.error_code === 'string' ? data.error_code : null;
}

/** A network-level failure (no connection, DNS, reset) as fetch reports it. */
export function isNetworkError(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const cause = (error as Error & { cause?: { code?: string } }).cause;
  return error.name === 'TypeError' && /fetch failed/.test(error.message) ? true : typeof cause?.code === 'string' && /^(ECONN|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|UND_ERR)/.test(cause.code);
}

export function hubError(error: unknown, repo: RepoRef, env: HubEnvironment, file?: string, action: 'download' | 'upload' = 'download'): ZnError {
  const name = describeRepo(repo);
  const where = file ? `${name}: ${file}` : name;
  if (error instanceof HubApiError) {
    const code = errorCode(error);
    if ((error.statusCode === 401 || error.statusCode === 403) && action === 'upload') {
      return new ZnError(`${where}: the Hub refused the token (HTTP ${error.statusCode} from ${env.endpoint}): it is invalid or has no write access to this repository`);
    }
    if (error.statusCode === 401 || error.statusCode === 403) {
      const gated = code === 'GatedRepo' || /gated|restricted/i.test(error.message);
      const token = env.token ? 'the token in use (HF_TOKEN) has no access to it' : 'no token is set (HF_TOKEN, or `hf auth login`)';
      return new ZnError(
        `${where}: ${gated ? 'the repository is gated: accept its conditions on its Hub page, then' : 'the repository is private or gated:'} ` +
          `${token} (HTTP ${error.statusCode} from ${env.endpoint})`,
      );
    }
    if (error.statusCode === 404) {
      const what =
        code === 'RevisionNotFound' || /invalid rev|revision not found/i.test(error.message)
          ? `revision '${repo.revision}' does not exist`
          : code === 'EntryNotFound' || /entry not found/i.test(error.message)
            ? 'the file does not exist'
            : 'no local folder of that name, and no such repository on the Hub (or it is private and needs HF_TOKEN)';
      return new ZnError(`${where}: ${what} (HTTP 404 from ${env.endpoint})`);
    }
    return new ZnError(`${where}: the Hub answered HTTP ${error.statusCode}: ${error.message.split('. URL:')[0]}`);
  }
  if (isNetworkError(error)) {
    const cause = (error as Error & { cause?: { code?: string; message?: string } }).cause;
    if (action === 'upload') return new ZnError(`${where}: cannot reach the Hub at ${env.endpoint} (${cause?.code ?? cause?.message ?? (error as Error).message}); nothing was uploaded`);
    return new ZnError(
      `${where}: cannot reach the Hub at ${env.endpoint} (${cause?.code ?? cause?.message ?? (error as Error).message}) and the files are not in the cache ${env.cacheDir}; ` +
        'connect, or download them where there is a network (`zephyr-native download`) and set HF_HUB_OFFLINE=1',
    );
  }
  if (error instanceof TypeError && /must start with 'hf_'/.test(error.message)) {
    return new ZnError(`${where}: HF_TOKEN is not a Hub access token (they start with 'hf_')`);
  }
  return error instanceof ZnError ? error : new ZnError(`${where}: ${(error as Error).message ?? String(error)}`);
}
