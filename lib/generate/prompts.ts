/**
 * The prompt a dataset row asks for, in the shapes `generate` reads: a `prompt` text (UltraChat
 * and UltraFeedback-binarized rows carry one: the user's first message), or messages ending in
 * the user's (TRL's conversational prompt), an `instruction` (raw UltraFeedback), or `messages` alone: the conversation when its last message is the user's, else
 * the conversation up to its first user message (an UltraChat chat without its `prompt` field).
 * A text becomes a one-message conversation; every prompt is rendered with the chat template.
 */
import type { ChatMessage } from '../data/chat-template.js';
import { parseMessages } from '../data/messages.js';
import { RowProblem } from '../data/validation.js';

export interface RowPrompt {
  /** The user's last message: the `instruction` of the rows `generate` writes. */
  instruction: string;
  /** What the model continues (the instruction as a user message, or a conversation ending in it). */
  conversation: ChatMessage[];
}

/** The row's prompt, or a RowProblem saying why it has none. */
export function rowPrompt(row: Record<string, unknown>): RowPrompt {
  if (Array.isArray(row.prompt)) return conversationPrompt(parseMessages(row.prompt, 'prompt'), 'prompt');
  for (const field of ['prompt', 'instruction'] as const) {
    const value = row[field];
    if (value === undefined || value === null) continue;
    if (typeof value !== 'string') throw new RowProblem('wrong_type', field, `expected a string, found ${Array.isArray(value) ? 'a list' : typeof value}`);
    if (value.trim() === '') throw new RowProblem('empty_content', field, 'empty prompt');
    return { instruction: value, conversation: [{ role: 'user', content: value }] };
  }
  if (row.messages === undefined || row.messages === null) throw new RowProblem('no_prompt', 'prompt', "no 'prompt', 'instruction' or 'messages'");
  const messages = parseMessages(row.messages, 'messages');
  const end = messages.at(-1)!.role === 'user' ? messages.length : messages.findIndex((m) => m.role === 'user') + 1;
  return conversationPrompt(messages.slice(0, end), 'messages');
}

function conversationPrompt(conversation: ChatMessage[], field: string): RowPrompt {
  const last = conversation.at(-1);
  if (last?.role !== 'user') throw new RowProblem('role_order', field, 'the prompt does not end with a user message');
  return { instruction: last.content, conversation };
}
