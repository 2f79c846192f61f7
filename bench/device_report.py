"""The final table of bench/device-check.sh, from the JSON lines of zn_cuda_check and
bench/torch_device.py: checks summary, GEMM and attention TFLOP/s (ours beside torch), the
memory-bound kernels, the training steps beside TRL on the same GPU (bench/steps.ts --peer
--device cuda's JSON), the recipe-shaped steps against issue 21's targets (bench/steps.ts --preset
mistral-7b-sft|mistral-7b-dpo's JSON), the CPU test suite, and how each part of the run ended.
  python3 bench/device_report.py results.jsonl [--parts parts.txt] [--ctest ctest.log] [--peer peer.json]
                                               [--recipe recipe-sft.json recipe-dpo.json ...]
"""
import argparse
import json
import re


def load(path):
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return records


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def print_peer(path):
    """SFT and DPO steps of the small preset, zephyr-native beside transformers + TRL on this GPU."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        print(f"\nsteps beside TRL: no report ({error})")
        return
    results = report.get("results", [])
    rows = [[r["mode"], r["precision"], r["implementation"], fmt(r["step_s"], 3), fmt(r["tokens_per_s"], 0),
             fmt(r["peak_bytes"] / 2**20, 0)] for r in results]
    preset = report.get("settings", {}).get("preset", "?")
    print(f"\nTraining steps, {preset} preset, zephyr-native beside transformers + TRL "
          "(on the GPU, peak memory is device memory taken, the same measure both sides)")
    print(table(["mode", "precision", "implementation", "s/step", "tokens/s", "peak MiB"], rows))
    for r in report.get("ratios", []):
        print(f"  {r['mode']} {r['precision']}: zephyr-native / TRL tokens/s {r['tokens_per_s']:.2f}x, "
              f"time/step {r['step_s']:.2f}, peak memory {r['peak_bytes']:.2f}")
    if results and not report.get("ratios"):
        print("  no TRL side (see the log: trl or datasets missing on this machine?)")


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def gib(x):
    return "-" if x is None else f"{x / 2**30:.1f}"


def residency(r):
    res = r.get("residency", {})
    where = "offloaded optimizer" if res.get("offloadOptimizer") else "all resident"
    return f"{where}, {'checkpointing' if res.get('gradientCheckpointing') else 'no recompute'}"


def target_value(t):
    if t.get("value") is None:
        return "not measured"
    return f"{t['value']:.0f}" if t.get("unit") == "tokens/s" else pct(t["value"])


def target_result(t):
    if t.get("met") is None:
        return "n/a" + (f" ({t['note']})" if t.get("note") else "")
    return "met" if t["met"] else "NOT MET"


def print_recipe(paths):
    """The recipe's optimizer steps (SFT 8 x 16 x 2048, DPO 4 x 8 pairs x 2 x 1024) against issue 21's targets."""
    results, missing = [], []
    for path in paths:
        try:
            with open(path) as f:
                results += json.load(f).get("results", [])
        except (OSError, json.JSONDecodeError) as error:
            missing.append(f"{path}: {error.strerror if isinstance(error, OSError) else error}")
    print("\nRecipe steps: one optimizer step as recipes/zephyr-7b-beta.yaml runs it "
          "(MFU: 6N per policy token + 2N per reference token + attention, against the measured bf16 GEMM rate and the datasheet peak)")
    for line in missing:
        print(f"  no report: {line} (the part was skipped, timed out or failed: see parts)")
    if not results:
        return
    label = lambda r: r["preset"] + (f" ({r['reference']} ref)" if r.get("reference") else "") + (" scaled down" if r.get("shape_overridden") else "")
    rows = [[label(r), r.get("card", "?"), residency(r), fmt(r["step_s"], 2), fmt(r["tokens_per_s"], 0), fmt(r["achieved_tflops"]),
             pct(r.get("mfu_measured")), pct(r.get("mfu_datasheet")), gib(r["memory"].get("device_peak_bytes")),
             gib(r["memory"].get("host_rss_peak_bytes")), pct(r.get("host_share"))] for r in results]
    print(table(["step", "card", "residency", "s/step", "tokens/s", "TFLOP/s", "MFU GEMM", "MFU datasheet",
                 "device GiB", "host RSS GiB", "host share"], rows))
    peaks = {(r["peak"].get("measured_tflops"), r["peak"].get("measured_how"), r["peak"].get("datasheet_card"), r["peak"].get("datasheet_tflops")) for r in results}
    for measured, how, card, datasheet in sorted(peaks, key=str):
        print(f"  peaks: measured {fmt(measured)} TFLOP/s ({how or 'not measured'}); datasheet {fmt(datasheet)} TFLOP/s ({card})")
    rows = []
    for r in results:
        p = r["phases_s"]
        detail = (r.get("steps") or [{}])[0].get("optimizer_detail") or {}
        rows.append([label(r), fmt(p["forward_backward"], 2), fmt(p["forward_backward"] / r["shape"]["microBatches"], 3),
                     fmt(p["reference"], 2), fmt(p["zero_grad"], 3), fmt(p["optimizer"], 2), fmt(p["other"], 3),
                     ", ".join(f"{k} {v:.3f}" for k, v in detail.items()) or "-"])
    print("time by phase, seconds per step")
    print(table(["step", "fwd+bwd", "per micro-batch", "reference", "zero_grad", "optimizer", "other", "optimizer detail"], rows))
    rows = [[label(r), t["name"], t["target"], target_value(t), target_result(t)] for r in results for t in r.get("targets", [])]
    print("targets (issue 21, one H100)")
    print(table(["step", "target", "goal", "value", "result"], rows))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--parts", default="")
    parser.add_argument("--ctest", default="")
    parser.add_argument("--peer", default="")
    parser.add_argument("--recipe", nargs="*", default=[])
    args = parser.parse_args()
    try:
        records = load(args.results)
    except OSError as error:
        records = []
        print(f"no results: {error}")
    info = {r["key"]: r["value"] for r in records if r.get("kind") == "info"}
    checks = [r for r in records if r.get("kind") == "check"]
    bench = [r for r in records if r.get("kind") == "bench"]

    print("=" * 100)
    print(f"zephyr-native device check: {info.get('device', 'no GPU result')} (compute {info.get('compute_capability', '?')}),"
          f" cuBLASLt {info.get('cublaslt', '?')}, torch {info.get('torch', '?')}")
    print(f"host CPU: {info.get('cpu_model', '?')}; SIMD flags: {info.get('cpu_flags', '?')}")
    failed = [c for c in checks if not c.get("pass")]
    print(f"\nkernel checks: {len(checks) - len(failed)} passed, {len(failed)} failed")
    for c in failed:
        detail = c.get("error") or f"rel err {c.get('rel_err')} > tol {c.get('tol')} vs {c.get('against')}"
        print(f"  FAIL {c['op']} {c['case']}: {detail}")

    def ours(op, shape, impl=None):
        for r in bench:
            if r.get("source") == "ours" and r["op"] == op and r["shape"] == shape and (impl is None or r.get("impl") == impl):
                return r
        return None

    def torch(op, shape, prefer=None):
        found = [r for r in bench if r.get("source") == "torch" and r["op"] == op and r["shape"] == shape and "error" not in r]
        if prefer:
            found = sorted(found, key=lambda r: prefer not in r.get("impl", ""))
        return found[0] if found else None

    gemm_shapes = list(dict.fromkeys(r["shape"] for r in bench if r["op"] == "gemm"))
    if gemm_shapes:
        rows = []
        for shape in gemm_shapes:
            lt, mma, th = ours("gemm", shape, "cublaslt"), ours("gemm", shape, "mma"), torch("gemm", shape, "out_dtype")
            rows.append([shape, fmt(lt and lt.get("tflops")), fmt(mma and mma.get("tflops")), fmt(th and th.get("tflops")),
                         (th or {}).get("impl", "-")])
        print("\nGEMM TFLOP/s (bf16 operands, f32 accumulation; bf16 output unless the shape says f32)")
        print(table(["shape MxNxK", "ours cuBLASLt", "ours mma.sync", "torch", "torch call"], rows))

    attn_shapes = list(dict.fromkeys(re.sub(r" (fwd|bwd|fwd\+bwd)$", "", r["shape"]) for r in bench if r["op"] == "attention"))
    if attn_shapes:
        rows = []
        for shape in attn_shapes:
            row = [shape]
            for phase in ("fwd", "bwd", "fwd+bwd"):
                r = ours("attention", f"{shape} {phase}")
                row.append(fmt(r and r.get("tflops")))
            impl = "-"
            for phase in ("fwd", "bwd", "fwd+bwd"):
                r = torch("attention", f"{shape} {phase}")
                row.append(fmt(r and r.get("tflops")))
                impl = r["impl"] if r else impl
            f = ours("attention", f"{shape} fwd+bwd")
            t = torch("attention", f"{shape} fwd+bwd")
            row.append(f"{t['ms'] / f['ms']:.2f}x" if f and t else "-")
            row.append(impl)
            rows.append(row)
        print("\nAttention TFLOP/s (bf16, 32 q / 8 kv heads, D 128; fwd = 4 D H pairs, bwd = 2.5 x fwd; ours = flash kernels)")
        print(table(["shape", "ours fwd", "ours bwd", "ours f+b", "torch fwd", "torch bwd", "torch f+b", "torch/ours time", "torch impl"], rows))

    other = [r for r in bench if r.get("source") == "ours" and r["op"] not in ("gemm", "attention")]
    if other:
        rows = [[r["op"], r["shape"], fmt(r.get("ms"), 3), fmt(r.get("gbps")), fmt(r.get("tflops"))] for r in other]
        print("\nOther kernels")
        print(table(["op", "shape", "ms", "GB/s", "TFLOP/s"], rows))

    torch_errors = [r for r in bench if r.get("source") == "torch" and "error" in r]
    for r in torch_errors:
        print(f"torch {r['op']} {r['shape']}: {r['error'][:200]}")

    if args.peer:
        print_peer(args.peer)

    if args.recipe:
        print_recipe(args.recipe)

    if args.ctest:
        try:
            text = open(args.ctest).read()
            summary = re.findall(r"\d+% tests passed.*", text)
            print(f"\nCPU ctest: {summary[-1] if summary else 'no summary (see ctest.log)'}")
            for name in re.findall(r"\d+ - (\S+) \((Failed|Timeout|SEGFAULT|Subprocess aborted)\)", text):
                print(f"  {name[0]}: {name[1]}")
        except OSError:
            print("\nCPU ctest: no log")

    if args.parts:
        try:
            print("\nparts: " + "; ".join(line.strip() for line in open(args.parts) if line.strip()))
        except OSError:
            pass
    print("=" * 100)


if __name__ == "__main__":
    main()
