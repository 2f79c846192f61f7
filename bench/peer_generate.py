"""transformers' side of `npm run bench:generate` (bench/generate.ts): greedy
`model.generate` with its KV cache (DynamicCache; sliding-window layers where the config has a
window) on the very same model folder and prompts as zephyr-native's engine, one configuration
per process. Prints one JSON line: {preset, implementation, device, precision, batch,
prompt_tokens, new_tokens, prefill_tokens_per_s, decode_tokens_per_s, peak_bytes, prefill_s,
decode_s, threads, versions}.

Timing as on our side: the whole batch submitted at once (same-length prompts, so no padding);
prefill from the call to the first new token (a streamer sees each step's tokens), decode from
there to the last; exactly new_tokens per sequence (EOS off). peak_bytes is the max RSS on the
CPU; on a GPU, device memory taken (free memory before the model, less the lowest free seen),
as lib/bench/generate-bench.ts measures it.

  python bench/peer_generate.py --model DIR --preset small --batch 8 --prompt-tokens 128
                                --new-tokens 64 [--threads N] [--device cpu|cuda] [--precision f32|bf16]
"""

import argparse
import json
import resource
import sys
import time


def bench_prompt(index, length, vocab):
    """lib/bench/generate-bench.ts benchPrompt: the same ids on both sides."""
    return [3 + ((index * 7919 + t * 104729) % (vocab - 3)) for t in range(length)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--preset", required=True, help="label for the output")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--prompt-tokens", type=int, required=True)
    parser.add_argument("--new-tokens", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import MistralForCausalLM
    from transformers.generation.streamers import BaseStreamer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    gpu = args.device == "cuda"
    lowest_free = [0]
    if gpu:
        if not torch.cuda.is_available():
            raise SystemExit("peer_generate.py: --device cuda but torch sees no CUDA GPU")
        torch.zeros(1, device="cuda")  # the CUDA context first, so the baseline below excludes it
        torch.cuda.synchronize()
        free_before = lowest_free[0] = torch.cuda.mem_get_info()[0]

    def sample_memory():
        if gpu:
            torch.cuda.synchronize()
            lowest_free[0] = min(lowest_free[0], torch.cuda.mem_get_info()[0])

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = MistralForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    vocab = model.config.vocab_size

    class StepClock(BaseStreamer):
        """put() gets the prompt first, then each step's new tokens."""

        def __init__(self):
            self.times = []

        def put(self, value):
            if gpu:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            if len(self.times) == 2:
                sample_memory()

        def end(self):
            pass

    def generate(batch, prompt_tokens, new_tokens, streamer=None):
        ids = torch.tensor([bench_prompt(b, prompt_tokens, vocab) for b in range(batch)], device=args.device)
        return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0, streamer=streamer)

    with torch.inference_mode():
        generate(args.batch, args.prompt_tokens, 2)  # warm-up, as on our side: the same batch, 2 new tokens
        clock = StepClock()
        start = time.perf_counter()
        out = generate(args.batch, args.prompt_tokens, args.new_tokens, clock)
        if gpu:
            torch.cuda.synchronize()
        end = time.perf_counter()
        sample_memory()
    if out.shape != (args.batch, args.prompt_tokens + args.new_tokens):
        raise SystemExit(f"peer_generate.py: generated {tuple(out.shape)}, expected {args.batch} x {args.prompt_tokens + args.new_tokens}")
    first = clock.times[1]
    prefill_s, decode_s = first - start, end - first
    peak_bytes = (free_before - lowest_free[0]) if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "preset": args.preset, "implementation": "transformers", "device": args.device, "precision": args.precision,
        "batch": args.batch, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "prefill_tokens_per_s": args.batch * args.prompt_tokens / prefill_s,
        "decode_tokens_per_s": args.batch * (args.new_tokens - 1) / decode_s if args.new_tokens > 1 else 0,
        "peak_bytes": peak_bytes, "prefill_s": prefill_s, "decode_s": decode_s, "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0]},
    }))


if __name__ == "__main__":
    sys.exit(main())
