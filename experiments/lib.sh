# lib.sh — what every sweep script shares (sourced, not run): flags, the scale presets,
# parameter matching, and a runner that trains points in parallel and skips those done.
#
# A point is one training run in its own directory, $OUT/<name>/, holding config.yaml,
# metrics.jsonl, train.log, checkpoints/ and, when it finished, summary.json (written
# last by the trainer, atomically). A point with summary.json is skipped; one with a
# checkpoint but no summary was interrupted and is resumed (`train --resume`); one with
# neither is started afresh. So re-running an interrupted sweep continues it.

BRAID_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRAIN=${TRAIN:-$BRAID_ROOT/build/train}
PYTHON=${PYTHON:-python3}

usage_common() {
    cat <<USAGE
options:
  --device cpu|cuda   where each point trains (default cpu)
  --scale tiny|small  tiny: d_model 64, 4 blocks, short runs for a 2-core CPU;
                      small: d_model 256, 8 blocks, sized for one GPU (default tiny)
  --seeds N           seeds 1..N per point (default 1)
  --jobs J            points trained at once (default: cores/2, at least 1); each gets
                      cores/J threads
  --gpus G            spread the points over G GPUs of this machine (CUDA_VISIBLE_DEVICES
                      0..G-1, round-robin in launch order; default 1: whatever CUDA picks)
  --gpu-offset K      start that round-robin at GPU K mod G (default 0); tools/gpu_sweep.sh
                      gives sweeps that run at once different offsets, so that their first
                      points do not all land on GPU 0
  --steps N           override the scale's training steps
  --set KEY=VALUE     a config setting for every point (repeatable), applied after the
                      scale's presets and before the sweep's own settings, so the keys the
                      sweep varies keep the sweep's values; e.g. --set train.matmul_precision=tf32
  --out DIR           sweep directory (default runs/sweeps/<sweep>-<scale>)
  --only REGEX        run only the points whose name matches (grep -E)
  --dry-run           list the points and their commands, train nothing
  -h, --help          this help
Environment: TRAIN (the train binary), PYTHON; OOM_RETRIES, OOM_WAIT (a point that runs out
of GPU memory at start-up starts again OOM_WAIT s later, default 30, up to OOM_RETRIES
times, default 20).
Afterwards: \${PYTHON:-python3} experiments/aggregate.py OUT  (CSV, markdown, PNG plots)
USAGE
}

parse_common() {
    DEVICE=cpu; SCALE=tiny; SEEDS=1; JOBS=""; GPUS=1; GPU_OFFSET=0; STEPS=""; OUT=""; ONLY=""; DRY_RUN=0
    EXTRA_SETS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
            --scale) SCALE=${2:?--scale needs a value}; shift 2 ;;
            --seeds) SEEDS=${2:?--seeds needs a value}; shift 2 ;;
            --jobs) JOBS=${2:?--jobs needs a value}; shift 2 ;;
            --gpus) GPUS=${2:?--gpus needs a value}; shift 2 ;;
            --gpu-offset) GPU_OFFSET=${2:?--gpu-offset needs a value}; shift 2 ;;
            --steps) STEPS=${2:?--steps needs a value}; shift 2 ;;
            --out) OUT=${2:?--out needs a value}; shift 2 ;;
            --only) ONLY=${2:?--only needs a value}; shift 2 ;;
            --set)
                case "${2:-}" in
                    ?*=*) EXTRA_SETS+=("$2"); shift 2 ;;
                    *) echo "$SWEEP: --set needs KEY=VALUE, got '${2:-}'" >&2; exit 1 ;;
                esac ;;
            --dry-run) DRY_RUN=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) echo "$SWEEP: unknown option '$1' (see --help)" >&2; exit 1 ;;
        esac
    done
    case "$SCALE" in tiny|small) ;; *) echo "$SWEEP: --scale must be tiny or small, not '$SCALE'" >&2; exit 1 ;; esac
    case "$DEVICE" in cpu|cuda|auto) ;; *) echo "$SWEEP: --device must be cpu, cuda or auto, not '$DEVICE'" >&2; exit 1 ;; esac
    case "$SEEDS" in ''|*[!0-9]*|0) echo "$SWEEP: --seeds must be a positive integer" >&2; exit 1 ;; esac
    local cores; cores=$(nproc 2>/dev/null || echo 1)
    [ -n "$JOBS" ] || JOBS=$(( cores / 2 > 0 ? cores / 2 : 1 ))
    case "$JOBS" in ''|*[!0-9]*|0) echo "$SWEEP: --jobs must be a positive integer" >&2; exit 1 ;; esac
    local v
    for v in OOM_RETRIES OOM_WAIT; do
        case "${!v:-0}" in ''|*[!0-9]*) echo "$SWEEP: $v must be a non-negative integer (got '${!v}')" >&2; exit 1 ;; esac
    done
    case "$GPUS" in ''|*[!0-9]*|0) echo "$SWEEP: --gpus must be a positive integer" >&2; exit 1 ;; esac
    case "$GPU_OFFSET" in
        ''|*[!0-9]*) echo "$SWEEP: --gpu-offset must be a non-negative integer, not '$GPU_OFFSET'" >&2; exit 1 ;;
    esac
    GPU_OFFSET=$(( 10#$GPU_OFFSET % GPUS ))   # (10#: a leading 0 is not octal)
    THREADS=$(( cores / JOBS > 0 ? cores / JOBS : 1 ))
    [ -n "$OUT" ] || OUT=$BRAID_ROOT/runs/sweeps/$SWEEP-$SCALE
    [ -x "$TRAIN" ] || { echo "$SWEEP: $TRAIN not found; build first (cmake --build build)" >&2; exit 1; }
    scale_presets
}

# The scale presets. Every point shares these; a sweep varies the rest.
scale_presets() {
    if [ "$SCALE" = tiny ]; then
        D_MODEL=64; N_LAYERS=4; BATCH=32; DEFAULT_STEPS=600; EVAL_EXAMPLES=256; LR=3.0e-3; INIT_STD=0.06
        HEADS=2; VOCAB=256
    else
        D_MODEL=256; N_LAYERS=8; BATCH=64; DEFAULT_STEPS=4000; EVAL_EXAMPLES=1000; LR=1.0e-3; INIT_STD=0.03
        HEADS=4; VOCAB=8192
    fi
    STEPS=${STEPS:-$DEFAULT_STEPS}
    WARMUP=$(( STEPS / 10 ))
    # Settings of every point: Zoology-style MQAR training on the chosen device.
    BASE_SETS=(
        model.d_model=$D_MODEL model.init_std=$INIT_STD model.attention.n_heads=$HEADS
        model.attention.position=rope model.mamba.d_state=16 model.mamba.expand=2
        task.name=mqar task.vocab_size=$VOCAB
        train.device=$DEVICE train.steps=$STEPS train.batch_size=$BATCH train.lr=$LR
        train.warmup_steps=$WARMUP train.weight_decay=0.1 train.grad_clip=1.0
        train.log_every=50 train.eval_every=$STEPS train.eval_examples=$EVAL_EXAMPLES
        train.checkpoint_every=$(( STEPS / 4 )) train.keep_checkpoints=1 train.threads=$THREADS
    )
    BASE_SETS+=("${EXTRA_SETS[@]}")   # --set: after the presets, before each point's own
}

# params_of SET... — the parameter count of the model these settings build (one probe
# step into a scratch directory; summary.json carries the count).
params_of() {
    local probe; probe=$(mktemp -d)
    local args=() s
    for s in "${BASE_SETS[@]}" "$@" train.steps=1 train.warmup_steps=0 train.eval_examples=1 \
             train.checkpoint_every=0 train.threads=1 "train.run_dir=$probe"; do args+=(--set "$s"); done
    if ! "$TRAIN" --quiet "${args[@]}" >"$probe/log" 2>&1; then
        echo "$SWEEP: probing the parameter count failed:" >&2; cat "$probe/log" >&2; rm -rf "$probe"; return 1
    fi
    "$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["params"])' "$probe/summary.json"
    rm -rf "$probe"
}

# matched_hidden BUDGET SET... — the dense FFN hidden size (a multiple of 8) that brings
# the model these settings build closest to BUDGET parameters: parameters are linear in
# the hidden size, so two probes give the line.
matched_hidden() {
    local budget=$1; shift
    local p1 p2
    p1=$(params_of "$@" model.dense.hidden=64) || return 1
    p2=$(params_of "$@" model.dense.hidden=128) || return 1
    "$PYTHON" -c 'import sys; b,p1,p2=map(int,sys.argv[1:]); h=64+(b-p1)*64/(p2-p1); print(max(8,int(round(h/8))*8))' \
        "$budget" "$p1" "$p2"
}

POINT_NAMES=(); POINT_SETS=()
# add_point NAME SET... — queue one point per seed (NAME-s<seed>), with these settings
# on top of BASE_SETS.
add_point() {
    local name=$1; shift
    local seed
    for seed in $(seq 1 "$SEEDS"); do
        POINT_NAMES+=("$name-s$seed")
        POINT_SETS+=("$* train.seed=$seed")
    done
}

# run_one NAME "SETS" [GPU] — trains one point unless done; resumes an interrupted one. With
# GPU, on that device alone (run_one runs in its own background subshell: the export
# stays there).
run_one() {
    local name=$1 sets=$2 dir=$OUT/$1 on=""
    if [ -n "${3:-}" ]; then export CUDA_VISIBLE_DEVICES=$3; on=" on GPU $3"; fi
    if [ -f "$dir/summary.json" ]; then echo "[$SWEEP] $name: done, skipped"; return 0; fi
    local args=() s
    if [ -e "$dir/latest" ]; then
        args=(--resume "$dir")
        echo "[$SWEEP] $name: resuming the interrupted run$on"
    else
        rm -rf "$dir"; mkdir -p "$dir"
        for s in "${BASE_SETS[@]}" $sets "train.run_dir=$dir"; do args+=(--set "$s"); done
        echo "[$SWEEP] $name: training$on"
    fi
    local start; start=$(date +%s)
    local tries=0
    until "$TRAIN" "${args[@]}" >>"$dir/train.log" 2>&1; do
        # Out of GPU memory before its first checkpoint: the points beside it hold the
        # memory (a T 512 small point's arena was 24-30 GB before evaluation ran long
        # lengths at smaller batches, so three did not fit on 80 GB; now ~6-8 GB).
        # Start again once one of them may have finished, OOM_RETRIES times, OOM_WAIT s apart.
        if grep -q "out of GPU memory" "$dir/train.log" && [ ! -e "$dir/latest" ] &&
           [ "$tries" -lt "${OOM_RETRIES:-20}" ]; then
            tries=$((tries + 1))
            echo "[$SWEEP] $name: out of GPU memory at start-up (the points beside it hold it);" \
                 "starting again in ${OOM_WAIT:-30} s (try $tries of ${OOM_RETRIES:-20})"
            sleep "${OOM_WAIT:-30}"
            mv "$dir/train.log" "$dir/train.log.oom$tries"
            continue
        fi
        echo "[$SWEEP] $name: FAILED (see $dir/train.log):" >&2; tail -n 3 "$dir/train.log" >&2
        return 1
    done
    echo "[$SWEEP] $name: finished in $(( $(date +%s) - start )) s: $(tail -n 1 "$dir/train.log")"
}

# run_points — trains the queued points, $JOBS at a time.
run_points() {
    mkdir -p "$OUT"
    local i failed=0 running=0 launched=0 gpu=""
    echo "[$SWEEP] ${#POINT_NAMES[@]} points, scale $SCALE, $JOBS at a time with $THREADS threads each, into $OUT"
    [ "$GPUS" -eq 1 ] || echo "[$SWEEP] spread over $GPUS GPUs (CUDA_VISIBLE_DEVICES, round-robin from GPU $GPU_OFFSET)"
    [ ${#EXTRA_SETS[@]} -eq 0 ] || echo "[$SWEEP] every point also gets (--set): ${EXTRA_SETS[*]}"
    for i in "${!POINT_NAMES[@]}"; do
        local name=${POINT_NAMES[$i]}
        if [ -n "$ONLY" ] && ! echo "$name" | grep -Eq -e "$ONLY"; then continue; fi
        [ "$GPUS" -eq 1 ] || gpu=$(((launched + GPU_OFFSET) % GPUS))
        launched=$((launched + 1))
        if [ "$DRY_RUN" = 1 ]; then
            echo "$name${gpu:+ (GPU $gpu)}: $TRAIN --set ${POINT_SETS[$i]// / --set }"; continue
        fi
        if [ "$running" -ge "$JOBS" ]; then wait -n || failed=1; running=$((running - 1)); fi
        run_one "$name" "${POINT_SETS[$i]}" $gpu &
        running=$((running + 1))
    done
    while [ "$running" -gt 0 ]; do wait -n || failed=1; running=$((running - 1)); done
    [ "$DRY_RUN" = 1 ] && return 0
    echo "[$SWEEP] all points in $OUT; aggregate with: \${PYTHON:-python3} experiments/aggregate.py $OUT"
    return $failed
}
