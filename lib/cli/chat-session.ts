/**
 * One chat's conversation and its commands, shared by the terminal and the pipe front ends
 * (lib/cli/chat-io.ts). Each turn renders the whole conversation with the chat template and the
 * engine prefills it again: the engine keeps no cache between requests.
 */
import type { ChatMessage } from '../data/chat-template.js';
import type { Completion } from '../generate/engine.js';
import type { Generator, RequestOptions } from '../generate/generate.js';

/** A line the user typed: a message, or one of the commands. */
export type ChatInput =
  | { kind: 'message'; content: string }
  | { kind: 'reset' }
  | { kind: 'system'; content: string }
  | { kind: 'exit' }
  | { kind: 'unknown'; command: string }
  | { kind: 'empty' };

export const CHAT_COMMANDS_HELP = '/reset, /system TEXT, /exit';

export function parseChatInput(line: string): ChatInput {
  const text = line.trim();
  if (text === '') return { kind: 'empty' };
  if (!text.startsWith('/')) return { kind: 'message', content: line };
  const [command] = text.split(/\s/, 1);
  const rest = text.slice(command.length).trim();
  if (command === '/reset' && rest === '') return { kind: 'reset' };
  if (command === '/exit' && rest === '') return { kind: 'exit' };
  if (command === '/system') return { kind: 'system', content: rest };
  return { kind: 'unknown', command: text };
}

/**
 * How a turn ended: an answer (with `contextFull` when it stopped because the conversation
 * reached the context); `stopped` when the caller's signal ended it (the text said so far stays
 * in the conversation); `contextFull` without an answer when the conversation with the new
 * message no longer leaves room for a token (the message is dropped).
 */
export type TurnResult =
  | { kind: 'answer'; completion: Completion; contextFull: boolean }
  | { kind: 'stopped'; text: string }
  | { kind: 'contextFull'; promptTokens: number };

export interface TurnOptions {
  /** Called with each piece of the answer's text as it comes. */
  onText: (delta: string) => void;
  /** Stops the answer at the next token. */
  signal?: AbortSignal;
}

export class ChatSession {
  private exchanges: ChatMessage[] = [];

  constructor(
    private readonly generator: Generator,
    private readonly options: RequestOptions,
    private system: string | null = null,
  ) {}

  /** The conversation as the model sees it: the system message, then the exchanges. */
  get messages(): ChatMessage[] {
    return this.system === null ? [...this.exchanges] : [{ role: 'system', content: this.system }, ...this.exchanges];
  }

  /** Positions a conversation may fill, prompt and answer together. */
  get maxContext(): number {
    return this.generator.engine.maxContext;
  }

  /** Forgets the exchanges; the system message stays. */
  reset(): void {
    this.exchanges = [];
  }

  /** Sets (empty text: removes) the system message and forgets the exchanges. */
  setSystem(content: string): void {
    this.system = content === '' ? null : content;
    this.reset();
  }

  /** The user's message and the model's answer, streamed through onText. */
  async reply(content: string, turn: TurnOptions): Promise<TurnResult> {
    const conversation: ChatMessage[] = [...this.messages, { role: 'user', content }];
    const promptTokens = this.generator.promptIds(conversation).length;
    if (promptTokens >= this.maxContext) return { kind: 'contextFull', promptTokens };
    let said = '';
    const tokens = this.generator.stream(conversation, { ...this.options, signal: turn.signal });
    try {
      for (;;) {
        const next = await tokens.next();
        if (next.done) {
          const completion = next.value;
          this.exchanges.push({ role: 'user', content }, { role: 'assistant', content: completion.text });
          const contextFull = completion.finishReason === 'length' && completion.promptTokens + completion.tokenIds.length >= this.maxContext;
          return { kind: 'answer', completion, contextFull };
        }
        said += next.value.text;
        if (next.value.text) turn.onText(next.value.text);
      }
    } catch (error) {
      if (!turn.signal?.aborted) throw error;
      this.exchanges.push({ role: 'user', content }, { role: 'assistant', content: said });
      return { kind: 'stopped', text: said };
    }
  }
}
