"""Reference runs for the trainer conformance test (test/conformance/train.test.ts).

Builds, in WORKDIR, a small byte-fallback BPE tokenizer with the Zephyr chat template, a tiny
random MistralForCausalLM (f32), an SFT dataset (UltraChat schema) and a DPO dataset
(UltraFeedback-binarized schema); then trains the model with TRL's SFTTrainer and DPOTrainer for
5 full-batch steps at a constant learning rate with AdamW and clipping, and writes each run's
log_history and final weights. zephyr-native trains the same model on the same data with the
same recipe, and the test compares.

usage: python trl_train.py WORKDIR
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


def build_model(path, vocab_size):
    torch.manual_seed(0)
    config = MistralConfig(
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


def common_args(output_dir):
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
    )


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

    torch.manual_seed(0)
    sft_data = load_dataset("json", data_files=os.path.join(work, "sft.jsonl"), split="train")
    sft = SFTTrainer(
        model=os.path.join(work, "model"),
        args=SFTConfig(**common_args(os.path.join(work, "trl-sft")), packing=False),
        train_dataset=sft_data.remove_columns(["prompt", "prompt_id"]),
        processing_class=tokenizer,
    )
    sft.train()
    dump(sft, os.path.join(work, "trl-sft"))

    torch.manual_seed(0)
    dpo_data = load_dataset("json", data_files=os.path.join(work, "dpo.jsonl"), split="train")
    dpo = DPOTrainer(
        model=os.path.join(work, "model"),
        args=DPOConfig(**common_args(os.path.join(work, "trl-dpo")), beta=0.1),
        train_dataset=dpo_data.remove_columns(["prompt", "prompt_id", "score_chosen", "score_rejected"]),
        processing_class=tokenizer,
    )
    dpo.train()
    dump(dpo, os.path.join(work, "trl-dpo"))


if __name__ == "__main__":
    main()
