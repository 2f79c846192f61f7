/**
 * The two front ends of `zephyr-native chat` over a ChatSession. In a terminal: a readline
 * prompt, answers streamed as they come, Ctrl-C stops an answer (at the prompt it quits, as
 * Ctrl-D and /exit do). On a pipe: one message a line, each answer written as it comes and ended
 * by a blank line, notices on stderr, no prompts, so that a script can drive it.
 */
import { createInterface } from 'node:readline/promises';

import { CHAT_COMMANDS_HELP, type ChatSession, parseChatInput, type TurnResult } from './chat-session.js';
import { untilStopSignal } from './stop-signals.js';

const PROMPT = '> ';

function contextFullNotice(session: ChatSession): string {
  return `the conversation fills the context (${session.maxContext} tokens): /reset to start again`;
}

function notSentNotice(session: ChatSession, promptTokens: number): string {
  return `the conversation with this message needs ${promptTokens} tokens, the context holds ${session.maxContext}: the message was not sent; /reset to start again`;
}

/** What a terminal shows after an answer, or null. */
function turnNotice(session: ChatSession, result: TurnResult, maxNewTokens: number | undefined): string | null {
  switch (result.kind) {
    case 'stopped':
      return '[stopped]';
    case 'contextFull':
      return `[${notSentNotice(session, result.promptTokens)}]`;
    case 'answer': {
      const { completion } = result;
      if (result.contextFull) return `[${contextFullNotice(session)}]`;
      if (completion.finishReason === 'length') return `[the answer reached max_new_tokens${maxNewTokens ? ` (${maxNewTokens})` : ''}]`;
      return null;
    }
  }
}

/**
 * The terminal chat. While an answer streams the terminal is in cooked mode, so that Ctrl-C
 * reaches the process as SIGINT (readline holds it in raw mode, where Ctrl-C is a key); text
 * typed meanwhile waits in the terminal's line buffer for the next prompt.
 */
export async function chatInTerminal(session: ChatSession, banner: string, maxNewTokens?: number): Promise<void> {
  const input = process.stdin;
  const output = process.stdout;
  const lines = createInterface({ input, output, terminal: true });
  const closed = new AbortController();
  let answering: AbortController | null = null;
  const onInterrupt = (): void => {
    if (answering) answering.abort();
    else lines.close();
  };
  lines.on('close', () => closed.abort());
  lines.on('SIGINT', onInterrupt);
  process.on('SIGINT', onInterrupt);
  output.write(`${banner}\n`);
  try {
    for (;;) {
      let line: string;
      try {
        line = await lines.question(PROMPT, { signal: closed.signal });
      } catch (error) {
        if (closed.signal.aborted) break;
        throw error;
      }
      const command = parseChatInput(line);
      if (command.kind === 'exit') break;
      if (command.kind === 'reset') {
        session.reset();
        output.write('[conversation reset]\n');
      } else if (command.kind === 'system') {
        session.setSystem(command.content);
        output.write(command.content ? '[system message set; conversation reset]\n' : '[system message removed; conversation reset]\n');
      } else if (command.kind === 'unknown') {
        output.write(`[unknown command ${command.command}: ${CHAT_COMMANDS_HELP}]\n`);
      } else if (command.kind === 'message') {
        lines.pause();
        input.setRawMode(false);
        answering = new AbortController();
        let ended = true;
        try {
          const result = await session.reply(command.content, {
            signal: answering.signal,
            onText: (text) => {
              output.write(text);
              ended = text.endsWith('\n');
            },
          });
          if (!ended) output.write('\n');
          const notice = turnNotice(session, result, maxNewTokens);
          if (notice) output.write(`${notice}\n`);
        } finally {
          answering = null;
          input.setRawMode(true);
        }
      }
    }
  } finally {
    process.off('SIGINT', onInterrupt);
    lines.close();
  }
}

/** The scripted chat: stdin to EOF (or /exit); SIGINT or SIGTERM ends the answer and the program. */
export async function chatOnPipe(session: ChatSession): Promise<void> {
  const output = process.stdout;
  const notice = (text: string): void => void process.stderr.write(`chat: ${text}\n`);
  await untilStopSignal(async (signal) => {
    const lines = createInterface({ input: process.stdin, terminal: false, crlfDelay: Infinity });
    signal.addEventListener('abort', () => lines.close(), { once: true });
    try {
      for await (const line of lines) {
        const command = parseChatInput(line);
        if (command.kind === 'exit') break;
        if (command.kind === 'reset') session.reset();
        else if (command.kind === 'system') session.setSystem(command.content);
        else if (command.kind === 'unknown') notice(`unknown command ${command.command} (${CHAT_COMMANDS_HELP}); nothing was sent`);
        else if (command.kind === 'message') {
          const result = await session.reply(command.content, { signal, onText: (text) => output.write(text) });
          output.write('\n\n');
          if (result.kind === 'contextFull') notice(`${notSentNotice(session, result.promptTokens)} (its answer is empty)`);
          if (result.kind === 'answer' && result.contextFull) notice(contextFullNotice(session));
          if (result.kind === 'stopped') break;
        }
      }
    } finally {
      lines.close();
    }
  });
}
