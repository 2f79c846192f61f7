/**
 * Rating completions with an AI judge (the AIF step's data collection). Input rows have a
 * prompt (`instruction`, or `prompt`) and `completions` (objects with `response` and usually
 * `model`, or plain strings). For each row the judge rates every completion on the four
 * UltraFeedback aspects (one request per aspect: lib/aif/rubric.ts), and the row is written in
 * the raw UltraFeedback shape, which `binarize` reads:
 *   completions[i].annotations[aspect] = {Rating: "1".."5" | "N/A", Rationale}
 *   completions[i]["fine-grained_score"] = mean of the numeric ratings (null if none)
 * Other input fields pass through unchanged.
 *
 * Crash safety: each finished row is appended to the output (JSON Lines) at once, so a crash
 * loses only the rows in flight. Running again with the same output resumes: a row whose
 * (instruction, responses) already appear in the output is skipped (counted as a multiset, so
 * duplicated input rows are each rated once). Output rows are in the order they finish.
 *
 * Failures: a judge answer that cannot be read is asked again once; if the second answer cannot
 * be read either, the aspect is recorded as `{Rating: "N/A", Rationale: "", Failure, Raw}` (the
 * raw answers kept), so binarize leaves it out of the mean. A request the server refuses for
 * good (4xx) is recorded the same way. When retries run out (server unavailable) the row is
 * not written, so the next run retries it; a bad key, model or URL stops the run.
 */
import { JsonlAppender } from '../data/writers.js';
import { readRows } from '../data/readers.js';
import { ZnError } from '../errors.js';
import { ASPECTS, type Aspect } from './binarize.js';
import { JudgeClient, type JudgeOptions, JudgeRejectedError, JudgeUnavailableError } from './judge.js';
import { sha256Hex } from './random.js';
import { type AspectRating, aspectPrompt, parseRatings, REASK_PROMPT } from './rubric.js';

export interface RateOptions extends JudgeOptions {
  /** The JSON Lines file rows are appended to; rows already in it are not rated again. */
  output: string;
  /** Requests in flight at once (default 8). */
  concurrency?: number;
  /** Aspects to rate (default all four). */
  aspects?: readonly Aspect[];
  /** Rows in the input, when known: only used for progress. */
  total?: number;
  /** Called after every row (rated, resumed, failed or invalid). */
  onProgress?: (progress: RateProgress) => void;
  /** Stops the run: rows in flight are dropped (not written), finished rows stay. */
  signal?: AbortSignal;
}

export interface RateProgress {
  /** Rows handled so far: rated + resumed + failed + invalid. */
  handled: number;
  total?: number;
  rated: number;
  resumed: number;
  failed: number;
}

export interface RateStats {
  /** Input rows seen. */
  rows: number;
  /** Rows rated and written in this run. */
  rated: number;
  /** Rows skipped because the output already had them. */
  resumed: number;
  /** Rows not written because the judge stayed unavailable: the next run retries them. */
  failed: number;
  /** Rows that cannot be rated (no prompt, no completions): never written. */
  invalid: number;
  /** Aspects recorded as failures (unreadable twice, or refused by the server). */
  aspectFailures: number;
  /** Judge answers that could not be read at first and were asked again. */
  reasked: number;
  requests: number;
  retries: number;
  /** The first few invalid or failed rows with where they are and why. */
  examples: string[];
}

interface Completion {
  fields: Record<string, unknown>;
  response: string;
}

interface RateInput {
  row: Record<string, unknown>;
  instruction: string;
  completions: Completion[];
  key: string;
}

const MAX_EXAMPLES = 5;

/** Rates rows read from a file or HF dataset folder (see readRows), appending to `options.output`. */
export function rateFile(input: string, split: string | undefined, options: RateOptions): Promise<RateStats> {
  return rateSources(
    (async function* () {
      for await (const { row, file, index } of readRows(input, { split })) yield { row, where: `${file}: row ${index}` };
    })(),
    options,
  );
}

/** Rates plain rows (`where` in messages is `row N`, 0-based), appending to `options.output`. */
export function rate(rows: Iterable<unknown> | AsyncIterable<unknown>, options: RateOptions): Promise<RateStats> {
  return rateSources(
    (async function* () {
      let index = 0;
      for await (const row of rows) yield { row, where: `row ${index++}` };
    })(),
    options,
  );
}

async function rateSources(sources: AsyncIterable<{ row: unknown; where: string }>, options: RateOptions): Promise<RateStats> {
  if (!/\.jsonl$/i.test(options.output)) {
    throw new ZnError(`rate output must be a .jsonl file (it is appended to row by row), got ${options.output}`);
  }
  const concurrency = options.concurrency ?? 8;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new ZnError(`concurrency must be a positive integer, got ${concurrency}`);
  const client = new JudgeClient(options);
  const appender = await JsonlAppender.open(options.output);
  const done = await finishedRows(options.output);
  const stats: RateStats = { rows: 0, rated: 0, resumed: 0, failed: 0, invalid: 0, aspectFailures: 0, reasked: 0, requests: 0, retries: 0, examples: [] };
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  const limit = limiter(concurrency);
  const progress = () => {
    stats.requests = client.requests;
    stats.retries = client.retries;
    options.onProgress?.({
      handled: stats.rated + stats.resumed + stats.failed + stats.invalid,
      total: options.total,
      rated: stats.rated,
      resumed: stats.resumed,
      failed: stats.failed,
    });
  };
  const note = (where: string, why: string) => {
    if (stats.examples.length < MAX_EXAMPLES) stats.examples.push(`${where}: ${why}`);
  };

  const rateOne = async (input: RateInput, where: string) => {
    try {
      const annotations = await Promise.all(
        (options.aspects ?? ASPECTS).map((aspect) => rateAspect(client, limit, aspect, input, stats, signal)),
      );
      await appender.append(ratedRow(input, options.aspects ?? ASPECTS, annotations));
      stats.rated++;
    } catch (error) {
      if (!(error instanceof JudgeUnavailableError)) throw error;
      stats.failed++;
      note(where, error.message);
    }
    progress();
  };

  const inFlight = new Set<Promise<void>>();
  let fatal: unknown;
  try {
    for await (const { row, where } of sources) {
      if (fatal) break;
      signal.throwIfAborted();
      stats.rows++;
      const input = rateInput(row);
      if (typeof input === 'string') {
        stats.invalid++;
        note(where, input);
        progress();
        continue;
      }
      const previously = done.get(input.key) ?? 0;
      if (previously > 0) {
        done.set(input.key, previously - 1);
        stats.resumed++;
        progress();
        continue;
      }
      const task: Promise<void> = rateOne(input, where).catch((error) => {
        fatal ??= error;
        stop.abort(error);
      });
      const tracked = task.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
      // Keep about `concurrency` rows in flight: enough to fill the request slots.
      if (inFlight.size >= concurrency) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
  } catch (error) {
    fatal ??= error;
    stop.abort(error);
    await Promise.allSettled(inFlight);
  } finally {
    await appender.close();
    stats.requests = client.requests;
    stats.retries = client.retries;
  }
  if (fatal) throw wrapAbort(fatal, stats);
  return stats;
}

function wrapAbort(error: unknown, stats: RateStats): unknown {
  if ((error as Error)?.name === 'AbortError') {
    return new ZnError(`rating stopped after ${stats.rated} rows this run (rows in flight dropped); run the same command again to resume`);
  }
  return error;
}

/** One aspect for all completions of a row: ask, ask again once if unreadable, else record failure. */
async function rateAspect(
  client: JudgeClient,
  limit: Limiter,
  aspect: Aspect,
  input: RateInput,
  stats: RateStats,
  signal: AbortSignal,
): Promise<AspectRating[]> {
  const responses = input.completions.map((c) => c.response);
  const prompt = aspectPrompt(aspect, input.instruction, responses);
  const failure = (reason: string, raw: string[]): AspectRating[] => {
    stats.aspectFailures++;
    return responses.map(() => ({ Rating: 'N/A', Rationale: '', Failure: reason, Raw: raw }) as AspectRating);
  };
  try {
    const first = await limit(() => client.complete(prompt, signal));
    const parsed = parseRatings(first, responses.length);
    if (parsed) return parsed;
    stats.reasked++;
    const second = await limit(() =>
      client.complete([...prompt, { role: 'assistant', content: first }, { role: 'user', content: REASK_PROMPT }], signal),
    );
    return parseRatings(second, responses.length) ?? failure('unreadable judge answer (asked twice)', [first, second]);
  } catch (error) {
    if (error instanceof JudgeRejectedError) return failure(error.message, []);
    throw error;
  }
}

function ratedRow(input: RateInput, aspects: readonly Aspect[], ratings: AspectRating[][]): Record<string, unknown> {
  const completions = input.completions.map((completion, i) => {
    const annotations: Record<string, AspectRating> = {};
    aspects.forEach((aspect, a) => {
      annotations[aspect] = ratings[a][i];
    });
    const numeric = Object.values(annotations)
      .map((rating) => Number(rating.Rating))
      .filter((value) => Number.isFinite(value));
    const mean = numeric.length ? numeric.reduce((a, b) => a + b, 0) / numeric.length : null;
    return { ...completion.fields, annotations, 'fine-grained_score': mean };
  });
  return { ...input.row, instruction: input.instruction, completions };
}

/** The row as rate sees it, or why it cannot be rated. */
function rateInput(value: unknown): RateInput | string {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return 'not an object';
  const row = value as Record<string, unknown>;
  const instruction = row.instruction ?? row.prompt;
  if (typeof instruction !== 'string' || instruction.trim() === '') return "no prompt text ('instruction' or 'prompt')";
  if (!Array.isArray(row.completions) || row.completions.length === 0) return "'completions' is missing or empty";
  const completions: Completion[] = [];
  for (const [i, completion] of row.completions.entries()) {
    const fields = typeof completion === 'string' ? { model: null, response: completion } : (completion as Record<string, unknown>);
    if (fields === null || typeof fields !== 'object' || typeof fields.response !== 'string') {
      return `completions[${i}] has no 'response' text`;
    }
    completions.push({ fields, response: fields.response });
  }
  return { row, instruction, completions, key: rowKey(instruction, completions.map((c) => c.response)) };
}

/** Identity of a row for resuming: its prompt and responses. */
function rowKey(instruction: string, responses: string[]): string {
  return sha256Hex(JSON.stringify([instruction, responses]));
}

/** How many times each row key appears in the existing output (opened, so it exists). */
async function finishedRows(output: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for await (const { row } of readRows(output)) {
    const input = rateInput(row);
    if (typeof input === 'string') continue;
    counts.set(input.key, (counts.get(input.key) ?? 0) + 1);
  }
  return counts;
}

export type Limiter = <T>(task: () => Promise<T>) => Promise<T>;

/** Runs at most `slots` tasks at once, first come first served (eval's judgments share it). */
export function limiter(slots: number): Limiter {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async (task) => {
    if (active >= slots) await new Promise<void>((resolve) => waiting.push(resolve));
    active++;
    try {
      return await task();
    } finally {
      active--;
      waiting.shift()?.();
    }
  };
}
