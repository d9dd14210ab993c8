#!/usr/bin/env python3
"""inspect_checkpoint.py — prints what a braid checkpoint (HDF5) holds.

    python3 tools/inspect_checkpoint.py CHECKPOINT.h5            attributes, train state,
                                                                 config, every tensor's stats
    python3 tools/inspect_checkpoint.py CHECKPOINT.h5 --tensor layers.0.self_attn.q_proj.weight
    python3 tools/inspect_checkpoint.py CHECKPOINT.h5 --no-config

For each tensor under /params and /optimizer/{m,v}: name, shape, mean, std, min, max.
`--tensor NAME` prints one tensor's values (a /params name, or a full path such as
optimizer/m/embed_tokens.weight). Needs numpy and h5py only. Layout: docs/checkpoints.md.
"""
import argparse
import sys

import h5py
import numpy as np


def tensor_rows(group, prefix):
    rows = []
    for name in sorted(group.keys()):
        item = group[name]
        if isinstance(item, h5py.Dataset):
            a = np.asarray(item[()], dtype=np.float64)
            rows.append((prefix + name, item.shape, a.mean(), a.std(), a.min(), a.max()))
    return rows


def print_table(rows):
    width = max([len(r[0]) for r in rows] + [4])
    print("%-*s  %-14s %12s %12s %12s %12s" % (width, "name", "shape", "mean", "std", "min", "max"))
    for name, shape, mean, std, lo, hi in rows:
        print("%-*s  %-14s %12.5g %12.5g %12.5g %12.5g" % (width, name, str(tuple(shape)), mean, std, lo, hi))


def main():
    ap = argparse.ArgumentParser(description="Print a braid checkpoint's attributes, config and tensors.")
    ap.add_argument("checkpoint")
    ap.add_argument("--tensor", help="print one tensor (a /params name or a full path)")
    ap.add_argument("--no-config", action="store_true", help="do not print the config text")
    args = ap.parse_args()
    try:
        f = h5py.File(args.checkpoint, "r")
    except OSError as e:
        print("inspect_checkpoint.py: cannot open '%s': %s" % (args.checkpoint, e), file=sys.stderr)
        return 1
    with f:
        if args.tensor:
            path = args.tensor if args.tensor in f else "params/" + args.tensor
            if path not in f or not isinstance(f[path], h5py.Dataset):
                print("inspect_checkpoint.py: no tensor '%s' in '%s'" % (args.tensor, args.checkpoint), file=sys.stderr)
                return 1
            a = f[path][()]
            np.set_printoptions(threshold=sys.maxsize, linewidth=120)
            print("%s  shape %s  dtype %s" % (path, a.shape, a.dtype))
            print(a)
            return 0
        print("file %s" % args.checkpoint)
        for key in sorted(f.attrs.keys()):
            if key != "config":
                print("  %s = %s" % (key, f.attrs[key]))
        if "train_state" in f:
            print("train_state:")
            for key in sorted(f["train_state"].keys()):
                print("  %s = %s" % (key, f["train_state"][key][()]))
        if "config" in f.attrs and not args.no_config:
            print("config:")
            for line in str(f.attrs["config"]).splitlines():
                print("  " + line)
        rows = []
        if "params" in f:
            rows += tensor_rows(f["params"], "")
        for moment in ("m", "v"):
            if "optimizer/" + moment in f:
                rows += tensor_rows(f["optimizer/" + moment], "optimizer/%s/" % moment)
        if rows:
            n_params = sum(int(np.prod(r[1])) for r in rows if not r[0].startswith("optimizer/"))
            print("tensors (%d parameters):" % n_params)
            print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
