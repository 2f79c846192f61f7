/**
 * The Hub settings huggingface_hub reads from the environment, read the same way, so that Python
 * tools and zephyr-native share one cache, one token and one endpoint
 * (huggingface_hub/constants.py and utils/_auth.py):
 *
 * - cache: HF_HUB_CACHE, else the legacy HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, where HF_HOME
 *   defaults to $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface;
 * - offline: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is 1, ON, YES or TRUE, any case;
 * - token: HF_TOKEN, else the legacy HUGGING_FACE_HUB_TOKEN, else the file HF_TOKEN_PATH
 *   (default $HF_HOME/token) that `hf auth login` writes;
 * - endpoint: HF_ENDPOINT (default https://huggingface.co), without a trailing slash.
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

export interface HubEnvironment {
  cacheDir: string;
  offline: boolean;
  /** An access token, or null to go without one. */
  token: string | null;
  endpoint: string;
}

const TRUE_VALUES = new Set(['1', 'ON', 'YES', 'TRUE']);

function isTrue(value: string | undefined): boolean {
  return value !== undefined && TRUE_VALUES.has(value.trim().toUpperCase());
}

function expandHome(path: string): string {
  return path === '~' || path.startsWith('~/') ? join(homedir(), path.slice(1)) : path;
}

/** Empty variables count as unset, as `os.getenv(...) or default` reads them in most places. */
function variable(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value === '' ? undefined : value;
}

export function hfHome(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = variable(env, 'XDG_CACHE_HOME') ?? join(homedir(), '.cache');
  return expandHome(variable(env, 'HF_HOME') ?? join(xdg, 'huggingface'));
}

function readToken(env: NodeJS.ProcessEnv): string | null {
  const fromEnv = variable(env, 'HF_TOKEN') ?? variable(env, 'HUGGING_FACE_HUB_TOKEN');
  if (fromEnv) return fromEnv.trim();
  const path = expandHome(variable(env, 'HF_TOKEN_PATH') ?? join(hfHome(env), 'token'));
  if (!existsSync(path)) return null;
  const token = readFileSync(path, 'utf8').trim();
  return token === '' ? null : token;
}

export function hubEnvironment(env: NodeJS.ProcessEnv = process.env): HubEnvironment {
  const cacheDir = expandHome(variable(env, 'HF_HUB_CACHE') ?? variable(env, 'HUGGINGFACE_HUB_CACHE') ?? join(hfHome(env), 'hub'));
  return {
    cacheDir,
    offline: isTrue(env.HF_HUB_OFFLINE) || isTrue(env.TRANSFORMERS_OFFLINE),
    token: readToken(env),
    endpoint: (variable(env, 'HF_ENDPOINT') ?? DEFAULT_ENDPOINT).replace(/\/+$/, ''),
  };
}
