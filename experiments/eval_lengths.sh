#!/usr/bin/env bash
# eval_lengths.sh — scores one trained run at several context lengths in one call, and
# for passkey runs at several needle depths; for text runs reports held-out bits per byte.
#
#   experiments/eval_lengths.sh RUN_DIR [--seq-lens 256,512,1024,2048,4096]
#                               [--depths 0,0.25,0.5,0.75,1] [--examples N]
#
# Each (depth) is one `eval` call scoring every length (the model is built once for the
# longest); results go to RUN_DIR/eval/<name>.json and a markdown table to stdout:
#   passkey:  accuracy per depth (rows) × length (columns)
#   text:     held-out bits per byte per length (task.split=heldout: the corpus's last 10%;
#             bpb = mean cross-entropy in nats / ln 2, every byte scored)
#   others:   accuracy per length
# Example: train at 256, test at 256…4096:
#   train --set task.name=passkey --set task.seq_len=256 ... --run-dir runs/passkey
#   experiments/eval_lengths.sh runs/passkey --seq-lens 256,512,1024,2048,4096
set -euo pipefail
BRAID_ROOT=$(cd "$(dirname "$0")/.." && pwd)
EVAL=${EVAL:-$BRAID_ROOT/build/eval}
PYTHON=${PYTHON:-python3}
RUN=""; LENS=""; DEPTHS="0,0.25,0.5,0.75,1"; EXAMPLES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seq-lens) LENS=${2:?}; shift 2 ;;
        --depths) DEPTHS=${2:?}; shift 2 ;;
        --examples) EXAMPLES=(--examples "${2:?}"); shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "eval_lengths.sh: unknown option '$1' (see --help)" >&2; exit 1 ;;
        *) RUN=$1; shift ;;
    esac
done
[ -n "$RUN" ] && [ -f "$RUN/config.yaml" ] || { echo "eval_lengths.sh: give a run directory (with config.yaml)" >&2; exit 1; }
task=$(sed -n 's/^  name: "\{0,1\}\([a-z_]*\)"\{0,1\}.*/\1/p' "$RUN/config.yaml" | head -n 1)
mkdir -p "$RUN/eval"
lens=(); [ -n "$LENS" ] && lens=(--seq-lens "$LENS")
case "$task" in
    passkey)
        for d in ${DEPTHS//,/ }; do
            "$EVAL" --checkpoint "$RUN" "${lens[@]}" "${EXAMPLES[@]}" --set task.needle_depth="$d" \
                --json "$RUN/eval/depth$d.json" >/dev/null
        done ;;
    text) "$EVAL" --checkpoint "$RUN" "${lens[@]}" "${EXAMPLES[@]}" --set task.split=heldout \
              --json "$RUN/eval/heldout.json" >/dev/null ;;
    *) "$EVAL" --checkpoint "$RUN" "${lens[@]}" "${EXAMPLES[@]}" --json "$RUN/eval/lengths.json" >/dev/null ;;
esac
"$PYTHON" - "$RUN/eval" "$task" <<'PY'
import glob, json, math, os, sys
folder, task = sys.argv[1], sys.argv[2]
rows = []
for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    name = os.path.basename(path)[:-5]
    if task == "passkey" and not name.startswith("depth"): continue
    if task == "text" and name != "heldout": continue
    if task not in ("passkey", "text") and name != "lengths": continue
    res = json.load(open(path))["results"]
    rows.append((name, {r["seq_len"]: r for r in res}))
lens = sorted({L for _, r in rows for L in r})
what = "held-out bits per byte" if task == "text" else "accuracy (%)"
print(f"{task}: {what} by evaluation length")
print("| " + " | ".join(["depth" if task == "passkey" else "split"] + [f"T={L}" for L in lens]) + " |")
print("|" + "---|" * (len(lens) + 1))
for name, r in sorted(rows, key=lambda x: float(x[0][5:]) if x[0].startswith("depth") else 0):
    cell = (lambda e: f"{e['loss'] / math.log(2):.3f}") if task == "text" else (lambda e: f"{100 * e['accuracy']:.1f}")
    print("| " + " | ".join([name.replace("depth", "")] + [cell(r[L]) if L in r else "–" for L in lens]) + " |")
PY
