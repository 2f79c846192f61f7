"""Reference for test/conformance/lora.test.ts: LoRA adapters built, saved and run by PEFT on a
tiny random MistralForCausalLM. Run only by the tests: `python lora_reference.py OUT_DIR`, then
`python lora_reference.py check OUT_DIR` once the test has written its own adapters (see check()).

For each case it writes OUT_DIR/<case>/base (the base model, save_pretrained, f32),
OUT_DIR/<case>/adapter (PEFT's save_pretrained: adapter_config.json, adapter_model.safetensors)
and OUT_DIR/<case>/reference.json with documents, per-token targets and loss weights w, and,
computed by PEFT in float64 from the saved f32 weights (lora_dropout 0, so deterministic):
  logp[t]       per-token log-probs with the adapters on, each document on its own
  logp_base[t]  the same inside PEFT's disable_adapter() (TRL's reference for a fresh adapter)
  grads[key]    d/d(adapter matrix) of loss = sum_t w[t] logp[t], keyed as the saved file names
                the matrix (PEFT drops the adapter name "default" when saving)
PEFT initialises lora_B to zero; the adapters here are random (both matrices nonzero) so that
every gradient and the adapter's effect on the log-probs are visible. Saved modules
(modules_to_save) start as copies of the base's; here they are perturbed so that the saved copy,
not the base, visibly gives the log-probs; their gradients are keyed by the name PEFT saves them
under (base_model.model.lm_head.weight).
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
    # lm_head and embed_tokens trained in full beside the adapters (PEFT's ModulesToSaveWrapper).
    "modules_to_save": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head", "embed_tokens"]),
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
            elif ".modules_to_save." in key:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
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
    grads = {key.replace(".modules_to_save", "").replace(".default", ""): p.grad.flatten().tolist()
             for key, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad(), model.disable_adapter():
        logp_base = document_logps(model, docs, targets, "sdpa")
    reference = {"documents": docs, "targets": targets, "weights": weights, "logp": logp.tolist(),
                 "logp_base": logp_base.tolist(), "grads": grads, "scale": model.peft_config["default"].lora_alpha}
    with open(os.path.join(case_dir, "reference.json"), "w") as f:
        json.dump(reference, f)


def check(out_dir):
    """For each case, zephyr-native's saved adapter (OUT_DIR/<case>/ours) loaded by PEFT: its
    per-token log-probs on the reference documents (float64), and the largest relative
    difference between zephyr-native's merged folder (OUT_DIR/<case>/merged) and PEFT's
    merge_and_unload of the same adapter, over every parameter."""
    from peft import PeftModel

    results = {}
    for name in CASES:
        case_dir = os.path.join(out_dir, name)
        with open(os.path.join(case_dir, "reference.json")) as f:
            reference = json.load(f)
        base = MistralForCausalLM.from_pretrained(os.path.join(case_dir, "base"), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, os.path.join(case_dir, "ours"))
        with torch.no_grad():
            logp = document_logps(model.double(), reference["documents"], reference["targets"], "sdpa")
        base = MistralForCausalLM.from_pretrained(os.path.join(case_dir, "base"), dtype=torch.float32)
        peft_merged = PeftModel.from_pretrained(base, os.path.join(case_dir, "ours")).merge_and_unload()
        ours = MistralForCausalLM.from_pretrained(os.path.join(case_dir, "merged"), dtype=torch.float32)
        theirs = dict(peft_merged.named_parameters())
        worst = 0.0
        for key, value in ours.named_parameters():
            diff = (value - theirs[key]).norm() / theirs[key].norm().clamp(min=1e-30)
            worst = max(worst, diff.item())
        results[name] = {"logp": logp.tolist(), "merge_max_rel": worst}
    with open(os.path.join(out_dir, "check.json"), "w") as f:
        json.dump(results, f)


def main():
    if sys.argv[1] == "check":
        check(sys.argv[2])
        return
    out_dir = sys.argv[1]
    generator = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    for name, options in CASES.items():
        run_case(name, options, out_dir, generator)
    print(json.dumps({"cases": list(CASES)}))


if __name__ == "__main__":
    main()
