#!/usr/bin/env python3
"""test_planted_bugs_apply.py — every planted bug in tools/gpu_*.sh still applies.

The GPU scripts' --mutants plant known bugs with sed, one at a time, and expect the CUDA
tests to catch each (tools/gpu_lib.sh, `mutant`). A bug whose sed expression no longer
matches the code it targets (the line was rewritten) only shows as NOT APPLIED on the GPU
machine, whose time is scarce; this finds it here, without a GPU: for each
`mutant FILE 'SED' "WHAT"` it runs sed on src/cuda/FILE and requires the output to differ
from the file and sed to succeed. It also fails a script that holds no mutant at all (the
pattern below would then have silently stopped matching the scripts)."""
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MUTANT = re.compile(r"""mutant\s+(\S+)\s+'([^']*)'\s+"([^"]*)\"""")
# the scripts that plant bugs (gpu_check.sh and gpu_scan_profile.sh plant none)
EXPECTED = ["gpu_test.sh", "gpu_scan_test.sh", "gpu_attention_test.sh", "gpu_bf16_test.sh"]


def main():
    failures, checked = [], 0
    scripts = {os.path.basename(p): p for p in glob.glob(os.path.join(ROOT, "tools", "gpu_*.sh"))}
    for name in EXPECTED:
        if name not in scripts:
            failures.append(f"tools/{name}: missing")
            continue
        text = open(scripts[name], encoding="utf-8").read().replace("\\\n", " ")
        found = MUTANT.findall(text)
        if not found:
            failures.append(f"tools/{name}: no `mutant FILE 'SED' \"WHAT\"` line found")
        for target, expr, what in found:
            path = os.path.normpath(os.path.join(ROOT, "src", "cuda", target))
            if not os.path.exists(path):
                failures.append(f"tools/{name}: \"{what}\": no file {path}")
                continue
            original = open(path, encoding="utf-8").read()
            run = subprocess.run(["sed", expr, path], capture_output=True, text=True)
            checked += 1
            if run.returncode != 0:
                failures.append(f"tools/{name}: \"{what}\": sed failed: {run.stderr.strip()}")
            elif run.stdout == original:
                failures.append(f"tools/{name}: \"{what}\": does not apply to {os.path.relpath(path, ROOT)}")
    for f in failures:
        print("FAIL", f)
    print(f"{checked} planted bugs checked in {len(EXPECTED)} scripts, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
