#!/usr/bin/env python3
"""ncu_kernels.py — where a CUDA step's time goes, per kernel and per kind of work.

Reads the CSV that Nsight Compute writes with one metric and a per-kernel summary, e.g.
on the GPU machine:

    /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum --print-summary per-kernel --csv \
        build/bench --config configs/jamba-small.yaml --set train.matmul_precision=bf16 \
        --steps 1 --warmup 1 > ncu.csv
    python3 tools/ncu_kernels.py ncu.csv --steps 2

and prints each kernel's total time (divided by --steps: the profiled process ran warm-up
and timed steps, 2 above), its calls and average, then the totals per kind (cuBLAS
products, bf16 conversions, the selective scan, attention, MoE, everything else).
ncu serialises the kernels, so the sum is GPU time without overlap, not the step's wall
time; it matched bench's step to ~2% on the H100 (docs/performance.md)."""
import argparse
import collections
import csv
import sys


def kind(name):
    if any(k in name for k in ("nvjet", "gemm", "splitK", "cutlass", "xmma")):
        return "cuBLAS products"
    if name.startswith("float_to_bf16"):
        return "bf16 operand conversions"
    if "scan" in name:
        return "selective scan"
    if "attention" in name or name.startswith("stage_"):
        return "attention"
    if name.startswith("moe"):
        return "MoE routing, gather, combine"
    return "elementwise, norms, conv, loss, optimizer"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--steps", type=float, default=1.0, help="divide every time by this (steps profiled)")
    ap.add_argument("--top", type=int, default=30, help="kernels listed (default 30)")
    a = ap.parse_args()
    lines = open(a.csv, errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"Process ID"')), None)
    if start is None:
        sys.exit(f"{a.csv}: no per-kernel summary table (run ncu with --print-summary per-kernel --csv)")
    total = collections.defaultdict(float)
    calls = collections.Counter()
    for r in csv.DictReader(lines[start:]):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0}[r["Metric Unit"]]
        n = int(r["Invocations"].replace(",", ""))
        name = r["Kernel Name"].split("(")[0].replace("void ", "")[:90]
        total[name] += float(r["Average"].replace(",", "")) * n * unit / a.steps
        calls[name] += n
    if not total:
        sys.exit(f"{a.csv}: no gpu__time_duration.sum rows")
    grand = sum(total.values())
    print(f"{grand:.2f} ms of kernel time per step over {sum(calls.values()) / a.steps:.0f} launches")
    for name, t in sorted(total.items(), key=lambda x: -x[1])[:a.top]:
        print(f"{t:8.2f} ms {100 * t / grand:5.1f}%  {calls[name] / a.steps:6.0f} calls  "
              f"{1000 * t * a.steps / calls[name]:8.1f} us avg  {name}")
    by_kind = collections.defaultdict(float)
    for name, t in total.items():
        by_kind[kind(name)] += t
    print("\nper kind:")
    for k, t in sorted(by_kind.items(), key=lambda x: -x[1]):
        print(f"{t:8.2f} ms {100 * t / grand:5.1f}%  {k}")


if __name__ == "__main__":
    main()
