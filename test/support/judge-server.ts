/**
 * A scripted OpenAI-compatible judge on 127.0.0.1 for the `rate` tests. By default it answers
 * like a consistent judge: a response containing `<q:N>` gets rating N on every aspect except
 * honesty, which gets max(1, N - 1) (so tests can tell the aspects apart). A `script` can
 * replace any answer with an HTTP error, a malformed answer, a Retry-After, or silence.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export const ASPECT_TITLES: Record<string, string> = {
  instruction_following: 'instruction following',
  helpfulness: 'helpfulness',
  honesty: 'honesty and calibration',
  truthfulness: 'truthfulness (no hallucination)',
};

export interface JudgeRequest {
  /** 0-based arrival order. */
  n: number;
  at: number;
  aspect: string;
  instruction: string;
  responses: string[];
  /** True when this is the follow-up after an unreadable answer. */
  reask: boolean;
  authorization: string | undefined;
  model: string;
}

export type Action =
  | { kind: 'answer'; text?: string; delayMs?: number }
  | { kind: 'error'; status: number; body?: string; retryAfter?: string }
  | { kind: 'hang' };

export function expectedRating(response: string, aspect: string): number {
  const q = Number(/<q:(\d)>/.exec(response)?.[1] ?? 3);
  return aspect === 'honesty' ? Math.max(1, q - 1) : q;
}

export function goodAnswer(request: JudgeRequest): string {
  const ratings = request.responses.map((response, i) => ({
    response: i + 1,
    rating: expectedRating(response, request.aspect),
    rationale: `judged ${request.aspect} of response ${i + 1}`,
  }));
  return `Here you go:\n\`\`\`json\n${JSON.stringify({ ratings })}\n\`\`\``;
}

export class JudgeServer {
  readonly requests: JudgeRequest[] = [];
  url = '';
  private server: Server;
  private hanging: ServerResponse[] = [];

  constructor(private script: (request: JudgeRequest) => Action = () => ({ kind: 'answer' })) {
    this.server = createServer((req, res) => void this.handle(req, res));
  }

  setScript(script: (request: JudgeRequest) => Action): void {
    this.script = script;
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1`;
    return this;
  }

  async close(): Promise<void> {
    for (const res of this.hanging) res.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    if (req.url !== '/v1/chat/completions' || req.method !== 'POST') {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"no such route"}}');
      return;
    }
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    const prompt: string = body.messages[1].content;
    const aspect = Object.keys(ASPECT_TITLES).find((key) => prompt.includes(`for ${ASPECT_TITLES[key]},`)) ?? 'unknown';
    const instruction = /# Instruction\n([\s\S]*?)\n\n# Responses\n/.exec(prompt)?.[1] ?? '';
    const responsesText = /# Responses\n([\s\S]*?)# Answer format/.exec(prompt)?.[1] ?? '';
    const responses = responsesText
      .split(/^## Response \d+\n/m)
      .slice(1)
      .map((text) => text.replace(/\n\n$/, ''));
    const request: JudgeRequest = {
      n: this.requests.length,
      at: Date.now(),
      aspect,
      instruction,
      responses,
      reask: body.messages.length > 2,
      authorization: req.headers.authorization,
      model: body.model,
    };
    this.requests.push(request);
    const action = this.script(request);
    if (action.kind === 'hang') {
      this.hanging.push(res);
      return;
    }
    if (action.kind === 'error') {
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (action.retryAfter !== undefined) headers['retry-after'] = action.retryAfter;
      res.writeHead(action.status, headers).end(action.body ?? `{"error":{"message":"scripted ${action.status}"}}`);
      return;
    }
    if (action.delayMs) await new Promise((resolve) => setTimeout(resolve, action.delayMs));
    const content = action.text ?? goodAnswer(request);
    res.writeHead(200, { 'content-type': 'application/json' }).end(
      JSON.stringify({ id: `chatcmpl-${request.n}`, object: 'chat.completion', model: body.model, choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }] }),
    );
  }
}
