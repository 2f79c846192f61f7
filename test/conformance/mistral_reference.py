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

The "score" case also writes rows.jsonl (pre-tokenized preference and SFT rows) and
score_reference.jsonl: summed completion-token log-probs as `zephyr-native score` reports them.
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
    return model64


def score_rows(model, out_dir, generator, vocab):
    """Pre-tokenized rows and their summed completion log-probs (float64 transformers)."""
    model.config._attn_implementation = "eager"

    def summed(prompt, completion):
        ids = prompt + completion
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        # Token ids[t] (t >= len(prompt)) is predicted at position t - 1.
        return sum(logp[t - 1, ids[t]].item() for t in range(len(prompt), len(ids)))

    def rand_ids(n):
        return torch.randint(0, vocab, (n,), generator=generator).tolist()

    rows, expected = [], []
    for i in range(4):
        prompt, chosen, rejected = rand_ids(3 + i), rand_ids(2 + i), rand_ids(5 - i)
        rows.append({"prompt_input_ids": prompt, "chosen_input_ids": chosen, "rejected_input_ids": rejected})
        expected.append({"index": i, "chosen_logps": summed(prompt, chosen), "rejected_logps": summed(prompt, rejected)})
    with open(os.path.join(out_dir, "preference_rows.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(out_dir, "preference_reference.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in expected)

    rows, expected = [], []
    for i in range(3):
        ids = rand_ids(6 + 2 * i)
        row = {"input_ids": ids}
        if i == 1:
            # labels: -100 masks the first three tokens (as an SFT collator masks the prompt)
            row["labels"] = [IGNORE] * 3 + ids[3:]
            logps = summed(ids[:3], ids[3:])
            count = len(ids) - 3
        else:
            logps = summed(ids[:1], ids[1:])
            count = len(ids) - 1
        rows.append(row)
        expected.append({"index": i, "logps": logps, "num_tokens": count})
    with open(os.path.join(out_dir, "sft_rows.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(out_dir, "sft_reference.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in expected)


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
    models = {}
    for name, case in CASES.items():
        models[name] = run_case(case, os.path.join(out, name), generator)
    score_rows(models["gqa_window_tied"], os.path.join(out, "gqa_window_tied"), generator,
               CASES["gqa_window_tied"]["config"]["vocab_size"])
    print(json.dumps({"cases": list(CASES)}))


if __name__ == "__main__":
    main()
