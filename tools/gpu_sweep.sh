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
#
# Several sweeps at once, separated by --and, each with its own options, all running
# concurrently on the GPU(s) (one GPU is far from busy with one small point): the grid
# variables are per sweep (RATIOS for attention_ratio, PATTERNS for mixer_kinds, MIXERS
# for moe_vs_dense), so one environment serves them all:
#   RATIOS="0 0.5" PATTERNS=MWMWMWMW MIXERS=MMAMMMAM SEQ_LENS=256 KV_PAIRS=32 \
#   bash tools/gpu_sweep.sh attention_ratio --scale small --steps 1600 --jobs 2 \
#       --and mixer_kinds --scale small --steps 1600 --jobs 1 \
#       --and moe_vs_dense --scale small --steps 1600 --jobs 1
# Each sweep's directory comes back as its own tarball. On several GPUs each sweep's
# round-robin starts where the previous sweeps' first points end (--gpu-offset; see below).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
usage="usage: bash tools/gpu_sweep.sh SWEEP [sweep options...] [--and SWEEP [options...]]..."
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
out=${OUT:-$root/runs/gpu_sweep}
mkdir -p "$out"
limit=${SWEEP_TIMEOUT:-480}

# split the arguments at --and: groups[i] holds sweep i's name and options (one string
# per group, each argument %q-quoted so spaces and regexes survive)
groups=() cur=""
for a in "$@"; do
    if [ "$a" = --and ]; then groups+=("$cur"); cur=""; else cur+=" $(printf '%q' "$a")"; fi
done
groups+=("$cur")
for g in "${groups[@]}"; do
    eval "set -- $g"
    [ $# -ge 1 ] || { echo "gpu_sweep.sh: an empty sweep around --and; $usage" >&2; exit 2; }
    [ -f "experiments/$1.sh" ] || { echo "gpu_sweep.sh: no experiments/$1.sh" >&2; exit 2; }
done

source tools/gpu_deps.sh unpack
set +e
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
start=$SECONDS
{ cmake -S . -B build -DCMAKE_BUILD_TYPE=Release &&
  cmake --build build -j"${JOBS:-16}" --target train; } >"$out/build.log" 2>&1 ||
    { echo "build failed:"; tail -n 40 "$out/build.log"; exit 1; }
echo "built in $((SECONDS - start)) s"

n_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
dirs=() pids=() logs=() names=()
# Where the next sweep's round-robin starts (its --gpu-offset, mod its GPU count): the sum
# of the earlier sweeps' --jobs. The sweeps start together and each puts its first --jobs
# points on consecutive GPUs from its offset, so the first points of all the sweeps spread
# over the GPUs as one sweep of all of them would. Offsets 0, 1, 2, … would not: a sweep
# with --jobs 2 would share its second GPU with the next sweep's first point.
first_gpu=0
start=$SECONDS
for i in "${!groups[@]}"; do
    eval "set -- ${groups[$i]}"
    sweep=$1; shift
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
        [ "${n_gpus:-0}" -gt 1 ] && { gpus=(--gpus "$n_gpus"); echo "$sweep: spreading its points over $n_gpus GPUs"; } ;;
    esac
    # its --jobs (absent: lib.sh's default, cores/2), its GPU count, and whether it sets its
    # own --gpu-offset (which then stands)
    jobs=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 )) sweep_gpus=$n_gpus own_offset=0 prev=""
    for a in "$@"; do
        case $prev in
            --jobs) jobs=$a ;;
            --gpus) sweep_gpus=$a ;;
            --gpu-offset) own_offset=1 ;;
        esac
        prev=$a
    done
    offset=()
    if [[ $jobs =~ ^[1-9][0-9]*$ && $sweep_gpus =~ ^[1-9][0-9]*$ ]]; then   # (else lib.sh refuses them)
        k=$((first_gpu % sweep_gpus))
        if [ "$own_offset" = 0 ] && [ "$k" -gt 0 ]; then
            offset=(--gpu-offset "$k")
            echo "$sweep: its round-robin starts at GPU $k, after the earlier sweeps' first points"
        fi
        first_gpu=$((first_gpu + jobs))
    fi
    log=$out/sweep.log
    [ ${#groups[@]} -gt 1 ] && log=$out/sweep-$i-$sweep.log
    timeout --signal=INT "$limit" bash "experiments/$sweep.sh" --device cuda "${gpus[@]}" "${offset[@]}" "$@" >"$log" 2>&1 &
    pids+=($!) dirs+=("$dir") logs+=("$log") names+=("$sweep")
done
rc=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    r=$?
    [ $r -ne 0 ] && rc=$r
    echo "${names[$i]}: rc $r after $((SECONDS - start)) s (limit $limit s; 124 = stopped by the limit)"
    grep -E "finished|FAILED|budget" "${logs[$i]}" | sed 's/^/  /'
done
for dir in $(printf '%s\n' "${dirs[@]}" | sort -u); do
    [ -d "$dir" ] || continue
    parent=$(dirname "$dir") base=$(basename "$dir")
    tar -czf "$out/$base.tar.gz" --exclude="*.h5" --exclude=latest -C "$parent" "$base" && ls -la "$out/$base.tar.gz"
done
exit $rc
