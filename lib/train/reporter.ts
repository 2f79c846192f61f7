/**
 * What the `report_to` integrations share: the reporter interface and HF Trainer's tag names.
 */
import type { LogEntry } from './state.js';

/** Receives every logged entry (step included) and is closed when the stage ends. */
export interface Reporter {
  log(entry: LogEntry): void;
  close(): Promise<void>;
}

/**
 * HF Trainer's `rewrite_logs`: `eval_x` -> `eval/x`, `test_x` -> `test/x`, anything else
 * `train/x`; the step is not a logged value (it is the event's step).
 */
export function rewriteLogs(entry: LogEntry): Record<string, number | string> {
  const out: Record<string, number | string> = {};
  for (const [key, value] of Object.entries(entry)) {
    if (key === 'step' || value === null) continue;
    const tag = key.startsWith('eval_') ? `eval/${key.slice(5)}` : key.startsWith('test_') ? `test/${key.slice(5)}` : `train/${key}`;
    out[tag] = value;
  }
  return out;
}
