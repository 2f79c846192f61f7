/**
 * The built-in demo's data, made here with a rule-based "teacher" on tasks over short word lists
 * whose answers can be checked exactly (which word comes first or last, repeating the list,
 * reversing its order, counting its words):
 *   - UltraChat-style SFT rows {prompt, prompt_id, messages}, answered correctly by the teacher;
 *   - raw UltraFeedback-style rows {instruction, completions[]}, where several rule-based
 *     "student models" answer (correct, near-miss, wrong, evasive) and a rule-based judge rates
 *     each completion 1-5 on the four UltraFeedback aspects (the tests' preference data; the
 *     demo's own come from its SFT model, lib/demo/aif.ts).
 * The tasks are skills a transformer can learn (attention finds and copies words of the prompt,
 * or counts them), so held-out prompts can be new lists, never seen in training, and scoring them
 * measures the skill rather than recall. Every word is one token of Llama-2's tokenizer.
 * Everything is a pure function of the seed.
 */
import { createHash } from 'node:crypto';

export interface Task {
  /** The kind of task: the category its held-out questions are scored under. */
  category: string;
  prompt: string;
  answer: string;
  /** The result alone (the word, the list, the count): what a right but loosely worded answer contains. */
  key: string;
  /** A plausible wrong answer (another word of the list, the list unreversed, a count off by one). */
  nearMiss: string;
}

type Rng = () => number;

/** mulberry32: a small, well-known 32-bit PRNG; plenty for generating demo data. */
export function seededRandom(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Single tokens of Llama-2's tokenizer (after a space), so a list of n words is n tokens. */
export const WORDS: readonly string[] = [
  'apple', 'river', 'planet', 'garden', 'silver', 'window', 'forest', 'candle', 'mirror', 'ocean', 'paper', 'guitar',
  'orange', 'house', 'water', 'music', 'table', 'chair', 'bread', 'horse', 'green', 'light', 'stone', 'cloud',
  'money', 'paint', 'glass', 'metal', 'sugar', 'dream', 'train', 'field', 'heart', 'night', 'smile', 'storm',
  'sound', 'bird', 'fish', 'tree', 'book', 'door', 'hand', 'road', 'ship', 'star', 'wolf', 'king',
];

const pick = <T>(rng: Rng, items: readonly T[]): T => items[Math.floor(rng() * items.length)];
const int = (rng: Rng, lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));

/** 2 to 5 different words. */
function wordList(rng: Rng): string[] {
  const length = int(rng, 2, 5);
  const words: string[] = [];
  while (words.length < length) {
    const word = pick(rng, WORDS);
    if (!words.includes(word)) words.push(word);
  }
  return words;
}

/** Another word of the list than `not` (the lists have two words at least). */
function otherWord(rng: Rng, words: string[], not: string): string {
  const others = words.filter((w) => w !== not);
  return pick(rng, others);
}

type TaskMaker = (words: string[], rng: Rng) => Task;

const TASKS: TaskMaker[] = [
  (words, rng) => {
    const quoted = `"${words.join(' ')}"`;
    return { category: 'first', prompt: `Which word comes first in ${quoted}?`, answer: `"${words[0]}" comes first.`, key: `"${words[0]}"`, nearMiss: `"${otherWord(rng, words, words[0])}" comes first.` };
  },
  (words, rng) => {
    const last = words[words.length - 1];
    return { category: 'last', prompt: `Which word comes last in "${words.join(' ')}"?`, answer: `"${last}" comes last.`, key: `"${last}"`, nearMiss: `"${otherWord(rng, words, last)}" comes last.` };
  },
  (words) => {
    const list = words.join(' ');
    // The near miss drops the last word.
    return { category: 'repeating', prompt: `Repeat "${list}".`, answer: list, key: list, nearMiss: words.slice(0, -1).join(' ') };
  },
  (words) => {
    const reversed = [...words].reverse().join(' ');
    // The near miss is the commonest mistake: the list as it was.
    return { category: 'reversing', prompt: `Reverse the order of "${words.join(' ')}".`, answer: reversed, key: reversed, nearMiss: words.join(' ') };
  },
  (words, rng) => {
    const quoted = `"${words.join(' ')}"`;
    const off = words.length + (rng() < 0.5 && words.length > 2 ? -1 : 1);
    return { category: 'counting', prompt: `How many words are in ${quoted}?`, answer: `${quoted} has ${words.length} words.`, key: `${words.length} words`, nearMiss: `${quoted} has ${off} words.` };
  },
];

/** The task kinds, in TASKS' order (the held-out tasks' and the radar chart's order). */
export const CATEGORIES = ['first', 'last', 'repeating', 'reversing', 'counting'];

export function makeTask(rng: Rng): Task {
  const maker = pick(rng, TASKS);
  return maker(wordList(rng), rng);
}

/**
 * Held-out tasks, `perCategory` of each kind, in category order (pure function of the seed). Their
 * word lists are new: `seen` (the word lists of the training prompts, as `listOf` gives them) are
 * never drawn, so a held-out prompt cannot be answered from memory.
 */
export function heldOutTasks(perCategory: number, seed: number, seen: ReadonlySet<string> = new Set()): Task[] {
  const rng = seededRandom(seed);
  const drawn = new Set(seen);
  return TASKS.flatMap((maker) =>
    Array.from({ length: perCategory }, () => {
      let words = wordList(rng);
      while (drawn.has(words.join(' '))) words = wordList(rng);
      drawn.add(words.join(' '));
      return maker(words, rng);
    }),
  );
}

/** The word list a task prompt is about ("apple river"), or null for another prompt. */
export function listOf(prompt: string): string | null {
  return /"([a-z ]+)"/.exec(prompt)?.[1] ?? null;
}

export function promptId(prompt: string): string {
  return createHash('sha256').update(prompt).digest('hex');
}

/** `count` tasks of random kinds (pure function of the seed). */
export function randomTasks(count: number, seed: number): Task[] {
  const rng = seededRandom(seed);
  return Array.from({ length: count }, () => makeTask(rng));
}

/** A task as an UltraChat-200k row, answered by the teacher. */
export function chatRow(task: Task): { prompt: string; prompt_id: string; messages: { role: 'user' | 'assistant'; content: string }[] } {
  return {
    prompt: task.prompt,
    prompt_id: promptId(task.prompt),
    messages: [
      { role: 'user', content: task.prompt },
      { role: 'assistant', content: task.answer },
    ],
  };
}

/** UltraChat-200k schema. */
export function ultrachatRows(count: number, seed: number): object[] {
  return randomTasks(count, seed).map(chatRow);
}

interface Student {
  model: string;
  answer: (task: Task, rng: Rng) => string;
  /** Ratings (instruction_following, helpfulness, honesty, truthfulness) the judge gives. */
  ratings: [number, number, number, number];
}

const EVASIONS = ["I'm not sure about that.", 'That is a difficult question.', 'Let me think about something else.'];

const STUDENTS: Student[] = [
  { model: 'teacher-exact', answer: (task) => task.answer, ratings: [5, 5, 5, 5] },
  { model: 'student-near-miss', answer: (task) => task.nearMiss, ratings: [4, 3, 3, 2] },
  { model: 'student-evasive', answer: (_task, rng) => pick(rng, EVASIONS), ratings: [1, 1, 3, 3] },
  { model: 'student-off-topic', answer: (_task, rng) => `The answer is ${pick(rng, WORDS)}.`, ratings: [2, 1, 2, 1] },
];

const ASPECTS = ['instruction_following', 'helpfulness', 'honesty', 'truthfulness'] as const;

/** Raw UltraFeedback schema: every student answers, the rule-based judge rates. */
export function ultrafeedbackRows(count: number, seed: number): object[] {
  const rng = seededRandom(seed);
  return Array.from({ length: count }, () => {
    const task = makeTask(rng);
    const completions = STUDENTS.map((student) => {
      const annotations = Object.fromEntries(
        ASPECTS.map((aspect, i) => [aspect, { Rating: String(student.ratings[i]), Rationale: `rule-based judge: ${student.model}` }]),
      );
      const mean = student.ratings.reduce((a, b) => a + b, 0) / ASPECTS.length;
      return {
        model: student.model,
        response: student.answer(task, rng),
        annotations,
        custom_system_prompt: '',
        principle: 'helpfulness',
        'fine-grained_score': mean,
        overall_score: student.ratings[1] * 2,
        critique: '',
      };
    });
    return {
      source: 'zephyr-native-demo',
      instruction: task.prompt,
      models: STUDENTS.map((s) => s.model),
      completions,
      correct_answers: [task.answer],
      incorrect_answers: [task.nearMiss],
    };
  });
}
