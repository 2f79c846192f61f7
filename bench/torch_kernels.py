"""PyTorch side of `npm run bench:kernels`: times the same case specs as zn_bench and prints one
JSON object per line (impl "torch"). Spec formats and FLOP counts match
bench/native/bench_kernels.cpp:

  gemm:M,N,K:TT:DTYPE        C[M,N] = op(A) @ op(B), TT is n|t for A then B, DTYPE f32|bf16;
                             2*M*N*K FLOPs
  attention:T,HQ,HKV,D,W     causal GQA attention, one document of T tokens, sliding window W
                             (0: none), through scaled_dot_product_attention with the same mask:
                             forward (4*pairs*D*HQ FLOPs, grad enabled, as in training), backward
                             of a kept graph (10*pairs*D*HQ) and both (14*pairs*D*HQ); pairs =
                             visible (i, j)
  logprob:N,DIM,V            log_softmax(h @ W.T)[label] forward + backward with materialised f32
                             logits; 6*N*DIM*V FLOPs

Usage: python bench/torch_kernels.py --threads N [--cpu-time] SPEC...
"""
import argparse
import json
import math
import sys
import time

import torch


# --cpu-time (with --threads 1): runs are timed by this thread's CPU clock, as zn_bench does
# under ZN_BENCH_CPU_TIME=1; torch runs one-thread ops on the calling thread.
CLOCK = time.perf_counter


def best_seconds(run, budget=1.5, max_runs=50):
    """Best time after one warm-up run, as zn_bench measures: timed runs repeat until `budget`
    wall seconds have passed (at least one run), and the least disturbed one counts."""
    run()
    best = math.inf
    start = time.perf_counter()
    runs = 0
    while runs == 0 or (time.perf_counter() - start < budget and runs < max_runs):
        t0 = CLOCK()
        run()
        best = min(best, CLOCK() - t0)
        runs += 1
    return best


def emit(op, shape, dtype, variant, flops, seconds, **extra):
    print(json.dumps({"op": op, "shape": shape, "dtype": dtype, "variant": variant,
                      "impl": "torch", "threads": torch.get_num_threads(),
                      "gflops": round(flops / seconds / 1e9, 1), "seconds": round(seconds, 5),
                      **extra}), flush=True)


def sizes(text, count, spec):
    values = [int(v) for v in text.split(",")]
    if len(values) != count or min(values) <= 0:
        raise SystemExit(f"torch_kernels.py: '{spec}' needs {count} positive comma-separated sizes")
    return values


def gemm(spec):
    _, shape, variant, dtype = spec.split(":")
    m, n, k = sizes(shape, 3, spec)
    torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn((k, m) if variant[0] == "t" else (m, k)).to(torch_dtype)
    b = torch.randn((n, k) if variant[1] == "t" else (k, n)).to(torch_dtype)
    op_a = a.t() if variant[0] == "t" else a
    op_b = b.t() if variant[1] == "t" else b
    seconds = best_seconds(lambda: torch.matmul(op_a, op_b))
    emit("gemm", [m, n, k], dtype, variant, 2.0 * m * n * k, seconds)


def visible_pairs(tokens, window):
    """(i, j) pairs with j <= i and i - window < j, as the attention kernel counts them."""
    if window <= 0 or window >= tokens:
        return tokens * (tokens + 1) // 2
    return window * (window + 1) // 2 + (tokens - window) * window


def attention(spec):
    _, shape = spec.split(":")
    tokens, heads, kv_heads, dim = sizes(shape.rsplit(",", 1)[0], 4, spec)
    window = int(shape.rsplit(",", 1)[1])
    q = torch.randn(1, heads, tokens, dim, requires_grad=True)
    k = torch.randn(1, kv_heads, tokens, dim, requires_grad=True)
    v = torch.randn(1, kv_heads, tokens, dim, requires_grad=True)
    grad = torch.randn(1, heads, tokens, dim)
    mask = None
    if 0 < window < tokens:
        i = torch.arange(tokens).unsqueeze(1)
        j = torch.arange(tokens).unsqueeze(0)
        mask = (j <= i) & (i - window < j)

    def forward():
        if mask is None:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                    enable_gqa=True)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                enable_gqa=True)

    def both():
        q.grad = k.grad = v.grad = None
        forward().backward(grad)

    out = forward()

    def backward():
        q.grad = k.grad = v.grad = None
        out.backward(grad, retain_graph=True)

    macs = visible_pairs(tokens, window) * dim * heads  # multiply-adds of one masked T x T matmul
    shape = [tokens, heads, kv_heads, dim, window]
    emit("attention", shape, "f32", "fwd", 4.0 * macs, best_seconds(forward))
    emit("attention", shape, "f32", "bwd", 10.0 * macs, best_seconds(backward))
    emit("attention", shape, "f32", "fwd+bwd", 14.0 * macs, best_seconds(both))


def logprob(spec):
    _, shape = spec.split(":")
    n, dim, vocab = sizes(shape, 3, spec)
    hidden = torch.randn(n, dim, requires_grad=True)
    weight = (torch.randn(vocab, dim) / math.sqrt(dim)).requires_grad_(True)
    labels = torch.randint(0, vocab, (n,))
    grad = torch.randn(n)

    def run():
        hidden.grad = weight.grad = None
        logits = hidden @ weight.t()
        logp = torch.log_softmax(logits, dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1)
        logp.backward(grad)

    seconds = best_seconds(run)
    emit("logprob", [n, dim, vocab], "f32", "fwd+bwd", 6.0 * n * dim * vocab, seconds,
         logits_bytes=4 * n * vocab)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the thread's CPU clock (needs --threads 1)")
    parser.add_argument("specs", nargs="+")
    args = parser.parse_args()
    if args.cpu_time:
        if args.threads != 1:
            raise SystemExit(f"torch_kernels.py: --cpu-time times one thread, got --threads {args.threads}")
        global CLOCK
        CLOCK = time.thread_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(json.dumps({"op": "machine", "impl": "torch", "version": torch.__version__,
                      "threads": torch.get_num_threads(),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability()}), flush=True)
    for spec in args.specs:
        kind = spec.split(":")[0]
        if kind == "peak":
            continue
        handler = {"gemm": gemm, "attention": attention, "logprob": logprob}.get(kind)
        if handler is None:
            raise SystemExit(f"torch_kernels.py: unknown case '{spec}'")
        handler(spec)


if __name__ == "__main__":
    sys.exit(main())
