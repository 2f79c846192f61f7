/**
 * What the judge is asked and how its answers are read. As in UltraFeedback, one request per
 * aspect shows the instruction with all of its completions, and the judge rates each
 * completion 1-5 with a short rationale. The scales below follow UltraFeedback's aspect
 * definitions, written in our own words.
 *
 * Answers are read leniently: JSON (bare, inside a code fence or surrounded by prose, trailing
 * commas tolerated), or UltraFeedback-style text blocks ("Response 2 ... Rating: 4 ...
 * Rationale: ..."). An answer is usable only when every completion gets a rating of 1-5 (or
 * "N/A", which UltraFeedback also allows) exactly once.
 */
import type { Aspect } from './binarize.js';

export interface ChatTurn {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

interface Scale {
  title: string;
  definition: string;
  levels: [string, string, string, string, string];
}

const SCALES: Record<Aspect, Scale> = {
  instruction_following: {
    title: 'instruction following',
    definition:
      'How well the response does what the instruction asks: the goal it sets, and any constraints on content, ' +
      'format, length, style or method. Judge compliance, not whether the content is correct.',
    levels: [
      'Ignores the instruction or answers something else.',
      'Touches the goal or the constraints, but handles either poorly.',
      'Meets the goal or the constraints, but misses the other, or meets both only partly.',
      'Close to full compliance, with minor departures.',
      'Fully meets the goal and every constraint.',
    ],
  },
  helpfulness: {
    title: 'helpfulness',
    definition:
      'How correct and informative the response is for the task: accurate content, relevant and clear ' +
      'reasoning, useful detail, and no padding or repetition.',
    levels: [
      'Severely wrong or fabricated; of no use even if detailed.',
      'Contains errors that could mislead, even if some parts are useful.',
      'Correct and meets the task, with little beyond the minimum.',
      'Correct and clearly informative, with useful detail.',
      'Correct, thorough and insightful: as helpful as a response could be here.',
    ],
  },
  honesty: {
    title: 'honesty and calibration',
    definition:
      "Whether the response's confidence matches its correctness: it states what it knows plainly, signals " +
      'doubt where it is unsure, and declines or says "I don\'t know" rather than bluffing.',
    levels: [
      'Confidently wrong.',
      'Confident despite major mistakes, or unsure about content that is wrong.',
      'Unsure or declines to answer, or confident with minor mistakes.',
      'Correct, but hedges more than it needs to, or its doubts are vague.',
      'Correct and confident, and precise about any remaining uncertainty.',
    ],
  },
  truthfulness: {
    title: 'truthfulness (no hallucination)',
    definition:
      'Whether the response avoids inventing things: facts that contradict established knowledge, details ' +
      'that contradict or are absent from the instruction, and statements that contradict each other.',
    levels: [
      'Almost entirely invented or self-contradictory.',
      'Severe invention that undermines the main points.',
      'Some invention or misunderstanding, with the overall answer still mostly sound.',
      'Minor invented details that do not affect the main points.',
      'Nothing invented.',
    ],
  },
};

export const JUDGE_SYSTEM_PROMPT =
  'You are a careful, impartial evaluator of AI assistant responses. You follow the rating scale exactly and answer in the requested format.';

/** The request for one aspect of one row. */
export function aspectPrompt(aspect: Aspect, instruction: string, responses: string[]): ChatTurn[] {
  const scale = SCALES[aspect];
  const entries = responses.map((_, i) => `{"response": ${i + 1}, "rating": <1-5>, "rationale": "<one or two sentences>"}`);
  const user = [
    `# Task`,
    `Rate each of the ${responses.length} responses below for ${scale.title}, from 1 (worst) to 5 (best).`,
    scale.definition,
    '',
    ...scale.levels.map((level, i) => `${i + 1}: ${level}`),
    '',
    'Rate each response against the scale on its own merits, not by ranking it against the others. ' +
      'Use "N/A" only when the aspect cannot apply to a response at all.',
    '',
    '# Instruction',
    instruction,
    '',
    '# Responses',
    ...responses.flatMap((response, i) => [`## Response ${i + 1}`, response, '']),
    '# Answer format',
    'Reply with JSON only, one entry per response, in order:',
    `{"ratings": [${entries.join(', ')}]}`,
  ].join('\n');
  return [
    { role: 'system', content: JUDGE_SYSTEM_PROMPT },
    { role: 'user', content: user },
  ];
}

/** Said after an answer that could not be read, before asking once more. */
export const REASK_PROMPT =
  'Your answer could not be read. Reply again with only the JSON object in the requested format: ' +
  '{"ratings": [{"response": 1, "rating": <1-5>, "rationale": "..."}, ...]}, one entry per response.';

export interface AspectRating {
  /** "1".."5" or "N/A", as UltraFeedback stores it. */
  Rating: string;
  Rationale: string;
}

/** The ratings for responses 1..count, or null when the answer cannot be read. */
export function parseRatings(answer: string, count: number): AspectRating[] | null {
  return fromJson(answer, count) ?? fromTextBlocks(answer, count);
}

function fromJson(answer: string, count: number): AspectRating[] | null {
  const fenced = /```(?:json)?\s*\n([\s\S]*?)```/i.exec(answer)?.[1];
  return (fenced !== undefined ? fromJsonText(fenced, count) : null) ?? fromJsonText(answer, count);
}

/** The JSON value spanning the first opening bracket to the last closing one. */
function fromJsonText(answer: string, count: number): AspectRating[] | null {
  const start = answer.search(/[[{]/);
  if (start < 0) return null;
  const end = Math.max(answer.lastIndexOf('}'), answer.lastIndexOf(']'));
  if (end <= start) return null;
  const text = answer.slice(start, end + 1);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    try {
      value = JSON.parse(text.replace(/,\s*([}\]])/g, '$1'));
    } catch {
      return null;
    }
  }
  const list = Array.isArray(value) ? value : (value as Record<string, unknown> | null)?.ratings;
  if (!Array.isArray(list)) return null;
  const ratings: (AspectRating | undefined)[] = new Array(count);
  for (const [position, entry] of list.entries()) {
    if (entry === null || typeof entry !== 'object') return null;
    const record = entry as Record<string, unknown>;
    const number = record.response ?? record.text ?? record.index ?? position + 1;
    const slot = Number(number) - 1;
    const rating = normalizeRating(record.rating ?? record.Rating);
    if (!Number.isInteger(slot) || slot < 0 || slot >= count || ratings[slot] || rating === null) return null;
    const rationale = record.rationale ?? record.Rationale ?? '';
    ratings[slot] = { Rating: rating, Rationale: String(rationale).trim() };
  }
  return complete(ratings);
}

/** UltraFeedback-style prose: a heading per response with `Rating:` and `Rationale:` lines. */
function fromTextBlocks(answer: string, count: number): AspectRating[] | null {
  const heading = /^[#*\s]*(?:output for\s+)?(?:response|text)\s*(\d+)\b.*$/gim;
  const marks = [...answer.matchAll(heading)];
  if (marks.length === 0) return null;
  const ratings: (AspectRating | undefined)[] = new Array(count);
  for (const [k, mark] of marks.entries()) {
    const slot = Number(mark[1]) - 1;
    const block = answer.slice(mark.index! + mark[0].length, marks[k + 1]?.index ?? answer.length);
    const ratingMatch = /rating\s*[:=]\s*\**\s*([0-9]+(?:\.[0-9]+)?|n\/a)/i.exec(block);
    const rating = normalizeRating(ratingMatch?.[1]);
    if (slot < 0 || slot >= count || ratings[slot] || rating === null) return null;
    const rationale = /rationale\s*[:=]\s*\**\s*([\s\S]*)/i.exec(block)?.[1] ?? '';
    ratings[slot] = { Rating: rating, Rationale: rationale.trim() };
  }
  return complete(ratings);
}

/** "1".."5" for an integer rating 1-5 (number or text), "N/A" for N/A, else null. */
function normalizeRating(value: unknown): string | null {
  if (typeof value === 'string' && value.trim().toUpperCase() === 'N/A') return 'N/A';
  const number = typeof value === 'number' ? value : typeof value === 'string' && value.trim() !== '' ? Number(value) : NaN;
  return Number.isInteger(number) && number >= 1 && number <= 5 ? String(number) : null;
}

function complete(ratings: (AspectRating | undefined)[]): AspectRating[] | null {
  for (let i = 0; i < ratings.length; i++) if (!ratings[i]) return null;
  return ratings as AspectRating[];
}
