/**
 * MistralForCausalLM's parameters by HF name and shape, in the order of transformers'
 * state_dict (module registration order). Checkpoint validation and save plans use it before
 * any native memory exists. With tie_word_embeddings, `lm_head.weight` is the embedding and is
 * neither loaded nor saved (transformers drops it on save too).
 */
import type { MistralConfig } from './config.js';

export interface ParameterShape {
  name: string;
  shape: number[];
}

export function mistralParameterShapes(config: MistralConfig): ParameterShape[] {
  const { hiddenSize: h, intermediateSize: inter, vocabSize: v, headDim: d } = config;
  const q = config.numAttentionHeads * d;
  const kv = config.numKeyValueHeads * d;
  const out: ParameterShape[] = [{ name: 'model.embed_tokens.weight', shape: [v, h] }];
  for (let layer = 0; layer < config.numHiddenLayers; layer++) {
    const prefix = `model.layers.${layer}`;
    out.push(
      { name: `${prefix}.self_attn.q_proj.weight`, shape: [q, h] },
      { name: `${prefix}.self_attn.k_proj.weight`, shape: [kv, h] },
      { name: `${prefix}.self_attn.v_proj.weight`, shape: [kv, h] },
      { name: `${prefix}.self_attn.o_proj.weight`, shape: [h, q] },
      { name: `${prefix}.mlp.gate_proj.weight`, shape: [inter, h] },
      { name: `${prefix}.mlp.up_proj.weight`, shape: [inter, h] },
      { name: `${prefix}.mlp.down_proj.weight`, shape: [h, inter] },
      { name: `${prefix}.input_layernorm.weight`, shape: [h] },
      { name: `${prefix}.post_attention_layernorm.weight`, shape: [h] },
    );
  }
  out.push({ name: 'model.norm.weight', shape: [h] });
  if (!config.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [v, h] });
  return out;
}
