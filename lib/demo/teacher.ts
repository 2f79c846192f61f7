/**
 * The built-in demo's data, made here with a rule-based "teacher" on tasks whose answers can be
 * checked exactly (arithmetic, reversing, upper-casing, counting, sorting):
 *   - UltraChat-style SFT rows {prompt, prompt_id, messages}, answered correctly by the teacher;
 *   - raw UltraFeedback-style rows {instruction, completions[]}, where several rule-based
 *     "student models" answer (correct, near-miss, wrong, evasive) and a rule-based judge rates
 *     each completion 1-5 on the four UltraFeedback aspects.
 * Everything is a pure function of the seed.
 */
import { createHash } from 'node:crypto';

export interface Task {
  /** The kind of task: the category its held-out questions are scored under. */
  category: string;
  prompt: string;
  answer: string;
  /** The result alone (the sum, the reversed word...): what a right but loosely worded answer contains. */
  key: string;
  /** A plausible wrong answer (an off-by-one result, a partly reversed word...). */
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

const WORDS = ['apple', 'river', 'planet', 'garden', 'silver', 'window', 'rocket', 'forest', 'candle', 'mirror', 'tiger', 'ocean', 'paper', 'guitar', 'pencil', 'orange'];

const pick = <T>(rng: Rng, items: readonly T[]): T => items[Math.floor(rng() * items.length)];
const int = (rng: Rng, lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));

const TASKS: ((rng: Rng) => Task)[] = [
  (rng) => {
    const a = int(rng, 2, 60);
    const b = int(rng, 2, 40);
    return { category: 'addition', prompt: `What is ${a} + ${b}?`, answer: `${a} + ${b} = ${a + b}.`, key: String(a + b), nearMiss: `${a} + ${b} = ${a + b + (rng() < 0.5 ? 1 : -1)}.` };
  },
  (rng) => {
    const word = pick(rng, WORDS);
    const reversed = [...word].reverse().join('');
    return { category: 'reversing', prompt: `Reverse the word "${word}".`, answer: `"${word}" reversed is "${reversed}".`, key: reversed, nearMiss: `"${word}" reversed is "${reversed.slice(1)}${reversed[0]}".` };
  },
  (rng) => {
    const words = `${pick(rng, WORDS)} ${pick(rng, WORDS)}`;
    return { category: 'capitals', prompt: `Write "${words}" in capital letters.`, answer: words.toUpperCase(), key: words.toUpperCase(), nearMiss: words[0].toUpperCase() + words.slice(1) };
  },
  (rng) => {
    const word = pick(rng, WORDS);
    return { category: 'counting', prompt: `How many letters are in "${word}"?`, answer: `"${word}" has ${word.length} letters.`, key: String(word.length), nearMiss: `"${word}" has ${word.length + 1} letters.` };
  },
  (rng) => {
    const numbers = Array.from({ length: 4 }, () => int(rng, 1, 30));
    const sorted = [...numbers].sort((x, y) => x - y);
    // The near miss must differ from the answer: swap two neighbours that differ, or reverse.
    const swapped = [...sorted];
    [swapped[1], swapped[2]] = [swapped[2], swapped[1]];
    const nearMiss = swapped[1] !== swapped[2] ? swapped : [...sorted].reverse();
    const wrong = nearMiss.join(', ') === sorted.join(', ') ? `${sorted.join(', ')}, 0` : nearMiss.join(', ');
    return { category: 'sorting', prompt: `Sort these numbers from smallest to largest: ${numbers.join(', ')}.`, answer: sorted.join(', '), key: sorted.join(', '), nearMiss: wrong };
  },
];

export function makeTask(rng: Rng): Task {
  return pick(rng, TASKS)(rng);
}

/** Held-out tasks, `perCategory` of each kind, in category order (pure function of the seed). */
export function heldOutTasks(perCategory: number, seed: number): Task[] {
  const rng = seededRandom(seed);
  return TASKS.flatMap((task) => Array.from({ length: perCategory }, () => task(rng)));
}

export function promptId(prompt: string): string {
  return createHash('sha256').update(prompt).digest('hex');
}

/** UltraChat-200k schema. */
export function ultrachatRows(count: number, seed: number): object[] {
  const rng = seededRandom(seed);
  return Array.from({ length: count }, () => {
    const task = makeTask(rng);
    return {
      prompt: task.prompt,
      prompt_id: promptId(task.prompt),
      messages: [
        { role: 'user', content: task.prompt },
        { role: 'assistant', content: task.answer },
      ],
    };
  });
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
