/**
 * Checks of the fields rows carry: message lists (`[{role, content}]`, the UltraChat and
 * UltraFeedback nesting), strings and pre-tokenized id lists. Each check returns the typed value
 * or throws a RowProblem naming the field and the reason.
 */
import type { ChatMessage } from './chat-template.js';
import { RowProblem } from './validation.js';

const ROLES = new Set(['system', 'user', 'assistant']);

function typeName(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

export function isMessageList(value: unknown): value is Record<string, unknown>[] {
  return Array.isArray(value) && value.length > 0 && typeof value[0] === 'object' && value[0] !== null && 'role' in value[0];
}

/**
 * A list of {role, content} with known roles and non-empty user/assistant content, in chat order
 * unless `checkOrder` is false (a completion checked later together with its prompt).
 */
export function parseMessages(value: unknown, field: string, checkOrder = true): ChatMessage[] {
  if (value === undefined || value === null) throw new RowProblem('missing_field', field, 'missing');
  if (!Array.isArray(value)) throw new RowProblem('wrong_type', field, `expected a list of messages, found ${typeName(value)}`);
  if (value.length === 0) throw new RowProblem('empty_conversation', field, 'no messages');
  const messages = value.map((entry, i) => parseMessage(entry, `${field}[${i}]`));
  if (checkOrder) checkRoleOrder(messages, field);
  return messages;
}

function parseMessage(entry: unknown, field: string): ChatMessage {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
    throw new RowProblem('wrong_type', field, `expected a {role, content} object, found ${typeName(entry)}`);
  }
  const message = entry as Record<string, unknown>;
  for (const key of ['role', 'content']) {
    if (message[key] === undefined || message[key] === null) throw new RowProblem('missing_field', `${field}.${key}`, 'missing');
    if (typeof message[key] !== 'string') throw new RowProblem('wrong_type', `${field}.${key}`, `expected a string, found ${typeName(message[key])}`);
  }
  const role = message.role as string;
  if (!ROLES.has(role)) throw new RowProblem('unknown_role', `${field}.role`, `'${role}'`);
  if (role !== 'system' && (message.content as string).trim() === '') {
    throw new RowProblem('empty_content', `${field}.content`, `empty ${role} message`);
  }
  return message as ChatMessage;
}

/**
 * An optional system message first, then user and assistant turns alternating, the user first.
 * `field` names the list, or maps message i to its field (a prompt and completion checked together).
 */
export function checkRoleOrder(messages: ChatMessage[], field: string | ((i: number) => string)): void {
  const where = typeof field === 'string' ? (i: number) => `${field}[${i}].role` : field;
  let expected = 'user';
  messages.forEach((message, i) => {
    if (message.role === 'system') {
      if (i !== 0) throw new RowProblem('role_order', where(i), 'a system message after the first message');
      return;
    }
    if (message.role !== expected) {
      throw new RowProblem('role_order', where(i), `expected '${expected}', found '${message.role}'`);
    }
    expected = expected === 'user' ? 'assistant' : 'user';
  });
}

export function parseString(value: unknown, field: string): string {
  if (value === undefined || value === null) throw new RowProblem('missing_field', field, 'missing');
  if (typeof value !== 'string') throw new RowProblem('wrong_type', field, `expected a string, found ${typeName(value)}`);
  return value;
}

/** A list of integer token ids in [0, vocabSize). */
export function parseTokenIds(value: unknown, field: string, vocabSize: number): Int32Array {
  if (value === undefined || value === null) throw new RowProblem('missing_field', field, 'missing');
  if (!Array.isArray(value)) throw new RowProblem('wrong_type', field, `expected a list of token ids, found ${typeName(value)}`);
  const ids = new Int32Array(value.length);
  for (let i = 0; i < value.length; i++) {
    const id = value[i];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new RowProblem('bad_token_ids', `${field}[${i}]`, `${JSON.stringify(id)} is not a token id in [0, ${vocabSize})`);
    }
    ids[i] = id;
  }
  return ids;
}

/** Pre-tokenized labels: token ids or -100, as long as the ids. */
export function parseLabels(value: unknown, field: string, length: number, vocabSize: number): Int32Array {
  if (!Array.isArray(value)) throw new RowProblem('wrong_type', field, `expected a list of labels, found ${typeName(value)}`);
  if (value.length !== length) throw new RowProblem('wrong_type', field, `${value.length} labels for ${length} input_ids`);
  const labels = new Int32Array(length);
  for (let i = 0; i < length; i++) {
    const label = value[i];
    if (typeof label !== 'number' || !Number.isInteger(label) || (label !== -100 && (label < 0 || label >= vocabSize))) {
      throw new RowProblem('bad_token_ids', `${field}[${i}]`, `${JSON.stringify(label)} is neither -100 nor a token id in [0, ${vocabSize})`);
    }
    labels[i] = label;
  }
  return labels;
}

/** Checks a prompt and its completion as one conversation; returns them joined. */
export function joinPromptCompletion(prompt: ChatMessage[], completion: ChatMessage[], promptField: string, completionField: string): ChatMessage[] {
  const messages = [...prompt, ...completion];
  checkRoleOrder(messages, (i) => (i < prompt.length ? `${promptField}[${i}].role` : `${completionField}[${i - prompt.length}].role`));
  return messages;
}
