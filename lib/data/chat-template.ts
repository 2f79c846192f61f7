/**
 * Chat formatting: the tokenizer's Jinja `chat_template`, rendered with @huggingface/jinja the
 * way transformers renders it (trim_blocks and lstrip_blocks, special tokens and
 * `add_generation_prompt` in the context; `{% generation %}` markers are accepted and ignored).
 * A model without a template (base Mistral-7B) gets the Zephyr template.
 *
 * `assistantSpans` says which characters of a rendered conversation the assistant wrote, derived
 * from the messages alone: for each assistant turn, the text that rendering messages[0..i] adds
 * after rendering messages[0..i-1] with the generation prompt. For the Zephyr template that is
 * the reply, its `</s>` and the `\n` after it: what the model must learn to produce, including
 * when to stop. No `{% generation %}` markers are needed.
 */
import { Template } from '@huggingface/jinja';

import { ZnError } from '../errors.js';

/** HuggingFaceH4/zephyr-7b-beta's tokenizer_config `chat_template`, character for character. */
export const ZEPHYR_CHAT_TEMPLATE =
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n" +
  "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n" +
  "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n" +
  "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

export interface RenderOptions {
  addGenerationPrompt?: boolean;
}

/** [start, end) in UTF-16 units of the rendered text. */
export type CharSpan = [number, number];

export class ChatTemplate {
  /** The template's source, and whether it is the Zephyr default standing in for a missing one. */
  readonly source: string;
  readonly isDefault: boolean;
  private readonly template: Template;

  /**
   * @param source the Jinja template, or null for the Zephyr template
   * @param specialTokens `bos_token`, `eos_token`, ... as the template sees them
   */
  constructor(source: string | null, private readonly specialTokens: Record<string, string>) {
    this.isDefault = source === null;
    this.source = source ?? ZEPHYR_CHAT_TEMPLATE;
    try {
      this.template = new Template(this.source);
    } catch (error) {
      throw new ZnError(`chat template does not parse: ${(error as Error).message}`);
    }
  }

  render(messages: ChatMessage[], options: RenderOptions = {}): string {
    try {
      return this.template.render({
        ...this.specialTokens,
        messages,
        add_generation_prompt: options.addGenerationPrompt ?? false,
      });
    } catch (error) {
      throw new ZnError(`chat template failed to render: ${(error as Error).message}`);
    }
  }

  /**
   * The character spans of the assistant turns in `render(messages)`. Throws when the template
   * does not render conversations prefix by prefix (then what the assistant wrote is ambiguous).
   */
  assistantSpans(messages: ChatMessage[]): CharSpan[] {
    const spans: CharSpan[] = [];
    const full = this.render(messages);
    for (let i = 0; i < messages.length; i++) {
      if (messages[i].role !== 'assistant') continue;
      const before = this.render(messages.slice(0, i), { addGenerationPrompt: true });
      const through = i + 1 === messages.length ? full : this.render(messages.slice(0, i + 1));
      if (!through.startsWith(before) || !full.startsWith(through)) {
        throw new ZnError(
          `assistant-only loss: the chat template does not render message ${i} as an extension of the messages before it, ` +
            'so the assistant tokens cannot be told apart; use a prefix-preserving template or turn assistant_only_loss off',
        );
      }
      if (through.length > before.length) spans.push([before.length, through.length]);
    }
    return spans;
  }
}
