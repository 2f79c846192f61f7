/**
 * UltraFeedback binarization (Zephyr paper, section 3): from raw rows `{instruction,
 * completions: [{model, response, annotations, overall_score, ...}]}` make preference pairs
 * `{prompt, prompt_id, chosen, rejected, messages, score_chosen, score_rejected}` as in
 * HuggingFaceH4/ultrafeedback_binarized.
 *
 * Rules, in order:
 *  - score (`mean`, the default): the mean of a completion's aspect ratings
 *    (instruction_following, helpfulness, honesty, truthfulness). A rating counts when it is a
 *    number from 1 to 5 (or such a number as text, as UltraFeedback stores it); "N/A", a missing
 *    aspect and anything else are left out of the mean. A completion with no counted rating, or
 *    with an empty response, is unusable. Score `overall` uses `overall_score` instead.
 *  - chosen: the highest-scoring usable completion; among equal best scores, the first in the
 *    row's completion order.
 *  - rejected: drawn uniformly, seeded, from the remaining usable completions that score below
 *    `chosen` and whose response differs from chosen's (a tie with `chosen`, or the same text
 *    rated lower, carries no preference). Not the lowest: the paper draws at random on purpose.
 *    The draw is uniformIndex(seed, prompt_id, count), so it depends on the row alone.
 *  - rows with fewer than two usable completions, where every usable completion ties, or where
 *    the only lower-scored responses repeat chosen's text, are skipped and counted by reason.
 */
import type { ColumnType } from '../data/writers.js';
import { ZnError } from '../errors.js';
import { sha256Hex, uniformIndex, uniformKey } from './random.js';

export const ASPECTS = ['instruction_following', 'helpfulness', 'honesty', 'truthfulness'] as const;
export type Aspect = (typeof ASPECTS)[number];

export type ScoreRule = 'mean' | 'overall';

export interface BinarizeOptions {
  /** Seed of the `rejected` draw (default 42). */
  seed?: number;
  /** `mean` of the four aspect ratings (default, as the Zephyr paper) or `overall_score`. */
  score?: ScoreRule;
  /** Throw at the first row that cannot make a pair instead of counting it. */
  strict?: boolean;
}

export interface ChatMessage {
  content: string;
  role: 'user' | 'assistant';
}

/** A row of HuggingFaceH4/ultrafeedback_binarized (`messages` is the chosen conversation). */
export interface PreferenceRow {
  prompt: string;
  prompt_id: string;
  chosen: ChatMessage[];
  rejected: ChatMessage[];
  messages: ChatMessage[];
  score_chosen: number;
  score_rejected: number;
}

export type SkipReason = 'missing_instruction' | 'malformed_completions' | 'fewer_than_two_usable' | 'all_tied' | 'no_distinct_rejected';

export interface BinarizeStats {
  rows: number;
  pairs: number;
  skipped: Partial<Record<SkipReason, number>>;
  /** Completions left out: `no_response` (empty or missing) or `no_rating` (no usable score). */
  unusableCompletions: { no_response: number; no_rating: number };
  /** Aspect ratings left out of a mean: "N/A" or missing, and values that are not 1-5. */
  ratings: { not_available: number; invalid: number };
  /** The first few skipped rows, `where: reason`, so a user can look at them. */
  examples: string[];
}

/** Column types of the output, for Parquet (scores are float64 like the Hub's). */
export const PREFERENCE_COLUMNS: Record<keyof PreferenceRow, ColumnType> = {
  prompt: 'string',
  prompt_id: 'string',
  chosen: { list: { struct: { content: 'string', role: 'string' } } },
  rejected: { list: { struct: { content: 'string', role: 'string' } } },
  messages: { list: { struct: { content: 'string', role: 'string' } } },
  score_chosen: 'double',
  score_rejected: 'double',
};

const MAX_EXAMPLES = 5;

interface Scored {
  response: string;
  score: number;
}

/** Turns raw rows into pairs one at a time, keeping the counts. */
export class Binarizer {
  readonly stats: BinarizeStats = {
    rows: 0,
    pairs: 0,
    skipped: {},
    unusableCompletions: { no_response: 0, no_rating: 0 },
    ratings: { not_available: 0, invalid: 0 },
    examples: [],
  };
  private readonly seed: number;
  private readonly rule: ScoreRule;

  constructor(private readonly options: BinarizeOptions = {}) {
    this.seed = options.seed ?? 42;
    this.rule = options.score ?? 'mean';
    if (!Number.isInteger(this.seed)) throw new ZnError(`binarize: seed must be an integer, got ${this.seed}`);
    if (this.rule !== 'mean' && this.rule !== 'overall') throw new ZnError(`binarize: unknown score rule '${this.rule}'`);
  }

  /** The pair for one raw row, or undefined when the row is skipped (counted). */
  add(row: unknown, where: string): PreferenceRow | undefined {
    this.stats.rows++;
    const record = (row ?? {}) as Record<string, unknown>;
    const prompt = record.instruction ?? record.prompt;
    if (typeof prompt !== 'string' || prompt.trim() === '') return this.skip('missing_instruction', where, 'no instruction text');
    if (!Array.isArray(record.completions)) return this.skip('malformed_completions', where, "'completions' is not a list");
    const usable = record.completions.flatMap((completion) => this.scoreCompletion(completion));
    if (usable.length < 2) {
      return this.skip('fewer_than_two_usable', where, `${usable.length} usable of ${record.completions.length} completions`);
    }
    const best = Math.max(...usable.map((c) => c.score));
    const chosen = usable.find((c) => c.score === best)!;
    const below = usable.filter((c) => c.score < best);
    if (below.length === 0) return this.skip('all_tied', where, `all ${usable.length} usable completions score ${best}`);
    const candidates = below.filter((c) => c.response !== chosen.response);
    if (candidates.length === 0) {
      return this.skip('no_distinct_rejected', where, `the ${below.length} lower-scored responses repeat the chosen one`);
    }
    const promptId = sha256Hex(prompt);
    const rejected = candidates[uniformIndex(this.seed, promptId, candidates.length)];
    this.stats.pairs++;
    const conversation = (response: string): ChatMessage[] => [
      { content: prompt, role: 'user' },
      { content: response, role: 'assistant' },
    ];
    const chosenMessages = conversation(chosen.response);
    return {
      prompt,
      prompt_id: promptId,
      chosen: chosenMessages,
      rejected: conversation(rejected.response),
      messages: chosenMessages,
      score_chosen: chosen.score,
      score_rejected: rejected.score,
    };
  }

  private skip(reason: SkipReason, where: string, detail: string): undefined {
    if (this.options.strict) throw new ZnError(`${where}: cannot make a pair (${reason}): ${detail}`);
    this.stats.skipped[reason] = (this.stats.skipped[reason] ?? 0) + 1;
    if (this.stats.examples.length < MAX_EXAMPLES) this.stats.examples.push(`${where}: ${reason} (${detail})`);
    return undefined;
  }

  /** [] when the completion is unusable (counted), else its response and score. */
  private scoreCompletion(completion: unknown): Scored[] {
    const record = (completion ?? {}) as Record<string, unknown>;
    const response = record.response;
    if (typeof response !== 'string' || response.trim() === '') {
      this.stats.unusableCompletions.no_response++;
      return [];
    }
    const score = this.rule === 'mean' ? this.meanRating(record.annotations) : numeric(record.overall_score);
    if (score === undefined) {
      this.stats.unusableCompletions.no_rating++;
      return [];
    }
    return [{ response, score }];
  }

  private meanRating(annotations: unknown): number | undefined {
    const record = (annotations ?? {}) as Record<string, unknown>;
    let sum = 0;
    let count = 0;
    for (const aspect of ASPECTS) {
      const rating = aspectRating(record[aspect]);
      if (rating === 'not_available' || rating === 'invalid') this.stats.ratings[rating]++;
      else {
        sum += rating;
        count++;
      }
    }
    return count === 0 ? undefined : sum / count;
  }
}

/**
 * An aspect's rating: UltraFeedback stores `{Rating: "4", Rationale: ...}` (some exports wrap
 * it in a one-element list). "N/A", null and a missing aspect are `not_available`.
 */
function aspectRating(annotation: unknown): number | 'not_available' | 'invalid' {
  const entry = Array.isArray(annotation) ? annotation[0] : annotation;
  if (entry === undefined || entry === null) return 'not_available';
  const rating = (entry as Record<string, unknown>).Rating;
  if (rating === undefined || rating === null) return 'not_available';
  if (typeof rating === 'string' && rating.trim().toUpperCase() === 'N/A') return 'not_available';
  const value = numeric(rating);
  return value !== undefined && value >= 1 && value <= 5 ? value : 'invalid';
}

function numeric(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? value : undefined;
  if (typeof value === 'string' && value.trim() !== '') {
    const parsed = Number(value.trim());
    return Number.isFinite(parsed) ? parsed : undefined;
  }
  return undefined;
}

/** Binarizes rows (plain raw rows; `where` in messages is `row N`, 0-based). */
export async function binarize(
  rows: Iterable<unknown> | AsyncIterable<unknown>,
  options: BinarizeOptions = {},
): Promise<{ pairs: PreferenceRow[]; stats: BinarizeStats }> {
  const binarizer = new Binarizer(options);
  const pairs: PreferenceRow[] = [];
  let index = 0;
  for await (const row of rows) {
    const pair = binarizer.add(row, `row ${index++}`);
    if (pair) pairs.push(pair);
  }
  return { pairs, stats: binarizer.stats };
}

/**
 * Splits pairs into train and test as `datasets`' train_test_split sizes them: a `testSize`
 * in (0, 1) is a fraction (test gets ceil(fraction * n) rows), an integer >= 1 a count, 0 no
 * test split. Which rows go to test: the ones with the smallest uniformKey(seed,
 * `test_split:${i}:${prompt_id}`); both parts keep the input order.
 */
export function splitTrainTest<T extends { prompt_id: string }>(pairs: T[], testSize: number, seed: number): { train: T[]; test: T[] } {
  const n = pairs.length;
  if (!(testSize >= 0)) throw new ZnError(`test_size must be >= 0, got ${testSize}`);
  if (testSize >= 1 && !Number.isInteger(testSize)) throw new ZnError(`test_size >= 1 is a row count and must be an integer, got ${testSize}`);
  const testCount = testSize < 1 ? Math.ceil(testSize * n) : testSize;
  if (testCount === 0) return { train: pairs, test: [] };
  if (testCount >= n) throw new ZnError(`test_size ${testSize} leaves no training rows (${n} pairs)`);
  const order = pairs
    .map((pair, i) => ({ i, key: uniformKey(seed, `test_split:${i}:${pair.prompt_id}`) }))
    .sort((a, b) => a.key - b.key || a.i - b.i);
  const inTest = new Set(order.slice(0, testCount).map((entry) => entry.i));
  return {
    train: pairs.filter((_, i) => !inTest.has(i)),
    test: pairs.filter((_, i) => inTest.has(i)),
  };
}
