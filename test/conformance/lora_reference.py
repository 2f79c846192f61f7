"""Reference for test/conformance/lora.test.ts: LoRA adapters built, saved and run by PEFT on a
tiny random MistralForCausalLM. Run only by the tests: `python lora_reference.py OUT_DIR`.

For each case it writes OUT_DIR/<case>/base (the base model, save_pretrained, f32),
OUT_DIR/<case>/adapter (PEFT's save_pretrained: adapter_config.json, adapter_model.safetensors)
and OUT_DIR/<case>/reference.json with documents, per-token targets and loss weights w, and,
computed by PEFT in float64 from the saved f32 weights (lora_dropout 0, so deterministic):
  logp[t]       per-token log-probs with the adapters on, each document on its own
  logp_base[t]  the same inside PEFT's disable_adapter() (TRL's reference for a fresh adapter)
  grads[key]    d/d(adapter matrix) of loss = sum_t w[t] logp[t], keyed as the saved file names
                the matrix (PEFT drops the adapter name "default" when saving)
PEFT initialises lora_B to zero; the adapters here are random (both matrices nonzero) so that
every gradient and the adapter's effect on the log-probs are visible.
"""

import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import MistralConfig, MistralForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mistral_reference import document_logps, randomize, shifted_targets  # noqa: E402

CONFIG = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, sliding_window=5, tie_word_embeddings=False,
              max_position_embeddings=64, rms_norm_eps=1e-5, pad_token_id=0)

CASES = {
    "all_linear": dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=False),
    "qv_rslora": dict(r=2, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True),
}


def run_case(name, options, out_dir, generator):
    case_dir = os.path.join(out_dir, name)
    os.makedirs(case_dir, exist_ok=True)
    base = MistralForCausalLM(MistralConfig(**CONFIG))
    randomize(base, generator)
    base.save_pretrained(os.path.join(case_dir, "base"))
    model = get_peft_model(base, LoraConfig(lora_dropout=0.0, **options))
    with torch.no_grad():
        for key, param in model.named_parameters():
            if "lora_" in key:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 / param.shape[1] ** 0.5))
    model.save_pretrained(os.path.join(case_dir, "adapter"))

    model = model.double()
    docs, targets = [], []
    for length in (9, 6, 11):
        ids = torch.randint(1, CONFIG["vocab_size"], (length,), generator=generator).tolist()
        masked = (torch.rand(length, generator=generator) < 0.25).tolist()
        docs.append(ids)
        targets.append(shifted_targets(ids, masked))
    n = sum(len(d) for d in docs)
    weights = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 0.5).tolist()

    model.zero_grad()
    logp = document_logps(model, docs, targets, "sdpa")
    (logp * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    grads = {key.replace(".default", ""): p.grad.flatten().tolist()
             for key, p in model.named_parameters() if "lora_" in key}
    with torch.no_grad(), model.disable_adapter():
        logp_base = document_logps(model, docs, targets, "sdpa")
    reference = {"documents": docs, "targets": targets, "weights": weights, "logp": logp.tolist(),
                 "logp_base": logp_base.tolist(), "grads": grads, "scale": model.peft_config["default"].lora_alpha}
    with open(os.path.join(case_dir, "reference.json"), "w") as f:
        json.dump(reference, f)


def main():
    out_dir = sys.argv[1]
    generator = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    for name, options in CASES.items():
        run_case(name, options, out_dir, generator)
    print(json.dumps({"cases": list(CASES)}))


if __name__ == "__main__":
    main()
