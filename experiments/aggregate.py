#!/usr/bin/env python3
"""aggregate.py — turns sweep run directories into a CSV, a markdown table and PNG plots.

    python3 experiments/aggregate.py SWEEP_DIR [SWEEP_DIR ...] [--csv RESULTS_CSV ...] [--name SWEEP] [--out DIR]

A sweep directory holds one directory per point (written by experiments/*.sh), each with
config.yaml (the resolved config), summary.json (written by the trainer when the run
finished: params, activation_bytes, flops_per_token, tokens_per_s, wall time, final
evaluation per sequence length) and metrics.jsonl. activation_bytes (the activations'
memory: arena and scratch) is newer than the other fields: runs without it, and CSVs
written before it, show "–" in its column, and a table or CSV none of whose runs has it
leaves the column out. Points without summary.json (still running or
failed) are listed and left out. Seeds of one point (names ending -s<seed>) are
averaged; the table shows the mean and, with several seeds, the min–max range.

--csv FILE (repeatable) reads a results.csv written by an earlier run of this script back
into the same run records, for runs whose directories are no longer at hand, so that new
sweep directories and earlier results are aggregated together; with --csv no SWEEP_DIR is
needed (then --out is). A run is identified by (sweep, point, seed) — sweep is the sweep
directory's name, or the CSV's sweep column — and is counted once: a run present both as a
directory and in a CSV is taken from the directory, one present in several CSVs from the
first of them; each run left out so is reported on stderr. --name SWEEP gives every run,
from directories and CSVs alike, that sweep name before that comparison (the table heading
and plot titles), e.g. to fold a second-seed sweep into an earlier sweep's results.

Writes into --out (default: SWEEP_DIR/report of the first one):
    results.csv              one row per (run, evaluation length)
    results.md               accuracy per architecture, training length and kv pairs
    acc_vs_seq_len.png       accuracy against evaluation length, per architecture
    acc_vs_kv_pairs.png      accuracy (at the training length) against kv pairs
    acc_vs_tokens_per_s.png  accuracy against measured training tokens/s
    acc_vs_params.png        accuracy against parameter count
Needs numpy and matplotlib (Debian: python3-numpy python3-matplotlib; on a machine
whose first python3 lacks them, run it with /usr/bin/python3).
"""
import argparse
import csv
import json
import os
import re
import sys
from collections import defaultdict

import numpy as np
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_config(path):
    """The few keys the report needs from a resolved config.yaml (two-level keys),
    parsed by indentation so PyYAML is not required."""
    values, stack = {}, []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip())
            key, _, value = line.strip().partition(":")
            while stack and stack[-1][0] >= indent:
                stack.pop()
            if value.strip():
                dotted = ".".join([k for _, k in stack] + [key])
                values[dotted] = value.strip().strip('"')
            else:
                stack.append((indent, key))
    return values


def arch_label(point, cfg):
    """The point's name without its grid suffix, plus the mixer/FFN pattern when the
    name does not already say it: 'ratio0.25 (MMAM)', 'jamba (MMAM/DEDE)'."""
    prefix = re.sub(r"-T\d+-kv\d+$", "", point)
    pattern, ffn = cfg.get("model.pattern", "?"), cfg.get("model.ffn", "")
    shape = pattern + ("/" + ffn if ffn and set(ffn) != {"D"} else "")
    return prefix if prefix == shape else f"{prefix} ({shape})"


def load_runs(sweep_dirs):
    runs, unfinished = [], []
    for sweep_dir in sweep_dirs:
        sweep = os.path.basename(os.path.normpath(sweep_dir))
        for name in sorted(os.listdir(sweep_dir)):
            run_dir = os.path.join(sweep_dir, name)
            if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
                continue
            summary_path = os.path.join(run_dir, "summary.json")
            if not os.path.isfile(summary_path):
                unfinished.append(run_dir)
                continue
            with open(summary_path) as f:
                summary = json.load(f)
            cfg = read_config(os.path.join(run_dir, "config.yaml"))
            m = re.match(r"(.*)-s(\d+)$", name)
            point, seed = (m.group(1), int(m.group(2))) if m else (name, int(cfg.get("train.seed", 0)))
            runs.append({
                "sweep": sweep, "point": point, "arch": arch_label(point, cfg), "seed": seed,
                "pattern": cfg.get("model.pattern", ""), "ffn": cfg.get("model.ffn", ""),
                "attention_fraction": cfg.get("model.pattern", "").count("A") / max(1, len(cfg.get("model.pattern", ""))),
                "task": summary.get("task", cfg.get("task.name", "")),
                "train_seq_len": int(cfg.get("task.seq_len", 0)), "kv_pairs": int(cfg.get("task.num_kv_pairs", 0)),
                "params": summary["params"], "activation_bytes": summary.get("activation_bytes"),
                "flops_per_token": summary["flops_per_token"],
                "tokens_per_s": summary["tokens_per_s"], "tokens": summary["tokens"], "steps": summary["steps"],
                "train_seconds": summary["train_seconds"], "wall_seconds": summary["wall_seconds"],
                "eval": {e["seq_len"]: e for e in summary["eval"]},
            })
    return runs, unfinished


CSV_FIELDS = ["sweep", "point", "arch", "seed", "pattern", "ffn", "attention_fraction", "task", "train_seq_len",
              "kv_pairs", "eval_seq_len", "accuracy", "loss", "params", "flops_per_token", "tokens_per_s", "tokens",
              "steps", "train_seconds", "wall_seconds"]
CSV_OPTIONAL_FIELDS = ["activation_bytes"]   # written where a run has it; may be absent or empty
CSV_TEXT_FIELDS = {"sweep", "point", "arch", "pattern", "ffn", "task"}
CSV_EVAL_FIELDS = {"eval_seq_len", "accuracy", "loss"}


def csv_number(text):
    """A number as write_csv wrote it: an int where summary.json had an int ('9830656'),
    else a float ('58884100.0', '0.000469'), so a record read back writes the same CSV."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def load_csv(path):
    """The run records of a results.csv written by write_csv: one per (sweep, point, seed),
    its rows' evaluation lengths gathered into "eval" as load_runs builds it."""
    runs = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in CSV_FIELDS if k not in (reader.fieldnames or [])]
        if missing:
            sys.exit(f"aggregate.py: {path}: not a results.csv of this script (no column {', '.join(missing)})")
        for line, row in enumerate(reader, start=2):
            try:
                values = {k: (row[k] if k in CSV_TEXT_FIELDS else csv_number(row[k])) for k in CSV_FIELDS}
                values.update({k: csv_number(row[k]) if row.get(k) else None for k in CSV_OPTIONAL_FIELDS})
            except (TypeError, ValueError):
                sys.exit(f"aggregate.py: {path}:{line}: a field that should be a number is not: {row}")
            key = (values["sweep"], values["point"], values["seed"])
            record = {k: v for k, v in values.items() if k not in CSV_EVAL_FIELDS}
            if key not in runs:
                runs[key] = dict(record, eval={})
            elif any(runs[key][k] != v for k, v in record.items()):
                sys.exit(f"aggregate.py: {path}:{line}: run {key} has rows that disagree outside the evaluation columns")
            L = values["eval_seq_len"]
            if L in runs[key]["eval"]:
                sys.exit(f"aggregate.py: {path}:{line}: run {key} has two rows for evaluation length {L}")
            runs[key]["eval"][L] = {"seq_len": L, "accuracy": values["accuracy"], "loss": values["loss"]}
    return list(runs.values())


def merge_runs(dir_runs, csv_runs, name=None):
    """The union of the runs from directories and from CSVs ([(path, runs)]), each run
    (sweep, point, seed) once: from its directory when there is one, else from the first
    CSV that has it. With name, every run is first given that sweep name. Returns the runs,
    ordered by (sweep, point, seed) as a single sweep directory's are (so an earlier
    results.csv keeps its row order and the new runs' rows land beside their point's), and
    [(path, key)] of those left out as duplicates."""
    def key(r):
        return (r["sweep"], r["point"], r["seed"])

    if name is not None:
        dir_runs = [dict(r, sweep=name) for r in dir_runs]
        csv_runs = [(p, [dict(r, sweep=name) for r in rs]) for p, rs in csv_runs]
    runs, seen, dropped = list(dir_runs), {key(r) for r in dir_runs}, []
    for path, rs in csv_runs:
        for r in rs:
            if key(r) in seen:
                dropped.append((path, key(r)))
                continue
            seen.add(key(r))
            runs.append(r)
    runs.sort(key=key)   # (stable: directory runs of one sweep, point and seed keep their order)
    return runs, dropped


def write_csv(runs, path):
    optional = [k for k in CSV_OPTIONAL_FIELDS if any(r.get(k) is not None for r in runs)]
    fields = CSV_FIELDS + optional
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in runs:
            for L, e in sorted(r["eval"].items()):
                row = {k: r[k] for k in fields if r.get(k) is not None}
                row.update(eval_seq_len=L, accuracy=e["accuracy"], loss=e["loss"])
                w.writerow(row)


def group(runs):
    """(sweep, arch, train_seq_len, kv_pairs) → the runs of its seeds."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["sweep"], r["arch"], r["train_seq_len"], r["kv_pairs"])].append(r)
    return groups


def fmt_acc(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = 100 * np.mean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    lo, hi = 100 * min(values), 100 * max(values)
    # one decimal where whole percents would hide the spread ("0–0" near chance,
    # "100–100" for 99.5 and 99.6)
    digits = 1 if hi < 10 or round(lo) == round(hi) else 0
    return f"{mean:.1f} ({lo:.{digits}f}–{hi:.{digits}f})"


def fmt_mib(runs):
    """The activations' memory of a point's seeds in MiB (their mean; the same config gives
    the same arena), or '–' where no run recorded it."""
    values = [r["activation_bytes"] for r in runs if r.get("activation_bytes") is not None]
    return f"{np.mean(values) / 2**20:,.1f}" if values else "–"


def write_markdown(runs, path):
    groups = group(runs)
    lines = []
    for sweep in sorted({k[0] for k in groups}):
        keys = sorted((k for k in groups if k[0] == sweep),
                      key=lambda k: (k[2], k[3], groups[k][0]["attention_fraction"], k[1]))
        memory = any(r.get("activation_bytes") is not None for k in keys for r in groups[k])
        lines.append(f"### {sweep}\n")
        lines.append("Accuracy (%) on held-out MQAR queries: the mean over seeds (min–max when there are several). "
                     "'×1' is the training length; '×2', '×4' evaluate the same model on longer sequences."
                     + (" 'activations MiB': the activation arena and scratch the run allocated for its batch "
                        "shapes (training and evaluation)." if memory else "") + "\n")
        header = ["architecture", "train T", "kv pairs", "seeds", "acc ×1", "acc ×2", "acc ×4", "params",
                  "MFLOP/token", "tokens/s"] + (["activations MiB"] if memory else [])
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for k in keys:
            rs = groups[k]
            T = k[2]
            accs = [fmt_acc([r["eval"].get(m * T, {}).get("accuracy") for r in rs]) for m in (1, 2, 4)]
            lines.append("| " + " | ".join([k[1], str(T), str(k[3]), str(len(rs))] + accs + [
                f"{int(np.mean([r['params'] for r in rs])):,}",
                f"{np.mean([r['flops_per_token'] for r in rs]) / 1e6:.2f}",
                f"{np.mean([r['tokens_per_s'] for r in rs]):,.0f}"] + ([fmt_mib(rs)] if memory else [])) + " |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def style_for(labels):
    cmap = plt.get_cmap("tab10")
    return {a: (cmap(i % 10), "osD^v<>p*h"[i % 10]) for i, a in enumerate(sorted(labels))}


def plot_acc_vs_seq_len(runs, path):
    groups = group(runs)
    panels = sorted({(k[0], k[3]) for k in groups})
    styles = style_for({k[1] for k in groups})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (sweep, kv) in zip(axes[0], panels):
        for k in sorted(g for g in groups if g[0] == sweep and g[3] == kv):
            rs = groups[k]
            lens = sorted({L for r in rs for L in r["eval"]})
            acc = [np.mean([r["eval"][L]["accuracy"] for r in rs if L in r["eval"]]) for L in lens]
            color, marker = styles[k[1]]
            ax.plot(lens, acc, marker=marker, color=color, label=f"{k[1]}, train T={k[2]}")
            ax.axvline(k[2], color="0.85", lw=0.8, zorder=0)
        ax.set_xscale("log", base=2)
        ax.set(title=f"{sweep}: {kv} kv pairs", xlabel="evaluation sequence length", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_acc_vs_kv(runs, path):
    groups = group(runs)
    panels = sorted({(k[0], k[2]) for k in groups})
    styles = style_for({k[1] for k in groups})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (sweep, T) in zip(axes[0], panels):
        for arch in sorted({k[1] for k in groups if k[0] == sweep and k[2] == T}):
            kvs = sorted(k[3] for k in groups if k[0] == sweep and k[2] == T and k[1] == arch)
            acc = [np.mean([r["eval"][T]["accuracy"] for r in groups[(sweep, arch, T, kv)]]) for kv in kvs]
            color, marker = styles[arch]
            ax.plot(kvs, acc, marker=marker, color=color, label=arch)
        ax.set(title=f"{sweep}: train and eval T={T}", xlabel="kv pairs", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_acc_vs_cost(runs, key, xlabel, path):
    styles = style_for({r["arch"] for r in runs})
    fig, ax = plt.subplots(figsize=(6, 4.5))
    seen = set()
    for r in runs:
        e = r["eval"].get(r["train_seq_len"])
        if not e:
            continue
        color, marker = styles[r["arch"]]
        label = r["arch"] if r["arch"] not in seen else None
        seen.add(r["arch"])
        ax.scatter(r[key], e["accuracy"], color=color, marker=marker, label=label)
        ax.annotate(f"kv{r['kv_pairs']} T{r['train_seq_len']}", (r[key], e["accuracy"]), fontsize=6,
                    textcoords="offset points", xytext=(3, 3))
    ax.set(xlabel=xlabel, ylabel="accuracy at the training length", ylim=(-0.02, 1.05))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="*", metavar="SWEEP_DIR",
                        help="sweep directories (runs/sweeps/<sweep>-<scale>); none needed with --csv")
    parser.add_argument("--csv", action="append", default=[], metavar="FILE",
                        help="a results.csv of an earlier aggregation, read back as runs (repeatable); a run "
                             "(sweep, point, seed) present both as a directory and in a CSV is counted once, "
                             "from the directory; one in several CSVs once, from the first")
    parser.add_argument("--name", metavar="SWEEP",
                        help="give every run (directories and CSVs) this sweep name, before duplicates are "
                             "removed: one table and one set of plot panels under this heading")
    parser.add_argument("--out", help="output directory (default: <first sweep dir>/report; required without one)")
    args = parser.parse_args(argv)
    if not args.sweep_dirs and not args.csv:
        parser.error("give at least one SWEEP_DIR or --csv FILE")
    if not args.sweep_dirs and not args.out:
        parser.error("--out is required when there is no SWEEP_DIR")
    for d in args.sweep_dirs:
        if not os.path.isdir(d):
            sys.exit(f"aggregate.py: {d}: not a directory")
    for p in args.csv:
        if not os.path.exists(p) or os.path.isdir(p):   # (a pipe, as from <(git show …), is fine)
            sys.exit(f"aggregate.py: {p}: no such file")
    runs, unfinished = load_runs(args.sweep_dirs)
    for d in unfinished:
        print(f"aggregate.py: {d}: no summary.json (running, interrupted or failed); left out", file=sys.stderr)
    if args.csv or args.name is not None:
        runs, dropped = merge_runs(runs, [(p, load_csv(p)) for p in args.csv], args.name)
        for path, (sweep, point, seed) in dropped:
            print(f"aggregate.py: {path}: {sweep} {point} seed {seed} is already in a sweep directory or an "
                  f"earlier --csv; this copy left out", file=sys.stderr)
    if not runs:
        sys.exit("aggregate.py: no finished runs (no summary.json) in " + ", ".join(args.sweep_dirs + args.csv))
    out = args.out or os.path.join(args.sweep_dirs[0], "report")
    os.makedirs(out, exist_ok=True)
    write_csv(runs, os.path.join(out, "results.csv"))
    write_markdown(runs, os.path.join(out, "results.md"))
    plot_acc_vs_seq_len(runs, os.path.join(out, "acc_vs_seq_len.png"))
    plot_acc_vs_kv(runs, os.path.join(out, "acc_vs_kv_pairs.png"))
    plot_acc_vs_cost(runs, "tokens_per_s", "measured training tokens/s", os.path.join(out, "acc_vs_tokens_per_s.png"))
    plot_acc_vs_cost(runs, "params", "parameters", os.path.join(out, "acc_vs_params.png"))
    print(f"aggregate.py: {len(runs)} runs → {out}/results.csv, results.md and 4 plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
