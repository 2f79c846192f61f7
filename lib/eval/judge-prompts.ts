/**
 * The judge's prompts, in FastChat's judge_prompts.jsonl format
 *   {name, type: "single" | "pairwise", system_prompt, prompt_template, description, category, output_format}
 * and selected as FastChat's gen_judgment.py selects them: by mode, by whether the question's
 * category needs a reference (math, reasoning, coding, arena-hard-200) and has one, and by turn
 * (turn 1 alone; turn 2 with the whole conversation):
 *
 *   single:   single-v1, single-math-v1, single-v1-multi-turn, single-math-v1-multi-turn
 *   pairwise: pair-v2,   pair-math-v1,   pair-v2-multi-turn,   pair-math-v1-multi-turn
 *
 * The built-in prompts follow MT-Bench's protocol in our own words (same names, placeholders and
 * output formats); `--judge_prompts FILE` replaces them with FastChat's own file, or any in its
 * format. Templates are Python format strings ({question}, {answer_a_2}, {ref_answer_1}, `{{`
 * for a brace), filled as FastChat fills them.
 */
import { ZnError } from '../errors.js';
import { type Question, readJsonLines } from './questions.js';

export type OutputFormat = '[[rating]]' | '[[A]]';

export interface JudgePrompt {
  name: string;
  type: 'single' | 'pairwise';
  system_prompt: string;
  prompt_template: string;
  description?: string;
  category?: string;
  output_format: OutputFormat;
}

export type JudgeMode = 'single' | 'pairwise';

/** FastChat's NEED_REF_CATS: categories judged against a reference answer when there is one. */
export const REFERENCE_CATEGORIES: readonly string[] = ['math', 'reasoning', 'coding', 'arena-hard-200'];

/** The prompt names each mode uses, as FastChat's make_judge_single / make_judge_pairwise. */
export const PROMPT_NAMES = {
  single: { general: 'single-v1', reference: 'single-math-v1', generalMultiTurn: 'single-v1-multi-turn', referenceMultiTurn: 'single-math-v1-multi-turn' },
  pairwise: { general: 'pair-v2', reference: 'pair-math-v1', generalMultiTurn: 'pair-v2-multi-turn', referenceMultiTurn: 'pair-math-v1-multi-turn' },
} as const;

const IMPARTIAL = 'You are an impartial and careful evaluator of AI assistants.';

const RATING_RULES =
  'Consider how helpful, relevant, accurate and deep the response is, how much useful detail it gives, and how creative it is where the task calls for it. ' +
  'Start with a short explanation, staying as objective as you can. After it, give your rating on a scale of 1 to 10, written exactly in this format: "[[rating]]", for example "Rating: [[5]]".';

const REFERENCE_RULES =
  'Your evaluation should weigh correctness and helpfulness. You are given a reference answer and the assistant\'s answer. ' +
  "Start by comparing the assistant's answer with the reference, and point out and correct any mistake. Stay as objective as you can. " +
  'After your explanation, give your rating on a scale of 1 to 10, written exactly in this format: "[[rating]]", for example "Rating: [[5]]".';

const PAIR_RULES =
  'Decide which assistant follows the instructions and answers the question better, considering helpfulness, relevance, accuracy, depth, creativity and level of detail. ' +
  'Start by comparing the two responses and give a short explanation. Do not let the order in which they are shown, their length or the assistants\' names sway you, and stay as objective as you can. ' +
  'After your explanation, give your final verdict strictly in this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.';

const PAIR_REFERENCE_RULES =
  'Your evaluation should weigh correctness and helpfulness. You are given a reference answer, assistant A\'s answer and assistant B\'s answer. ' +
  'Decide which assistant answers better: start by comparing both answers with the reference, and point out and correct any mistake. ' +
  'Do not let the order in which they are shown, their length or the assistants\' names sway you, and stay as objective as you can. ' +
  'After your explanation, give your final verdict strictly in this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.';

function conversation(speaker: string, suffix: string): string {
  return [
    `<|The Start of ${speaker}'s Conversation with User|>`,
    '',
    '### User:',
    '{question_1}',
    '',
    `### ${speaker}:`,
    `{answer${suffix}_1}`,
    '',
    '### User:',
    '{question_2}',
    '',
    `### ${speaker}:`,
    `{answer${suffix}_2}`,
    '',
    `<|The End of ${speaker}'s Conversation with User|>`,
  ].join('\n');
}

const REFERENCE_CONVERSATION = [
  "<|The Start of Reference Answer|>",
  '',
  '### User:',
  '{question_1}',
  '',
  '### Reference answer:',
  '{ref_answer_1}',
  '',
  '### User:',
  '{question_2}',
  '',
  '### Reference answer:',
  '{ref_answer_2}',
  '',
  '<|The End of Reference Answer|>',
].join('\n');

/** The built-in prompts: MT-Bench's protocol, our wording. */
export const DEFAULT_JUDGE_PROMPTS: readonly JudgePrompt[] = [
  {
    name: 'single-v1',
    type: 'single',
    system_prompt: IMPARTIAL,
    prompt_template: `[Instruction]\nRate the quality of the response an AI assistant gives to the user question below. ${RATING_RULES}\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]`,
    description: 'Prompt for general questions',
    category: 'general',
    output_format: '[[rating]]',
  },
  {
    name: 'single-math-v1',
    type: 'single',
    system_prompt: IMPARTIAL,
    prompt_template: `[Instruction]\nRate the quality of the response an AI assistant gives to the user question below. ${REFERENCE_RULES}\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]`,
    description: 'Prompt for questions with a reference answer (math, reasoning, coding)',
    category: 'math',
    output_format: '[[rating]]',
  },
  {
    name: 'single-v1-multi-turn',
    type: 'single',
    system_prompt: `${IMPARTIAL} Rate the quality of the response an AI assistant gives to the user question shown. ${RATING_RULES} Rate only the assistant's answer to the second user question.`,
    prompt_template: conversation('Assistant A', ''),
    description: 'Prompt for the second turn of general questions',
    category: 'general',
    output_format: '[[rating]]',
  },
  {
    name: 'single-math-v1-multi-turn',
    type: 'single',
    system_prompt: `${IMPARTIAL} Rate the quality of the response an AI assistant gives to the user question shown. ${REFERENCE_RULES} Rate only the assistant's answer to the second user question.`,
    prompt_template: `${REFERENCE_CONVERSATION}\n\n\n${conversation('Assistant A', '')}`,
    description: 'Prompt for the second turn of questions with a reference answer',
    category: 'math',
    output_format: '[[rating]]',
  },
  {
    name: 'pair-v2',
    type: 'pairwise',
    system_prompt: `${IMPARTIAL} Compare the responses two AI assistants give to the user question shown. ${PAIR_RULES}`,
    prompt_template: "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]",
    description: 'Prompt for general questions',
    category: 'general',
    output_format: '[[A]]',
  },
  {
    name: 'pair-math-v1',
    type: 'pairwise',
    system_prompt: `${IMPARTIAL} Compare the responses two AI assistants give to the user question shown. ${PAIR_REFERENCE_RULES}`,
    prompt_template:
      "[User Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]",
    description: 'Prompt for questions with a reference answer (math, reasoning, coding)',
    category: 'math',
    output_format: '[[A]]',
  },
  {
    name: 'pair-v2-multi-turn',
    type: 'pairwise',
    system_prompt: `${IMPARTIAL} Compare the responses two AI assistants give to the user questions shown. ${PAIR_RULES} Compare only the answers to the second user question.`,
    prompt_template: `${conversation('Assistant A', '_a')}\n\n\n${conversation('Assistant B', '_b')}`,
    description: 'Prompt for the second turn of general questions',
    category: 'general',
    output_format: '[[A]]',
  },
  {
    name: 'pair-math-v1-multi-turn',
    type: 'pairwise',
    system_prompt: `${IMPARTIAL} Compare the responses two AI assistants give to the user questions shown. ${PAIR_REFERENCE_RULES} Compare only the answers to the second user question.`,
    prompt_template: `${REFERENCE_CONVERSATION}\n\n\n${conversation('Assistant A', '_a')}\n\n\n${conversation('Assistant B', '_b')}`,
    description: 'Prompt for the second turn of questions with a reference answer',
    category: 'math',
    output_format: '[[A]]',
  },
];

const OUTPUT_FORMATS: readonly string[] = ['[[rating]]', '[[A]]'];

/** Prompts from a FastChat judge_prompts.jsonl, checked (name, type, templates, output format). */
export function readJudgePrompts(file: string): JudgePrompt[] {
  return readJsonLines(file).map(({ line, row }) => {
    const where = (field: string) => `${file}: line ${line}: field '${field}'`;
    if (row === null || typeof row !== 'object' || Array.isArray(row)) throw new ZnError(`${file}: line ${line}: expected an object`);
    const prompt = row as Record<string, unknown>;
    for (const field of ['name', 'system_prompt', 'prompt_template'] as const) {
      if (typeof prompt[field] !== 'string') throw new ZnError(`${where(field)}: expected a string`);
    }
    if (prompt.type !== 'single' && prompt.type !== 'pairwise') throw new ZnError(`${where('type')}: expected "single" or "pairwise", found ${JSON.stringify(prompt.type)}`);
    if (!OUTPUT_FORMATS.includes(prompt.output_format as string)) {
      throw new ZnError(`${where('output_format')}: expected one of ${OUTPUT_FORMATS.map((f) => JSON.stringify(f)).join(', ')}, found ${JSON.stringify(prompt.output_format)}`);
    }
    try {
      placeholders(prompt.prompt_template as string);
    } catch (error) {
      throw new ZnError(`${where('prompt_template')}: ${(error as Error).message}`);
    }
    return prompt as unknown as JudgePrompt;
  });
}

/** The prompts by name, checked to hold every prompt `mode` needs, of the right type. */
export function promptSet(prompts: readonly JudgePrompt[], mode: JudgeMode, source = 'the built-in prompts'): Map<string, JudgePrompt> {
  const byName = new Map(prompts.map((p) => [p.name, p]));
  for (const name of Object.values(PROMPT_NAMES[mode])) {
    const prompt = byName.get(name);
    if (!prompt) throw new ZnError(`${source}: no prompt named '${name}' (${mode} judging needs ${Object.values(PROMPT_NAMES[mode]).join(', ')})`);
    const expected = mode === 'single' ? 'single' : 'pairwise';
    if (prompt.type !== expected) throw new ZnError(`${source}: prompt '${name}' has type '${prompt.type}', ${mode} judging needs '${expected}'`);
    const format = mode === 'single' ? '[[rating]]' : '[[A]]';
    if (prompt.output_format !== format) throw new ZnError(`${source}: prompt '${name}' has output_format '${prompt.output_format}', ${mode} judging reads '${format}'`);
  }
  return byName;
}

/** Whether a question is judged against its reference (FastChat: category needs one; here: and it has one). */
export function usesReference(question: Question): boolean {
  return REFERENCE_CATEGORIES.includes(question.category) && (question.reference?.length ?? 0) > 0;
}

/** The prompt for a question's turn (1 or 2) in `mode`. */
export function selectPrompt(prompts: Map<string, JudgePrompt>, mode: JudgeMode, question: Question, turn: number): JudgePrompt {
  const names = PROMPT_NAMES[mode];
  const reference = usesReference(question);
  const name = turn === 1 ? (reference ? names.reference : names.general) : reference ? names.referenceMultiTurn : names.generalMultiTurn;
  return prompts.get(name)!;
}

/** The `{name}` fields a Python format string uses (`{{` and `}}` are literal braces). */
export function placeholders(template: string): string[] {
  const names: string[] = [];
  formatTemplate(template, (name) => {
    names.push(name);
    return '';
  });
  return names;
}

/**
 * Python's str.format for plain `{name}` fields, as FastChat fills its templates: `{{`/`}}` are
 * braces; a field the values lack is an error naming it.
 */
export function fillTemplate(template: string, values: Record<string, string>, promptName = 'prompt'): string {
  return formatTemplate(template, (name) => {
    if (!(name in values)) throw new ZnError(`judge prompt '${promptName}': the template uses {${name}}, which this judgment does not have (it has ${Object.keys(values).join(', ')})`);
    return values[name];
  });
}

function formatTemplate(template: string, field: (name: string) => string): string {
  let out = '';
  for (let i = 0; i < template.length; i++) {
    const c = template[i];
    if ((c === '{' || c === '}') && template[i + 1] === c) {
      out += c;
      i++;
    } else if (c === '{') {
      const end = template.indexOf('}', i);
      const name = end < 0 ? '' : template.slice(i + 1, end);
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new ZnError(`unsupported format field at offset ${i}: '${template.slice(i, end < 0 ? i + 20 : end + 1)}' (only {name} fields and {{ }} braces)`);
      out += field(name);
      i = end;
    } else if (c === '}') {
      throw new ZnError(`single '}' at offset ${i} (write '}}' for a brace)`);
    } else {
      out += c;
    }
  }
  return out;
}
