#!/usr/bin/env python3
"""scan_knockouts.py — knock one part out of the selective scan's backward kernel, to time
what is left (tools/gpu_scan_knockouts.sh; docs/performance.md, "What the scan's backward
spends its time on"). A knocked-out kernel computes wrong gradients: its timings bound what
removing or halving that part could gain, nothing more.

  scan_knockouts.py FILE NAME[,NAME...]   rewrite FILE (a copy of src/cuda/scan.cu) in place
  scan_knockouts.py --check               every knockout still applies to src/cuda/scan.cu
                                          (CTest test_scan_knockouts_apply, no GPU needed)
  scan_knockouts.py --list                the names and what each removes

Each knockout is a list of (text, replacement) pairs; every text must occur in the file."""
import os
import sys

KNOCKOUTS = {
    "base": ("nothing (the kernel as it is)", []),
    "noshfl": ("the shuffles of the dB/dC butterfly (its selects and adds stay; the forward's y, which shares "
               "butterfly_reduce_scatter, loses them too, but only the backward is timed)", [
        ("v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);", "v[i] = keep + send;"),
        ("v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);", "v[0] += v[0];"),
        ("v[i] += __shfl_xor_sync(0xffffffffu, v[i + m], o);", "v[i] += v[i + m];"),
    ]),
    "nobutterfly": ("the whole dB/dC butterfly over the warp's channels", [
        ("butterfly_reduce_scatter<V, G, 32, S::SORTED ? 2 : 0>(v, lane);", ""),
    ]),
    "nosum_n": ("the shuffles summing dδ and du over a channel's lanes", [
        ("r = keep + __shfl_xor_sync(0xffffffffu, send, 1);", "r = keep + send;"),
        ("for (int off = 2; off < G; off *= 2) r += __shfl_xor_sync(0xffffffffu, r, off);", ""),
    ]),
    "noex2_reverse": ("every ex2 of the reverse pass's decays (each becomes the product δ·A), those that make "
                      "the odd steps' states from the even ones included (decays_of serves both)", [
        ("for (int i = 0; i < SCAN_NPT; i++) decay[i] = ex2(dt * A2[i]);",
         "for (int i = 0; i < SCAN_NPT; i++) decay[i] = dt * A2[i];"),
    ]),
    "nodbc_store": ("the per-step stores of the warps' dB/dC sums to shared memory", [
        ("if (writer) {\n                    float *out", "if (0) {\n                    float *out"),
    ]),
    "nowriteout": ("the sub-tile's write-out: du, dδ added into global memory, dB/dC partials summed and stored", [
        ("auto put_du_dd = [&](int s, int jj, size_t at) {", "auto put_du_dd = [&](int s, int jj, size_t at) {\n                    if (s >= 0) return;"),
        ("auto put_dBC = [&](int s, int m, size_t at) {", "auto put_dBC = [&](int s, int m, size_t at) {\n                    if (s >= 0) return;"),
    ]),
    "nostates_store": ("the recompute's stores of the states to shared memory (the reverse pass reads stale ones)", [
        ("if (!S::HALF || (k & 1)) states[S::row(s + k + 1) * SCAN_THREADS + tid] = hs[k];", "(void)hs[k];"),
    ]),
}

SCAN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "cuda", "scan.cu")


def apply(text, names):
    for name in names:
        if name not in KNOCKOUTS:
            raise SystemExit(f"scan_knockouts.py: unknown knockout '{name}' (--list shows them)")
        for old, new in KNOCKOUTS[name][1]:
            if old not in text:
                raise SystemExit(f"scan_knockouts.py: knockout '{name}' no longer applies: "
                                 f"{old.strip()[:60]!r} not found")
            text = text.replace(old, new, 1)
    return text


def main(argv):
    if argv[1:] == ["--list"]:
        for name, (what, _) in KNOCKOUTS.items():
            print(f"{name:14s} {what}")
        return 0
    if argv[1:] == ["--check"]:
        original = open(SCAN, encoding="utf-8").read()
        for name in KNOCKOUTS:
            changed = apply(original, [name])
            if name != "base" and changed == original:
                raise SystemExit(f"scan_knockouts.py: knockout '{name}' changes nothing")
        print(f"{len(KNOCKOUTS)} scan knockouts apply to src/cuda/scan.cu")
        return 0
    if len(argv) != 3:
        print(__doc__)
        return 2
    path = argv[1]
    text = open(path, encoding="utf-8").read()
    open(path, "w", encoding="utf-8").write(apply(text, argv[2].split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
