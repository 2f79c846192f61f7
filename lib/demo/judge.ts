/**
 * The demo's judge: rule-based, it knows the right answer to every held-out task, and it answers
 * eval's requests as an MT-Bench judge would ("Rating: [[N]]"), so the demo scores its models
 * through the same code path as `zephyr-native eval` with a real judge. It reads the question and
 * the answer from the built-in single-answer prompt (single-v1) and rates:
 *   10  the teacher's answer, exactly;
 *    5  the result is there (the word, the list, the count), worded otherwise;
 *    3  the answer has the task's form (`"w" comes first.`, a list of the teacher's words) with a
 *       wrong result;
 *    1  anything else.
 * A request it cannot read gets a reply with no rating, which eval records as a failed judgment.
 */
import type { ChatTurn } from '../aif/rubric.js';
import type { EvalJudge } from '../eval/judgments.js';
import { type Task, WORDS } from './teacher.js';

const ANSWER_START = "[The Start of Assistant's Answer]\n";
const ANSWER_END = "\n[The End of Assistant's Answer]";

/** The form of the teacher's answer per category, whatever the numbers or words in it (lists: isWordList). */
const FORMS: Record<string, RegExp> = {
  first: /^"[a-z]+" comes first\.$/,
  last: /^"[a-z]+" comes last\.$/,
  counting: /^"[a-z ]+" has \d+ words\.$/,
};

/** Categories whose result is a list of words. */
const LIST_RESULTS = new Set(['repeating', 'reversing']);

/** A list answer's form: the teacher's words, space-separated (gibberish is not a list of words). */
function isWordList(text: string): boolean {
  return text.split(' ').every((word) => WORDS.includes(word));
}

export function ruleBasedRating(task: Task, answer: string): number {
  const text = answer.trim();
  if (text === task.answer) return 10;
  const escaped = task.key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  // A list is the result only where no further word runs on from it ("apple river" is not in
  // "apple river bread"); a word or a count needs only word boundaries.
  const around = LIST_RESULTS.has(task.category) ? ['(?<!\\w\\s*)', '(?!\\s*\\w)'] : ['(?<!\\w)', '(?!\\w)'];
  if (new RegExp(`${around[0]}${escaped}${around[1]}`).test(text)) return 5;
  const form = LIST_RESULTS.has(task.category) ? isWordList(text) : FORMS[task.category]?.test(text);
  return form ? 3 : 1;
}

export function ruleBasedJudge(tasks: Task[]): EvalJudge {
  const byPrompt = new Map(tasks.map((task) => [task.prompt, task]));
  return {
    model: 'rule-based-judge',
    complete: async (messages: ChatTurn[]) => {
      const user = messages.find((m) => m.role === 'user')?.content ?? '';
      const question = /\[Question\]\n([\s\S]*?)\n\n/.exec(user)?.[1];
      const task = question === undefined ? undefined : byPrompt.get(question);
      const start = user.indexOf(ANSWER_START);
      const end = user.lastIndexOf(ANSWER_END);
      if (!task || start < 0 || end < start) return 'This request is not one of the demo tasks; I cannot rate it.';
      const rating = ruleBasedRating(task, user.slice(start + ANSWER_START.length, end));
      return `The expected answer is "${task.answer}". Rating: [[${rating}]]`;
    },
  };
}
