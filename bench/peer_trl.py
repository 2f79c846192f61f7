"""The peer side of the step benchmark: PyTorch + transformers + TRL's SFTTrainer / DPOTrainer on
the same preset shapes as zephyr-native's bench, timed per optimizer step with a callback.
Prints one JSON object: {preset, mode, implementation: "trl", precision, step_s (median after
warm-up), steps_s (all), tokens_per_step, tokens_per_s, peak_bytes (max RSS), threads, versions}.

usage: python peer_trl.py --preset small --mode sft|dpo --precision bf16|f32 --tokenizer DIR
                          [--steps 3] [--warmup 1] [--threads N]
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

PRESETS = {
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, sliding_window=4096, sequences=4, seq_len=128, tie_word_embeddings=True),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, sliding_window=4096, sequences=4, seq_len=512, tie_word_embeddings=False),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--mode", default="sft", choices=["sft", "dpo"])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "f32"])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM, TrainerCallback

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    preset = dict(PRESETS[args.preset])
    sequences = preset.pop("sequences")
    seq_len = preset.pop("seq_len")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, rope_theta=10000.0,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **preset)
    model = MistralForCausalLM(config).float()

    rng = random.Random(0)
    total_steps = args.warmup + args.steps
    rows = sequences * total_steps
    if args.mode == "sft":
        low, high = 3, len(tokenizer) - 1
        data = datasets.Dataset.from_list(
            [{"input_ids": [rng.randint(low, high) for _ in range(seq_len)]} for _ in range(rows)])
    else:
        words = ["alpha", "river", "stone", "cloud", "seven", "garden", "silver", "window", "planet", "orange"]
        text = lambda n: " ".join(rng.choice(words) for _ in range(n))
        data = datasets.Dataset.from_list([
            {"prompt": text(seq_len // 4), "chosen": text(seq_len), "rejected": text(seq_len)} for _ in range(rows)])

    times = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.start)

    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=sequences, max_steps=total_steps,
                  learning_rate=1e-5, logging_steps=1000, save_strategy="no", report_to="none", use_cpu=True,
                  bf16=args.precision == "bf16", gradient_checkpointing=False, max_length=seq_len,
                  dataloader_drop_last=True, disable_tqdm=True)
    if args.mode == "sft":
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common, packing=False), train_dataset=data,
                                 processing_class=tokenizer, callbacks=[StepTimer()])
        tokens_per_step = sequences * seq_len
    else:
        trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=trl.DPOConfig(**common, beta=0.1), train_dataset=data,
                                 processing_class=tokenizer, callbacks=[StepTimer()])
        tokens_per_step = 2 * sequences * seq_len
    trainer.train()
    timed = times[args.warmup:]
    step_s = statistics.median(timed)
    print(json.dumps({
        "preset": args.preset, "mode": args.mode, "implementation": "trl", "precision": args.precision,
        "step_s": step_s, "steps_s": timed, "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / step_s,
        "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
    }))


if __name__ == "__main__":
    sys.exit(main())
