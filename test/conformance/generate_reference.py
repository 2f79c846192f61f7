"""Reference for test/conformance/generate.test.ts: greedy continuations by transformers'
`model.generate(input_ids, do_sample=False, max_new_tokens=N)` on tiny random
MistralForCausalLM models in float32. Run only by the tests: `python generate_reference.py OUT_DIR`.

For each case it writes OUT_DIR/<case>/model (an HF folder: f32 safetensors by save_pretrained
and data_reference.py's BPE tokenizer, so our engine can decode text) and
OUT_DIR/<case>/reference.json holding the prompts and, per attention implementation ("eager",
and "sdpa" where the installed transformers masks the sliding window there, which 5.x does):
  tokens[p]        the generated ids of prompt p
  margins[p][s]    top-1 minus top-2 logit at step s (how far greedy was from a tie)
and first_logits[p], the eager next-token logits after prompt p (the prefill's).
Each prompt is generated on its own (batch 1, no padding): left padding in a batch shifts the
positions unless position ids are passed by hand, and batch 1 is what transformers does exactly.
EOS is switched off on both sides, so every continuation runs its full length.
"""

import json
import os
import sys

import torch
from transformers import MistralConfig, MistralForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data_reference as data  # noqa: E402

IMPLEMENTATIONS = ("eager", "sdpa")


def randomize(model, generator, logit_std):
    """Weights that make the next-token logits spread out (std about `logit_std`), so greedy's
    top-2 margins are large beside f32 rounding (HF's init, std 0.02, gives near-flat logits and
    near-ties), and attention far from uniform, so the mask, RoPE and the cache all matter."""
    hidden = model.config.hidden_size
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))
            elif name in ("model.embed_tokens.weight", "lm_head.weight"):
                # Tied or not, the final norm's output (RMS about 1) meets these rows.
                param.copy_(torch.randn(param.shape, generator=generator) * (logit_std / hidden**0.5))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * (1.2 / param.shape[1] ** 0.5))


def generate(model, prompt, new_tokens, implementation):
    model.config._attn_implementation = implementation
    model.set_attn_implementation(implementation)
    out = model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), do_sample=False,
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0,
        return_dict_in_generate=True, output_logits=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    logits = torch.stack([step[0] for step in out.logits])
    top2 = logits.topk(2, dim=-1).values
    return tokens, (top2[:, 0] - top2[:, 1]).tolist(), logits[0].tolist()


def run_case(name, case, tokenizer_spec, out_dir, generator):
    folder = os.path.join(out_dir, name)
    model_dir = os.path.join(folder, "model")
    data.write_folder(model_dir, tokenizer_spec, "LlamaTokenizerFast", chat_template=data.ZEPHYR_CHAT_TEMPLATE,
                      legacy=False)
    vocab = len(tokenizer_spec["model"]["vocab"])
    config = MistralConfig(vocab_size=vocab, **case["config"])
    model = MistralForCausalLM(config)
    randomize(model, generator, case["logit_std"])
    model.generation_config.eos_token_id = None
    model.save_pretrained(model_dir)
    model.eval()
    prompts = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in case["prompt_lengths"]]
    reference = {"config": case["config"], "vocab_size": vocab, "prompts": prompts,
                 "max_new_tokens": case["max_new_tokens"], "implementations": {}}
    with torch.no_grad():
        for implementation in IMPLEMENTATIONS:
            runs = [generate(model, p, case["max_new_tokens"], implementation) for p in prompts]
            reference["implementations"][implementation] = {
                "tokens": [r[0] for r in runs], "margins": [r[1] for r in runs]}
            if implementation == "eager":
                reference["first_logits"] = [r[2] for r in runs]
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(reference, f)


CASES = {
    # GQA (6 query heads over 2 kv heads), window 8: prompts of 3 to 30 tokens and 28 new tokens,
    # so the rolling buffer wraps several times, in prefill and in decoding. Tied embeddings.
    "gqa_window8_tied": {
        "config": dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                       num_key_value_heads=2, sliding_window=8, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-5,
                       max_position_embeddings=128),
        "logit_std": 4.0,
        "prompt_lengths": [3, 8, 13, 30, 1],
        "max_new_tokens": 28,
    },
    # Multi-query attention, head_dim apart from hidden / heads, window 5, 3 layers, untied:
    # 40 new tokens after short prompts, so decoding alone wraps the buffer many times.
    "mqa_headdim_window5": {
        "config": dict(hidden_size=40, intermediate_size=56, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=14, sliding_window=5, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6,
                       max_position_embeddings=128),
        "logit_std": 4.0,
        "prompt_lengths": [2, 6, 17],
        "max_new_tokens": 40,
    },
    # No sliding window: the cache holds the whole context.
    "no_window": {
        "config": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, sliding_window=None, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-5,
                       max_position_embeddings=96),
        "logit_std": 4.0,
        "prompt_lengths": [4, 21],
        "max_new_tokens": 24,
    },
}


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2024)
    tokenizer_spec = data.with_pipeline(data.train_base(split=True), "metaspace", "first")
    for name, case in CASES.items():
        run_case(name, case, tokenizer_spec, out, generator)
    import transformers
    print(json.dumps({"cases": list(CASES), "transformers": transformers.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
