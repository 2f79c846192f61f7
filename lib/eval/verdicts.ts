/**
 * Reading the judge's replies as FastChat's gen_judgment.py reads them:
 *   "[[rating]]": the first `[[N]]` (N a number, as `\[\[(\d+\.?\d*)\]\]`), else the first
 *   `[N]` (its backup pattern). Stricter than FastChat in one way: a rating outside 1-10 is
 *   unreadable, not averaged.
 *   "[[A]]": `[[A]]`, `[[B]]` or `[[C]]` (a tie). FastChat takes A whenever "[[A]]" appears; a
 *   reply naming two different verdicts is unreadable here instead, so a judge that quotes the
 *   format before answering is asked again rather than counted for A.
 * An unreadable reply comes back with the reason, so it is recorded, never dropped.
 */
export type Rating = { score: number } | { failure: string };

export type PairVerdict = 'A' | 'B' | 'tie';
export type PairReading = { verdict: PairVerdict } | { failure: string };

const SCORE = /\[\[(\d+\.?\d*)\]\]/;
const SCORE_BACKUP = /\[(\d+\.?\d*)\]/;

export function parseRating(reply: string): Rating {
  const match = SCORE.exec(reply) ?? SCORE_BACKUP.exec(reply);
  if (!match) return { failure: 'no rating in the "[[rating]]" format' };
  const score = Number(match[1]);
  if (!(score >= 1 && score <= 10)) return { failure: `rating ${match[1]} is outside 1-10` };
  return { score };
}

export function parsePairVerdict(reply: string): PairReading {
  const found = new Set<PairVerdict>();
  for (const [, letter] of reply.matchAll(/\[\[([ABC])\]\]/g)) found.add(letter === 'C' ? 'tie' : (letter as PairVerdict));
  if (found.size === 0) return { failure: 'no verdict in the "[[A]]" / "[[B]]" / "[[C]]" format' };
  if (found.size > 1) return { failure: `more than one verdict (${[...found].join(', ')})` };
  return { verdict: [...found][0] };
}

/** The follow-up after an unreadable reply. */
export function reaskPrompt(format: '[[rating]]' | '[[A]]'): string {
  return format === '[[rating]]'
    ? 'Your reply has no rating in the required format. Reply with the rating alone, exactly in this format: "[[rating]]", for example "Rating: [[5]]".'
    : 'Your reply has no single final verdict in the required format. Reply with the verdict alone: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" for a tie.';
}
