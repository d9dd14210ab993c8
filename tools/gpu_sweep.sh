#!/usr/bin/env bash
# gpu_sweep.sh — one experiments/ sweep on the GPU machine, in one device-tool call:
#   1. unpack libyaml and Check from .deps (tools/gpu_deps.sh; the call must carry .deps)
#   2. build train (Release) into build
#   3. run the sweep with the given arguments on the GPU, stopped after SWEEP_TIMEOUT
#      seconds (default 480) so the call ends inside the tool's 10-minute limit; an
#      interrupted point resumes from its last checkpoint when the sweep runs again
#   4. pack the sweep directory without its checkpoints (summaries, metrics, logs, resolved
#      configs) into $OUT/<sweep>.tar.gz: the tool brings back only files at most two
#      folders deep, 16 MiB each. Unpack it here under runs/sweeps and aggregate:
#        tar -xzf <files_at>/attention_ratio-small.tar.gz -C runs/sweeps
#        python3 experiments/aggregate.py runs/sweeps/attention_ratio-small
#
#   run(command="bash tools/gpu_sweep.sh attention_ratio --scale small --jobs 4", carry=[".deps"])
#
# On a machine with several GPUs the points are spread over all of them (--gpus, from
# nvidia-smi, unless given): give --jobs as points per GPU × GPUs. One H100 ran four
# 1600-step small points at once in ~5.5 minutes, so an 8-GPU kind (nvidia-h200-x8, when
# it is lent; its held time counts once for all eight GPUs) would run 32 in one call:
#   run(command="bash tools/gpu_sweep.sh attention_ratio --scale small --jobs 32 --steps 1600",
#       carry=[".deps"], kind="nvidia-h200-x8")
#
# Points that finished are skipped when the same sweep runs again with its directory
# carried (runs/sweeps/NAME); an unfinished point restarts, as its checkpoints stay there.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ $# -ge 1 ] || { echo "usage: bash tools/gpu_sweep.sh SWEEP [sweep options...]" >&2; exit 2; }
sweep=$1; shift
script=experiments/$sweep.sh
[ -f "$script" ] || { echo "gpu_sweep.sh: no $script" >&2; exit 2; }
out=${OUT:-$root/runs/gpu_sweep}
mkdir -p "$out"
limit=${SWEEP_TIMEOUT:-480}

source tools/gpu_deps.sh unpack
set +e
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
start=$SECONDS
{ cmake -S . -B build -DCMAKE_BUILD_TYPE=Release &&
  cmake --build build -j"${JOBS:-16}" --target train; } >"$out/build.log" 2>&1 ||
    { echo "build failed:"; tail -n 40 "$out/build.log"; exit 1; }
echo "built in $((SECONDS - start)) s"

# the sweep's own --out, or its default
dir=runs/sweeps/$sweep-tiny
prev=""
for a in "$@"; do
    [ "$prev" = --scale ] && dir=runs/sweeps/$sweep-$a
    [ "$prev" = --out ] && { dir=$a; break; }
    prev=$a
done

gpus=()
case " $* " in *" --gpus "*) ;; *)
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    [ "${n:-0}" -gt 1 ] && { gpus=(--gpus "$n"); echo "spreading the points over $n GPUs"; } ;;
esac
start=$SECONDS
timeout --signal=INT "$limit" bash "$script" --device cuda "${gpus[@]}" "$@" >"$out/sweep.log" 2>&1
rc=$?
echo "sweep rc $rc after $((SECONDS - start)) s (limit $limit s; 124 = stopped by the limit)"
grep -E "finished|FAILED|budget" "$out/sweep.log" | sed 's/^/  /'
parent=$(dirname "$dir") base=$(basename "$dir")
tar -czf "$out/$base.tar.gz" --exclude="*.h5" --exclude=latest -C "$parent" "$base" && ls -la "$out/$base.tar.gz"
exit $rc
