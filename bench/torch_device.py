"""PyTorch on the same card and shapes as zn_cuda_check's timings, for bench/device-check.sh.

GEMM: torch.matmul on bf16 operands laid out as ours (y = x.Wt, dx = dy.W, dW = dyt.x), bf16
output (the f32-output dW case also tries torch.mm(..., out_dtype=torch.float32)).
Attention: forward and backward with Mistral-7B heads (32 query, 8 kv, head_dim 128):
  full causal  -> F.scaled_dot_product_attention(is_causal=True) (flash backend where it applies);
  sliding window, packed documents -> FlexAttention (torch.compile'd, block-sparse like ours)
  when it compiles, else scaled_dot_product_attention with an explicit boolean mask [T, T].
The implementation used is written into each JSON line ("impl"). FLOPs use the same
convention as ours: forward 4 * D * H * (visible query-key pairs), backward 2.5 x forward.
Writes JSON lines (--json) and prints one line per timing.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

GEMMS = [  # name, M, N, K, trans_a, trans_b, f32 output  (keep in sync with check_bench.cpp)
    ("square", 4096, 4096, 4096, False, True, False),
    ("qkv y=x.Wt", 8192, 6144, 4096, False, True, False),
    ("o y=x.Wt", 8192, 4096, 4096, False, True, False),
    ("gate_up y=x.Wt", 8192, 28672, 4096, False, True, False),
    ("down y=x.Wt", 8192, 4096, 14336, False, True, False),
    ("down dx=dy.W", 8192, 14336, 4096, False, False, False),
    ("down dW+=dyt.x f32", 4096, 14336, 8192, True, False, True),
]
ATTENTION = [(4096, 0, 1), (8192, 4096, 1), (8192, 0, 1), (8192, 0, 8)]  # tokens, window, docs
HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128


def median_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


class Writer:
    def __init__(self, path):
        self.file = open(path, "w") if path else None

    def timing(self, op, shape, impl, ms, flops):
        tflops = flops / (ms * 1e-3) / 1e12 if flops else None
        print(f"TORCH {op:10s} {shape:40s} {impl:34s} {ms:9.3f} ms" + (f" {tflops:7.1f} TFLOP/s" if tflops else ""), flush=True)
        self.write({"kind": "bench", "source": "torch", "op": op, "shape": shape, "impl": impl, "ms": ms, "tflops": tflops})

    def error(self, op, shape, message):
        print(f"TORCH {op:10s} {shape:40s} error: {message}", flush=True)
        self.write({"kind": "bench", "source": "torch", "op": op, "shape": shape, "error": message})

    def write(self, record):
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()


def bench_gemm(out):
    for name, M, N, K, ta, tb, f32_out in GEMMS:
        shape = f"{name} {M}x{N}x{K}"
        try:
            a = torch.rand(K, M) if ta else torch.rand(M, K)
            b = torch.rand(N, K) if tb else torch.rand(K, N)
            a = (a.cuda() * 2 - 1).to(torch.bfloat16)
            b = (b.cuda() * 2 - 1).to(torch.bfloat16)
            x, w = (a.t() if ta else a), (b.t() if tb else b)
            flops = 2.0 * M * N * K
            out.timing("gemm", shape, "torch.matmul bf16 out", median_ms(lambda: torch.matmul(x, w)), flops)
            if f32_out:
                try:
                    torch.mm(x, w, out_dtype=torch.float32)
                    out.timing("gemm", shape, "torch.mm out_dtype=f32", median_ms(lambda: torch.mm(x, w, out_dtype=torch.float32)), flops)
                except (TypeError, RuntimeError) as error:
                    print(f"TORCH gemm {shape}: no f32-output mm ({str(error).splitlines()[0]})")
            del a, b, x, w
        except Exception as error:  # noqa: BLE001 - report and go on with the next shape
            out.error("gemm", shape, f"{type(error).__name__}: {error}")
        torch.cuda.empty_cache()


def visible_pairs(tokens, window, docs):
    pairs = 0
    for d in range(docs):
        length = tokens * (d + 1) // docs - tokens * d // docs
        for i in range(length):
            pairs += min(i + 1, window) if window > 0 else i + 1
    return pairs


def document_ids(tokens, docs):
    ids = torch.empty(tokens, dtype=torch.int32)
    for d in range(docs):
        ids[tokens * d // docs: tokens * (d + 1) // docs] = d
    return ids.cuda()


def attention_functions(tokens, window, docs):
    """Yields (impl name, attention(q, k, v)) candidates, best first."""
    doc = document_ids(tokens, docs)
    if window == 0 and docs == 1:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash(q, k, v, gqa):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # an error, not a silent slow fallback
                if gqa:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                group = HEADS // KV_HEADS
                return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), is_causal=True)

        yield "sdpa flash is_causal, gqa", lambda q, k, v: flash(q, k, v, True)
        yield "sdpa flash is_causal, kv repeated", lambda q, k, v: flash(q, k, v, False)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def mask_mod(b, h, q_idx, kv_idx):
            visible = (q_idx >= kv_idx) & (doc[q_idx] == doc[kv_idx])
            return visible & (q_idx - kv_idx < window) if window > 0 else visible

        block_mask = create_block_mask(mask_mod, None, None, tokens, tokens)
        # The backward is timed by re-running it on one graph (retain_graph=True), which a compiled
        # backward that donates its saved buffers refuses (the first H100 run, torch 2.11).
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
        compiled = torch.compile(flex_attention, dynamic=False)
        yield "flex_attention (compiled), gqa", lambda q, k, v: compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
    except Exception as error:  # noqa: BLE001
        print(f"TORCH flex_attention unavailable: {type(error).__name__}: {error}")
    i = torch.arange(tokens, device="cuda")
    mask = (i[:, None] >= i[None, :]) & (doc[:, None] == doc[None, :])
    if window > 0:
        mask &= (i[:, None] - i[None, :]) < window
    yield "sdpa bool mask [T,T], kv repeated", lambda q, k, v: F.scaled_dot_product_attention(
        q, k.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1), attn_mask=mask)


def bench_attention(out, flex_seconds):
    for tokens, window, docs in ATTENTION:
        shape = f"T{tokens} H32/8 D128 " + (f"window {window}" if window > 0 else "causal") + (f" {docs} docs" if docs > 1 else "")
        fwd_flops = 4.0 * visible_pairs(tokens, window, docs) * HEAD_DIM * HEADS
        q = (torch.rand(1, HEADS, tokens, HEAD_DIM, device="cuda") * 2 - 1).to(torch.bfloat16).requires_grad_()
        k = (torch.rand(1, KV_HEADS, tokens, HEAD_DIM, device="cuda") * 2 - 1).to(torch.bfloat16).requires_grad_()
        v = (torch.rand(1, KV_HEADS, tokens, HEAD_DIM, device="cuda") * 2 - 1).to(torch.bfloat16).requires_grad_()
        dout = (torch.rand(1, HEADS, tokens, HEAD_DIM, device="cuda") * 2 - 1).to(torch.bfloat16)
        errors = []
        for impl, attend in attention_functions(tokens, window, docs):
            try:
                started = time.time()
                result = attend(q, k, v)  # compiles where it must
                result.backward(dout)
                torch.cuda.synchronize()
                if "flex" in impl and time.time() - started > flex_seconds:
                    print(f"TORCH {impl} took {time.time() - started:.0f}s to compile")
                fwd_ms = median_ms(lambda: attend(q, k, v))
                result = attend(q, k, v)
                bwd_ms = median_ms(lambda: torch.autograd.grad(result, (q, k, v), dout, retain_graph=True))
                out.timing("attention", shape + " fwd", impl, fwd_ms, fwd_flops)
                out.timing("attention", shape + " bwd", impl, bwd_ms, 2.5 * fwd_flops)
                out.timing("attention", shape + " fwd+bwd", impl, fwd_ms + bwd_ms, 3.5 * fwd_flops)
                break
            except Exception as error:  # noqa: BLE001 - try the next implementation
                errors.append(f"{impl}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
                print(f"TORCH attention {shape}: {errors[-1]}", flush=True)
            finally:
                q.grad = k.grad = v.grad = None
        else:
            out.error("attention", shape, "; ".join(errors))
        del q, k, v, dout
        torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="")
    parser.add_argument("--only", default="", help="gemm or attention")
    parser.add_argument("--flex-seconds", type=float, default=120)
    args = parser.parse_args()
    out = Writer(args.json)
    if not torch.cuda.is_available():
        out.error("torch", "device", "torch sees no GPU")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, cuda {torch.version.cuda}", flush=True)
    out.write({"kind": "info", "key": "torch", "value": f"{torch.__version__} cuda {torch.version.cuda}"})
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.only in ("", "gemm"):
        bench_gemm(out)
    if args.only in ("", "attention"):
        bench_attention(out, args.flex_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
