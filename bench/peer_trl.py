"""The peer side of the step benchmark: PyTorch + transformers + TRL's SFTTrainer / DPOTrainer on
the same model folder and batch shape as zephyr-native's bench (bench/peer.ts writes the folder:
config.json, random-init weights and the Llama-2 tokenizer, so both sides run the very same
preset), timed per optimizer step with a callback.
Prints one JSON object: {preset, mode, implementation: "trl", precision, device, step_s (median
after warm-up), steps_s (all timed), tokens_per_step, tokens_per_s, peak_bytes, threads, versions}.
peak_bytes is the max RSS on the CPU; on a GPU it is what zephyr-native's bench reports there: the
device's free memory before the models, less the lowest free memory seen after a step (the
caching allocator's reserve and cuBLAS workspaces included, the CUDA context not).

usage: python peer_trl.py --model DIR --preset NAME --mode sft|dpo --precision bf16|f32
                          --sequences 4 --seq-len 512 --prompt-len 128
                          [--steps 3] [--warmup 1] [--threads N] [--device cpu|cuda]

SFT: `sequences` rows of `seq_len` random token ids (pre-tokenized, so the trainer does not
tokenize). DPO: `sequences` pairs of text made of words that are one token each, so prompt +
completion is `seq_len` tokens after TRL's keep_start truncation (checked below: the token count
reported is the one TRL actually trains on). The reference model is a frozen copy, run forward
every step (precompute_ref_log_probs=False), as zephyr-native's bench does.

--peft (with --lora-r, --lora-alpha, --lora-target-modules): LoRA steps through TRL + PEFT, a
peft.LoraConfig of those settings (no dropout, no bias, CAUSAL_LM) passed as the trainers'
peft_config; DPO gets no ref_model, so TRL's reference is the policy with its adapters disabled
(zephyr-native's bench does the same with one copy of the base). In bf16 the frozen base is loaded
in bfloat16 (as the alignment-handbook's LoRA recipes load it, torch_dtype: bfloat16, and as
zephyr-native holds a LoRA base); PEFT keeps the adapters in f32 and the Trainer autocasts.
"""
import argparse
import copy
import json
import random
import resource
import statistics
import sys
import tempfile
import time

# Words that are one token each in the Llama-2 / Mistral vocabulary (with the leading space).
WORDS = ["alpha", "river", "stone", "cloud", "seven", "garden", "silver", "window", "planet", "orange"]


def sft_rows(rng, count, seq_len, vocab):
    return [{"input_ids": [rng.randint(3, vocab - 1) for _ in range(seq_len)]} for _ in range(count)]


def dpo_rows(rng, count, seq_len, prompt_len):
    # BOS + (prompt_len - 1) words; completions long enough to fill seq_len (the rest is cut).
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))
    completion = seq_len - prompt_len + 8
    return [{"prompt": text(prompt_len - 1), "chosen": " " + text(completion), "rejected": " " + text(completion)}
            for _ in range(count)]


def trained_tokens(mode, dataset, max_length):
    """Tokens per row as TRL's collator cuts them: SFT input_ids; DPO prompt+chosen and prompt+rejected."""
    if mode == "sft":
        return [min(len(ids), max_length) for ids in dataset["input_ids"]]
    lengths = []
    for prompt, chosen, rejected in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]):
        lengths.append(min(len(prompt) + len(chosen), max_length) + min(len(prompt) + len(rejected), max_length))
    return lengths


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="HF model folder with tokenizer files")
    parser.add_argument("--preset", required=True, help="label for the output")
    parser.add_argument("--mode", default="sft", choices=["sft", "dpo"])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "f32"])
    parser.add_argument("--sequences", type=int, required=True, help="SFT sequences / DPO pairs per step")
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--prompt-len", type=int, required=True, help="DPO prompt tokens (BOS included)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--peft", action="store_true", help="LoRA adapters over the frozen base (TRL + PEFT)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=32)
    parser.add_argument("--lora-target-modules", default="all-linear")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer, MistralForCausalLM, TrainerCallback

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    gpu = args.device == "cuda"
    if gpu:
        if not torch.cuda.is_available():
            raise SystemExit("peer_trl.py: --device cuda but torch sees no CUDA GPU")
        torch.zeros(1, device="cuda")  # the CUDA context first, so the baseline below excludes it
        torch.cuda.synchronize()
        free_before = torch.cuda.mem_get_info()[0]
        lowest_free = [free_before]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Full training: f32 master weights in both precisions; bf16 is autocast, as the Trainer does
    # with bf16=True. LoRA in bf16: the frozen base in bfloat16 (nothing updates it), adapters f32.
    base_dtype = torch.bfloat16 if args.peft and args.precision == "bf16" else torch.float32
    model = MistralForCausalLM.from_pretrained(args.model, dtype=base_dtype)
    peft_config = None
    if args.peft:
        import peft
        peft_config = peft.LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                                      target_modules=args.lora_target_modules, bias="none", task_type="CAUSAL_LM")
    if model.config.vocab_size != len(tokenizer):
        raise SystemExit(f"peer_trl.py: vocab_size {model.config.vocab_size} != tokenizer size {len(tokenizer)}")

    rng = random.Random(0)
    total_steps = args.warmup + args.steps
    rows = args.sequences * total_steps
    if args.mode == "sft":
        data = datasets.Dataset.from_list(sft_rows(rng, rows, args.seq_len, model.config.vocab_size))
    else:
        data = datasets.Dataset.from_list(dpo_rows(rng, rows, args.seq_len, args.prompt_len))

    times = []

    class StepTimer(TrainerCallback):
        # On a GPU each step is timed to the end of its kernels, and free memory is read then.
        def on_step_begin(self, *a, **k):
            if gpu:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            if gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)
            if gpu:
                lowest_free[0] = min(lowest_free[0], torch.cuda.mem_get_info()[0])

    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.sequences, max_steps=total_steps,
                  learning_rate=1e-5, logging_steps=1000, save_strategy="no", report_to="none", use_cpu=not gpu,
                  bf16=args.precision == "bf16", gradient_checkpointing=False, max_length=args.seq_len,
                  dataloader_drop_last=True, disable_tqdm=True, max_grad_norm=1.0, weight_decay=0.0)
    if args.mode == "sft":
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common, packing=False), train_dataset=data,
                                 processing_class=tokenizer, callbacks=[StepTimer()], peft_config=peft_config)
    else:
        # LoRA: no ref_model, so TRL's reference is the policy with its adapters disabled.
        trainer = trl.DPOTrainer(model=model, ref_model=None if args.peft else copy.deepcopy(model),
                                 args=trl.DPOConfig(**common, beta=0.1, precompute_ref_log_probs=False),
                                 train_dataset=data, processing_class=tokenizer, callbacks=[StepTimer()],
                                 peft_config=peft_config)
    if args.peft:
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"peer_trl.py: LoRA r {args.lora_r}, alpha {args.lora_alpha}, {args.lora_target_modules}: "
              f"{trainable} trainable parameters", file=sys.stderr)
    lengths = trained_tokens(args.mode, trainer.train_dataset, args.seq_len)
    per_row = 2 * args.seq_len if args.mode == "dpo" else args.seq_len
    if len(lengths) != rows or any(length != per_row for length in lengths):
        print(f"peer_trl.py: warning: rows carry {min(lengths)}..{max(lengths)} tokens, expected {per_row}",
              file=sys.stderr)
    tokens_per_step = sum(lengths) / total_steps
    trainer.train()
    timed = times[args.warmup:]
    step_s = statistics.median(timed)
    peak_bytes = (free_before - lowest_free[0]) if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                "python": sys.version.split()[0]}
    if args.peft:
        import peft
        versions["peft"] = peft.__version__
    print(json.dumps({
        "preset": args.preset, "mode": args.mode, "implementation": "trl", "precision": args.precision,
        "peft": {"r": args.lora_r, "alpha": args.lora_alpha, "target_modules": args.lora_target_modules} if args.peft else None,
        "device": args.device, "step_s": step_s, "steps_s": timed, "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / step_s,
        "peak_bytes": peak_bytes,
        "threads": torch.get_num_threads(),
        "versions": versions,
    }))


if __name__ == "__main__":
    sys.exit(main())
