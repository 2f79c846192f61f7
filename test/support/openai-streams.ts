/** A streaming client that reads a few chunks and then leaves (disconnects mid-stream). */
import type OpenAI from 'openai';

/**
 * Streams a long greedy chat and aborts after `chunks` chunks; resolves to the chunks read.
 * Chunks already buffered by the client are not read: iteration stops, the server sees the
 * connection close.
 */
export async function streamThenLeave(openai: OpenAI, model: string, chunks = 3): Promise<number> {
  const leaving = new AbortController();
  const stream = await openai.chat.completions.create(
    { model, messages: [{ role: 'user', content: 'Go on and on.' }], max_tokens: 200, temperature: 0, stream: true },
    { signal: leaving.signal },
  );
  let read = 0;
  for await (const _ of stream) {
    if (++read < chunks) continue;
    leaving.abort();
    break;
  }
  return read;
}
