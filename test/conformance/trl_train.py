"""Reference runs for the trainer conformance test (test/conformance/train.test.ts).

Builds, in WORKDIR, a small byte-fallback BPE tokenizer with the Zephyr chat template, a tiny
random MistralForCausalLM (f32), an SFT dataset (UltraChat schema) and a DPO dataset
(UltraFeedback-binarized schema); then trains the model with TRL's SFTTrainer and DPOTrainer for
5 full-batch steps at a constant learning rate with AdamW and clipping, evaluating after the last
step on the same rows (SFT one row a batch, so eval_loss is the mean of the rows' token means,
not the token mean of the split; DPO 4 pairs a batch, 4 + 2, so the short last batch's weight
shows), and writes each run's log_history and final weights. It also writes WORKDIR/model-sharp,
the same architecture drawn with initializer_range 1 (logits large enough that the rows' losses
differ widely, where the 0.02 draw gives every token about ln(vocab)), and TRL's evaluate() of it
on the SFT rows one row a batch, without packing (trl-sharp-rows/eval.json: the mean of the rows'
token means), and with packing (TRL's bfd, padding-free) 4 packed rows a batch, 4 + 2, weighed
by their rows all the same (trl-sharp-packed/eval.json). zephyr-native trains the same model on the same data with the
same recipe, and the test compares. It also writes WORKDIR/adapter: a PEFT LoRA adapter folder on
that model (all-linear, r 4, lora_dropout 0) with random nonzero lora_A and lora_B, so that every
adapter gradient and the reference choice matter.

`python trl_train.py peft WORKDIR` (once zephyr-native has trained its LoRA runs, see peft_runs)
then trains with TRL + PEFT from the same starting points, and loads zephyr-native's saved adapters
in PEFT to compute their log-probs.

usage: python trl_train.py WORKDIR | python trl_train.py peft WORKDIR
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from data_reference import ZEPHYR_CHAT_TEMPLATE  # noqa: E402  (the zephyr-7b-beta template)

QUESTIONS = [
    ("What is 2 + 3?", "2 + 3 = 5.", "It is 6."),
    ("Reverse the word \"river\".", "\"river\" reversed is \"revir\".", "river"),
    ("Write \"red fox\" in capital letters.", "RED FOX", "Red fox"),
    ("How many letters are in \"apple\"?", "\"apple\" has 5 letters.", "It has 4 letters, I think."),
    ("Sort: 9, 1, 5.", "1, 5, 9", "9, 5, 1"),
    ("Name a color.", "Blue.", "I am not sure."),
]


def build_tokenizer(path):
    texts = [q + " " + a + " " + r for q, a, r in QUESTIONS] * 20
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.chat_template = ZEPHYR_CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_model(path, vocab_size, initializer_range=0.02):
    torch.manual_seed(0)
    config = MistralConfig(
        initializer_range=initializer_range,
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=16,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = MistralForCausalLM(config).float()
    model.save_pretrained(path, safe_serialization=True)


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def common_args(output_dir, **overrides):
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=len(QUESTIONS),
        gradient_accumulation_steps=1,
        max_steps=5,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.01,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=42,
        max_length=64,
        dataloader_drop_last=False,
    ) | overrides


# Evaluation after the 5th step on the training rows, 4 a batch (6 rows: a batch of 4, then of 2);
# SFT's one a batch (rows of different lengths: a row-weighted mean differs from the token mean).
EVAL_ARGS = dict(eval_strategy="steps", eval_steps=5, per_device_eval_batch_size=4)
SFT_EVAL_BATCH = dict(per_device_eval_batch_size=1)


def dump(trainer, out_dir):
    trainer.save_model(out_dir)
    with open(os.path.join(out_dir, "log_history.json"), "w") as f:
        json.dump(trainer.state.log_history, f, indent=1)


def main():
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    work = sys.argv[1]
    tokenizer = build_tokenizer(os.path.join(work, "model"))
    build_model(os.path.join(work, "model"), len(tokenizer))
    write_jsonl(
        os.path.join(work, "sft.jsonl"),
        [
            {"prompt": q, "prompt_id": str(i), "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for i, (q, a, _) in enumerate(QUESTIONS)
        ],
    )
    write_jsonl(
        os.path.join(work, "dpo.jsonl"),
        [
            {
                "prompt": q,
                "prompt_id": str(i),
                "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                "score_chosen": 5.0,
                "score_rejected": 2.0,
            }
            for i, (q, a, r) in enumerate(QUESTIONS)
        ],
    )

    # The same rows as train and test splits of a dataset folder, for zephyr-native's evaluation.
    for name in ("sft", "dpo"):
        os.makedirs(os.path.join(work, f"{name}-splits"), exist_ok=True)
        for split in ("train", "test"):
            with open(os.path.join(work, f"{name}.jsonl")) as src, open(os.path.join(work, f"{name}-splits", f"{split}.jsonl"), "w") as dst:
                dst.write(src.read())

    torch.manual_seed(0)
    sft_data = load_dataset("json", data_files=os.path.join(work, "sft.jsonl"), split="train")
    sft_rows = sft_data.remove_columns(["prompt", "prompt_id"])
    sft = SFTTrainer(
        model=os.path.join(work, "model"),
        args=SFTConfig(**common_args(os.path.join(work, "trl-sft")), packing=False, **(EVAL_ARGS | SFT_EVAL_BATCH)),
        train_dataset=sft_rows,
        eval_dataset=sft_rows,
        processing_class=tokenizer,
    )
    sft.train()
    dump(sft, os.path.join(work, "trl-sft"))

    # A sharper model's evaluation, one row a batch and one packed (padding-free) row a batch.
    build_model(os.path.join(work, "model-sharp"), len(tokenizer), initializer_range=1.0)
    tokenizer.save_pretrained(os.path.join(work, "model-sharp"))
    for name, packing, eval_batch in (("trl-sharp-rows", False, 1), ("trl-sharp-packed", True, 4)):
        trainer = SFTTrainer(
            model=os.path.join(work, "model-sharp"),
            args=SFTConfig(**common_args(os.path.join(work, name)), packing=packing, per_device_eval_batch_size=eval_batch),
            train_dataset=sft_rows,
            eval_dataset=sft_rows,
            processing_class=tokenizer,
        )
        os.makedirs(os.path.join(work, name), exist_ok=True)
        with open(os.path.join(work, name, "eval.json"), "w") as f:
            json.dump(trainer.evaluate(), f, indent=1)

    torch.manual_seed(0)
    dpo_data = load_dataset("json", data_files=os.path.join(work, "dpo.jsonl"), split="train")
    dpo_rows = dpo_data.remove_columns(["prompt", "prompt_id", "score_chosen", "score_rejected"])
    dpo = DPOTrainer(
        model=os.path.join(work, "model"),
        args=DPOConfig(**common_args(os.path.join(work, "trl-dpo")), beta=0.1, **EVAL_ARGS),
        train_dataset=dpo_rows,
        eval_dataset=dpo_rows,
        processing_class=tokenizer,
    )
    dpo.train()
    dump(dpo, os.path.join(work, "trl-dpo"))

    build_adapter(os.path.join(work, "model"), os.path.join(work, "adapter"))


LORA = dict(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
# LoRA's usual higher learning rate: the adapters move the rewards well above f32 rounding in 5 steps.
LORA_ARGS = dict(learning_rate=1e-2)


def build_adapter(base_dir, path):
    """A starting adapter as a pipeline's SFT stage leaves one: A and B both nonzero, so the
    policy differs from the base and a reference with the adapter off would differ from one with
    it frozen."""
    from peft import LoraConfig, get_peft_model

    generator = torch.Generator().manual_seed(7)
    model = get_peft_model(MistralForCausalLM.from_pretrained(base_dir, dtype=torch.float32), LoraConfig(**LORA))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 / param.shape[1] ** 0.5))
    model.save_pretrained(path)


def starting_adapter(work):
    """The adapter folder as a trainable PeftModel (PEFT loads adapters for inference by default)."""
    from peft import PeftModel

    base = MistralForCausalLM.from_pretrained(os.path.join(work, "model"), dtype=torch.float32)
    return PeftModel.from_pretrained(base, os.path.join(work, "adapter"), is_trainable=True)


def copy_fresh_adapter(model, path):
    """zephyr-native's fresh adapter (its own draw of PEFT's Kaiming-uniform A) into TRL's fresh
    one, so both start from the same values; its B must be zero, as PEFT initialises B."""
    from safetensors.torch import load_file

    saved = load_file(os.path.join(path, "adapter_model.safetensors"))
    copied = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = name.replace(".default.", ".")
            if ".lora_A." in name:
                param.copy_(saved[key])
                copied += 1
            elif ".modules_to_save." in name:
                # A saved module starts as the base's (PEFT copies the module); so does ours.
                key = name.replace(".modules_to_save.default", "")
                assert torch.equal(param, saved[key]), f"{key}: fresh saved module is not the base's"
            elif ".lora_B." in name:
                assert torch.count_nonzero(saved[key]) == 0 and torch.count_nonzero(param) == 0, f"{key}: fresh B is not zero"
    assert copied == sum(".lora_A." in key for key in saved), f"copied {copied} lora_A of {len(saved)} tensors"


def peft_runs(work):
    """TRL + PEFT from zephyr-native's starting points, as TRL 1.13 chooses DPO's reference:
    - trl-lora-sft, trl-lora-dpo: the policy is the adapter folder loaded as a PeftModel and no
      ref_model is given, so DPOTrainer adds a frozen copy of it (adapter "ref") as the reference;
    - trl-lora-dpo-fresh: the base and a LoraConfig (peft_config), so the reference is the policy
      with its adapter disabled; its A is zephyr-native's fresh draw (WORKDIR/fresh-init);
    - trl-lora-dpo-saved: the same with modules_to_save lm_head (WORKDIR/fresh-init-saved).
    Then zephyr-native's saved adapters (WORKDIR/zn-lora-*) loaded by PEFT: per-token log-probs of
    the SFT rows (float64) in WORKDIR/peft_logps.json."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    # Tiny matmuls: more threads only spin on a shared machine.
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(work, "model"))
    sft_data = load_dataset("json", data_files=os.path.join(work, "sft.jsonl"), split="train").remove_columns(["prompt", "prompt_id"])
    dpo_data = load_dataset("json", data_files=os.path.join(work, "dpo.jsonl"), split="train").remove_columns(
        ["prompt", "prompt_id", "score_chosen", "score_rejected"]
    )

    torch.manual_seed(0)
    out = os.path.join(work, "trl-lora-sft")
    sft = SFTTrainer(model=starting_adapter(work), args=SFTConfig(**common_args(out, **LORA_ARGS), packing=False), train_dataset=sft_data, processing_class=tokenizer)
    sft.train()
    dump(sft, out)

    torch.manual_seed(0)
    out = os.path.join(work, "trl-lora-dpo")
    dpo = DPOTrainer(model=starting_adapter(work), args=DPOConfig(**common_args(out, **LORA_ARGS), beta=0.1), train_dataset=dpo_data, processing_class=tokenizer)
    assert "ref" in dpo.model.peft_config and dpo.ref_model is None, "TRL's reference for a PeftModel policy is its frozen copy"
    dpo.train()
    dump(dpo, out)

    torch.manual_seed(0)
    out = os.path.join(work, "trl-lora-dpo-fresh")
    fresh = DPOTrainer(
        model=os.path.join(work, "model"),
        args=DPOConfig(**common_args(out, **LORA_ARGS), beta=0.1),
        train_dataset=dpo_data,
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )
    assert "ref" not in fresh.model.peft_config and fresh.ref_model is None, "TRL's reference for a fresh adapter is the adapter disabled"
    copy_fresh_adapter(fresh.model, os.path.join(work, "fresh-init"))
    fresh.train()
    dump(fresh, out)

    # The same with the lm_head trained beside the adapter: the reference is still
    # disable_adapter(), which switches PEFT's saved copy of the lm_head off too (the base).
    torch.manual_seed(0)
    out = os.path.join(work, "trl-lora-dpo-saved")
    saved = DPOTrainer(
        model=os.path.join(work, "model"),
        args=DPOConfig(**common_args(out, **LORA_ARGS), beta=0.1),
        train_dataset=dpo_data,
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA, modules_to_save=["lm_head"]),
    )
    copy_fresh_adapter(saved.model, os.path.join(work, "fresh-init-saved"))
    saved.train()
    dump(saved, out)

    write_peft_logps(work, tokenizer)


def write_peft_logps(work, tokenizer):
    from peft import PeftModel

    from mistral_reference import document_logps, shifted_targets

    docs = []
    with open(os.path.join(work, "sft.jsonl")) as f:
        for line in f:
            docs.append(tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=False))
    targets = [shifted_targets(ids, [False] * len(ids)) for ids in docs]
    result = {"documents": docs, "targets": targets}
    for run in ("zn-lora-sft", "zn-lora-dpo", "zn-lora-dpo-fresh", "zn-lora-dpo-saved"):
        base = MistralForCausalLM.from_pretrained(os.path.join(work, "model"), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, os.path.join(work, run)).double()
        with torch.no_grad():
            result[run] = document_logps(model, docs, targets, "sdpa").tolist()
    with open(os.path.join(work, "peft_logps.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if sys.argv[1] == "peft":
        peft_runs(sys.argv[2])
    else:
        main()
