/**
 * MT-Bench questions and reference answers in FastChat's formats (fastchat/llm_judge):
 *   question.jsonl: {question_id, category, turns: [user turn, ...], reference?: [answer per turn]}
 *   reference answers: an answer file ({question_id, choices: [{index, turns: [...]}]}), as
 *   FastChat's reference_answer/gpt-4.jsonl.
 * Every row is checked when read; a bad one stops the run with its file, line and field, before
 * any model is loaded.
 */
import { readFileSync } from 'node:fs';

import { ZnError } from '../errors.js';

export type QuestionId = number | string;

export interface Question {
  question_id: QuestionId;
  category: string;
  turns: string[];
  /** Reference answers, one per turn (from the question row or the reference file). */
  reference?: string[];
}

/** A question's key in maps and files: ids are numbers in MT-Bench, strings in Arena-Hard. */
export function questionKey(id: QuestionId): string {
  return typeof id === 'number' ? `n:${id}` : `s:${id}`;
}

/** The JSON rows of a .jsonl file with their 1-based line numbers (blank lines skipped). */
export function readJsonLines(file: string): { line: number; row: unknown }[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ZnError(`${file}: cannot read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
  const rows: { line: number; row: unknown }[] = [];
  text.split('\n').forEach((content, i) => {
    if (content.trim() === '') return;
    try {
      rows.push({ line: i + 1, row: JSON.parse(content) });
    } catch (error) {
      throw new ZnError(`${file}: line ${i + 1}: not valid JSON (${(error as Error).message})`);
    }
  });
  return rows;
}

function rowError(file: string, line: number, field: string, problem: string): ZnError {
  return new ZnError(`${file}: line ${line}: field '${field}': ${problem}`);
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  return typeof value;
}

function checkId(value: unknown, file: string, line: number): QuestionId {
  if ((typeof value === 'number' && Number.isInteger(value)) || (typeof value === 'string' && value !== '')) return value;
  throw rowError(file, line, 'question_id', `expected an integer or a non-empty string, found ${value === undefined ? 'nothing' : JSON.stringify(value)}`);
}

function checkTexts(value: unknown, file: string, line: number, field: string): string[] {
  if (!Array.isArray(value) || value.length === 0) throw rowError(file, line, field, `expected a non-empty list of strings, found ${value === undefined ? 'nothing' : describe(value)}`);
  value.forEach((turn, i) => {
    if (typeof turn !== 'string') throw rowError(file, line, `${field}[${i}]`, `expected a string, found ${describe(turn)}`);
  });
  return value as string[];
}

/** The questions of a FastChat question.jsonl; ids must be unique. */
export function readQuestions(file: string): Question[] {
  const questions: Question[] = [];
  const seen = new Map<string, number>();
  for (const { line, row } of readJsonLines(file)) {
    if (row === null || typeof row !== 'object' || Array.isArray(row)) throw rowError(file, line, '(row)', `expected an object, found ${describe(row)}`);
    const fields = row as Record<string, unknown>;
    const id = checkId(fields.question_id, file, line);
    const earlier = seen.get(questionKey(id));
    if (earlier !== undefined) throw rowError(file, line, 'question_id', `${JSON.stringify(id)} already used on line ${earlier}`);
    seen.set(questionKey(id), line);
    if (typeof fields.category !== 'string' || fields.category === '') {
      throw rowError(file, line, 'category', `expected a non-empty string, found ${fields.category === undefined ? 'nothing' : describe(fields.category)}`);
    }
    const question: Question = { question_id: id, category: fields.category, turns: checkTexts(fields.turns, file, line, 'turns') };
    if (fields.reference !== undefined && fields.reference !== null) question.reference = checkTexts(fields.reference, file, line, 'reference');
    questions.push(question);
  }
  if (questions.length === 0) throw new ZnError(`${file}: no questions`);
  return questions;
}

/** One answer row of a FastChat answer file (model_answer/<id>.jsonl, reference_answer/<judge>.jsonl). */
export interface AnswerRow {
  question_id: QuestionId;
  answer_id: string;
  model_id: string;
  choices: { index: number; turns: string[] }[];
  tstamp: number;
}

/** The rows of a FastChat answer file, checked (question_id and choices[0].turns). */
export function readAnswerRows(file: string): AnswerRow[] {
  return readJsonLines(file).map(({ line, row }) => {
    if (row === null || typeof row !== 'object' || Array.isArray(row)) throw rowError(file, line, '(row)', `expected an object, found ${describe(row)}`);
    const fields = row as Record<string, unknown>;
    checkId(fields.question_id, file, line);
    const choices = fields.choices;
    if (!Array.isArray(choices) || choices.length === 0 || choices[0] === null || typeof choices[0] !== 'object') {
      throw rowError(file, line, 'choices', `expected a non-empty list of {index, turns}, found ${choices === undefined ? 'nothing' : describe(choices)}`);
    }
    checkTexts((choices[0] as Record<string, unknown>).turns, file, line, 'choices[0].turns');
    return row as AnswerRow;
  });
}

/** Reference answers by question from a FastChat answer file (the first choice's turns). */
export function readReferenceAnswers(file: string): Map<string, string[]> {
  const references = new Map<string, string[]>();
  for (const row of readAnswerRows(file)) references.set(questionKey(row.question_id), row.choices[0].turns);
  return references;
}

/** The questions with references from the file taking the place of those in the rows. */
export function withReferences(questions: Question[], references: Map<string, string[]> | null): Question[] {
  if (!references) return questions;
  return questions.map((question) => {
    const reference = references.get(questionKey(question.question_id));
    return reference ? { ...question, reference } : question;
  });
}
