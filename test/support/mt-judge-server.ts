/**
 * A scripted MT-Bench judge on 127.0.0.1 (OpenAI chat completions) for the eval tests. It
 * answers in FastChat's judge formats, from markers the tests put in questions and answers:
 *   single ("[[rating]]" prompts): the last `<score:N>` in the prompt gives "Rating: [[N]]"
 *     (turn 2's prompt holds both questions, turn 2's last); `<score:bad>` gets a reply with no
 *     rating, asked again or not; `<score:late-N>` is unreadable at first and N when asked again.
 *   pairwise ("[[A]]" prompts): the assistant whose answer holds `<best>` wins in either order;
 *     `<tie>` anywhere gives "[[C]]"; `<first>` anywhere always picks A (a position-biased judge).
 * Every request is recorded: its messages, and the name a test prompt file tags it with.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface MtJudgeRequest {
  system: string;
  user: string;
  /** True for the follow-up after an unreadable reply. */
  reask: boolean;
  model: string;
  /** `PROMPT=<name>` from a test prompt file's template, when it has one. */
  promptTag: string | null;
}

export class MtJudgeServer {
  readonly requests: MtJudgeRequest[] = [];
  url = '';
  /** Milliseconds before each reply. */
  delayMs = 0;
  private readonly server: Server;

  constructor() {
    this.server = createServer((req, res) => void this.handle(req, res));
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1`;
    return this;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    const messages: { role: string; content: string }[] = body.messages;
    const system = messages.find((m) => m.role === 'system')?.content ?? '';
    const user = messages.find((m) => m.role === 'user')!.content;
    const reask = messages.length > (system ? 2 : 1);
    const request: MtJudgeRequest = { system, user, reask, model: body.model, promptTag: /PROMPT=([\w-]+)/.exec(user)?.[1] ?? null };
    this.requests.push(request);
    if (this.delayMs) await new Promise((resolve) => setTimeout(resolve, this.delayMs));
    const pairwise = /\[\[A\]\]/.test(system + user);
    const content = pairwise ? pairReply(user) : singleReply(user, reask);
    res.writeHead(200, { 'content-type': 'application/json' }).end(
      JSON.stringify({ id: `chatcmpl-${this.requests.length}`, object: 'chat.completion', model: body.model, choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }] }),
    );
  }
}

function singleReply(user: string, reask: boolean): string {
  const tags = [...user.matchAll(/<score:([\w-]+)>/g)].map((m) => m[1]);
  const tag = tags.at(-1) ?? '5';
  if (tag === 'bad') return 'The answer is fine, I suppose. Rating: unknown';
  const late = /^late-(\d+)$/.exec(tag);
  if (late) return reask ? `[[${late[1]}]]` : 'I would give it a good score.';
  return `The assistant's answer is adequate.\n\nRating: [[${tag}]]`;
}

function pairReply(user: string): string {
  if (user.includes('<tie>')) return 'Both are equally good. [[C]]';
  if (user.includes('<first>')) return 'I prefer the first one. [[A]]';
  const split = user.indexOf('Start of Assistant B');
  const a = user.slice(0, split);
  const b = user.slice(split);
  if (b.includes('<best>') && !a.includes('<best>')) return 'Assistant B is more helpful.\n\n[[B]]';
  if (a.includes('<best>') && !b.includes('<best>')) return 'Assistant A is more helpful.\n\n[[A]]';
  return 'Neither is clearly better. [[C]]';
}
