"""Reference for test/conformance/model.test.ts: tiny random MistralForCausalLM models built and
run by transformers. Run only by the tests: `python mistral_reference.py OUT_DIR`.

For each case it writes OUT_DIR/<case>/model (an HF folder, f32 safetensors, saved by
save_pretrained) and OUT_DIR/<case>/reference.json holding documents, per-token targets (next
token, or -100), per-token loss weights w, and, computed by transformers in float64 from the
saved f32 weights:
  logp[t]      log softmax(logits)[target] per token, each document run on its own
               (positions from 0), with attn_implementation "eager" and, separately, "sdpa"
  grads[name]  d/dparam of  loss = sum_t w[t] * logp[t]  for every named parameter
Each document is a separate forward, so a packed stream that agrees shows that documents do
not attend across each other and that positions restart per document.

OUT_DIR/score holds a model with a tokenizer folder, preference and SFT rows (pre-tokenized and
chat), and the summed log-probs `zephyr-native score` must report for them (see score_case).
"""

import json
import os
import sys

import torch
from transformers import MistralConfig, MistralForCausalLM

IGNORE = -100


def randomize(model, generator):
    """HF's init (std 0.02) makes attention nearly uniform and logits nearly flat; larger random
    weights make the mask, RoPE and every gradient matter."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))
            elif param.dim() == 2 and "embed_tokens" in name:
                param.copy_(0.4 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * (1.2 / param.shape[1] ** 0.5))


def build(case, out_dir, generator):
    config = MistralConfig(**case["config"])
    model = MistralForCausalLM(config)
    randomize(model, generator)
    model.save_pretrained(os.path.join(out_dir, "model"))
    return model


def document_logps(model, docs, targets, implementation):
    """Per-token log-probs of each document on its own, in float64, concatenated."""
    model.config._attn_implementation = implementation
    out = []
    for ids, tgt in zip(docs, targets):
        input_ids = torch.tensor([ids])
        positions = torch.arange(len(ids)).unsqueeze(0)
        logits = model(input_ids=input_ids, position_ids=positions).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        tgt_t = torch.tensor(tgt)
        gathered = logp.gather(1, tgt_t.clamp(min=0).unsqueeze(1)).squeeze(1)
        out.append(torch.where(tgt_t == IGNORE, torch.zeros_like(gathered), gathered))
    return torch.cat(out)


def shifted_targets(ids, masked):
    """targets[t] = ids[t + 1], -100 at the last token and where masked[t + 1]."""
    tgt = [ids[t + 1] if t + 1 < len(ids) and not masked[t + 1] else IGNORE for t in range(len(ids))]
    return tgt


def run_case(case, out_dir, generator):
    os.makedirs(out_dir, exist_ok=True)
    model = build(case, out_dir, generator)
    model64 = model.double()
    vocab = case["config"]["vocab_size"]
    docs, targets = [], []
    for length in case["doc_lengths"]:
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        pad = case["config"].get("pad_token_id")
        if pad is not None and length > 3:
            ids[1] = pad  # the pad row must get no gradient through the embedding lookup
        masked = (torch.rand(length, generator=generator) < 0.25).tolist()
        docs.append(ids)
        targets.append(shifted_targets(ids, masked))
    n = sum(len(d) for d in docs)
    weights = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 0.5).tolist()

    model64.zero_grad()
    logp = document_logps(model64, docs, targets, "eager")
    loss = (logp * torch.tensor(weights, dtype=torch.float64)).sum()
    loss.backward()
    grads = {name: p.grad.flatten().tolist() for name, p in model64.named_parameters()}
    with torch.no_grad():
        logp_sdpa = document_logps(model64, docs, targets, "sdpa")

    reference = {
        "config": case["config"],
        "documents": docs,
        "targets": targets,
        "weights": weights,
        "logp": logp.tolist(),
        "logp_sdpa": logp_sdpa.tolist(),
        "loss": loss.item(),
        "grads": grads,
        "parameter_names": [name for name, _ in model64.named_parameters()],
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(reference, f)


def score_case(out_dir, generator):
    """A tiny model with a real tokenizer folder (data_reference.py's BPE, Zephyr template) and
    rows for `zephyr-native score --max_length SCORE_MAX_LENGTH`: pre-tokenized and chat
    preference rows, pre-tokenized and chat SFT rows, and rows that must be skipped. Expected
    values: summed log-probs of the scored tokens, transformers in float64; chat rows tokenized
    as TRL 1.13 does (prompt = chat template with the generation prompt, completion = the ids of
    prompt+completion after the prompt's, prompt+completion cut to max_length keeping the start)."""
    from transformers import AutoTokenizer

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import data_reference as data

    model_dir = os.path.join(out_dir, "model")
    spec = data.with_pipeline(data.train_base(split=True), "metaspace", "first")
    data.write_folder(model_dir, spec, "LlamaTokenizerFast", chat_template=data.ZEPHYR_CHAT_TEMPLATE, legacy=False)
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = len(tok)
    config = MistralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=44, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=7,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                           tie_word_embeddings=False, max_position_embeddings=128)
    model = MistralForCausalLM(config)
    randomize(model, generator)
    model.save_pretrained(model_dir)
    model = model.double()
    model.config._attn_implementation = "sdpa"
    limit = SCORE_MAX_LENGTH

    def logps(ids, scored_from):
        """Sum of log p(ids[t]) for t >= scored_from, each predicted from ids[:t]."""
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        return sum(logp[t - 1, ids[t]].item() for t in range(max(scored_from, 1), len(ids)))

    def chat_ids(messages, generation_prompt=False):
        ids = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def rand_ids(n):
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    preference_rows, preference_expected = [], []

    def add_preference(row, prompt, chosen, rejected):
        preference_rows.append(row)
        index = len(preference_expected)
        entry = {"index": index}
        for name, completion in (("chosen_logps", chosen), ("rejected_logps", rejected)):
            full = (prompt + completion)[:limit]
            entry[name] = logps(full, len(prompt))
        preference_expected.append(entry)

    for i in range(3):
        prompt, chosen, rejected = rand_ids(4 + i), rand_ids(3 + 2 * i), rand_ids(6 - i)
        add_preference({"prompt_input_ids": prompt, "chosen_input_ids": chosen, "rejected_input_ids": rejected},
                       prompt, chosen, rejected)
    chats = [("What is the capital of France?", "Paris.", "The capital of France is London, near the river."),
             ("Write a short poem about the sea.", "The sea is wide and deep and blue. " * 4, "No.")]
    for question, good, bad in chats:
        user = [{"role": "user", "content": question}]
        prompt = chat_ids(user, generation_prompt=True)
        completions = [chat_ids(user + [{"role": "assistant", "content": text}])[len(prompt):] for text in (good, bad)]
        add_preference({"chosen": user + [{"role": "assistant", "content": good}],
                        "rejected": user + [{"role": "assistant", "content": bad}]}, prompt, *completions)
    # Skipped: the prompt alone reaches max_length; chosen equals rejected.
    preference_rows.append({"prompt_input_ids": rand_ids(limit), "chosen_input_ids": [5], "rejected_input_ids": [6]})
    preference_expected.append({"index": len(preference_expected), "skipped": "prompt_too_long"})
    same = rand_ids(3)
    preference_rows.append({"prompt_input_ids": rand_ids(2), "chosen_input_ids": same, "rejected_input_ids": same})
    preference_expected.append({"index": len(preference_expected), "skipped": "chosen_equals_rejected"})

    sft_rows, sft_expected = [], []
    ids = rand_ids(9)
    sft_rows.append({"input_ids": ids})
    sft_expected.append({"index": 0, "logps": logps(ids, 1), "num_tokens": len(ids) - 1})
    ids = rand_ids(12)
    sft_rows.append({"input_ids": ids, "labels": [IGNORE] * 5 + ids[5:]})
    sft_expected.append({"index": 1, "logps": logps(ids, 5), "num_tokens": len(ids) - 5})
    messages = [{"role": "user", "content": "Hello world! How are you today?"},
                {"role": "assistant", "content": "I am fine, thank you."}]
    ids = chat_ids(messages)[:limit]
    sft_rows.append({"messages": messages})
    sft_expected.append({"index": 2, "logps": logps(ids, 1), "num_tokens": len(ids) - 1})

    for name, rows in (("preference_rows", preference_rows), ("preference_reference", preference_expected),
                       ("sft_rows", sft_rows), ("sft_reference", sft_expected)):
        with open(os.path.join(out_dir, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


# `score` runs with --max_length this (the reference applies the same cut).
SCORE_MAX_LENGTH = 40


CASES = {
    # GQA (6 query heads over 2 kv heads), head_dim 6, a sliding window shorter than the
    # documents, rope_theta 1e6, tied embeddings, odd sizes, a pad token in the inputs.
    "gqa_window_tied": {
        "config": dict(vocab_size=67, hidden_size=36, intermediate_size=50, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=2, sliding_window=5,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                       tie_word_embeddings=True, pad_token_id=3, rms_norm_eps=1e-5,
                       max_position_embeddings=64),
        "doc_lengths": [13, 1, 9, 6],
    },
    # Multi-query attention, head_dim set apart from hidden_size / heads, no window, untied.
    "mqa_headdim_untied": {
        "config": dict(vocab_size=53, hidden_size=40, intermediate_size=37, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=14, sliding_window=None,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       tie_word_embeddings=False, rms_norm_eps=1e-6, max_position_embeddings=64),
        "doc_lengths": [11, 7],
    },
}


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1234)
    for name, case in CASES.items():
        run_case(case, os.path.join(out, name), generator)
    score_case(os.path.join(out, "score"), generator)
    print(json.dumps({"cases": list(CASES), "score_max_length": SCORE_MAX_LENGTH}))


if __name__ == "__main__":
    main()
