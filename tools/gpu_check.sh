#!/usr/bin/env bash
# gpu_check.sh — everything the GPU machine should check, in one device-tool call:
#   1. unpack libyaml and Check from .deps (tools/gpu_deps.sh; the call must carry .deps)
#   2. configure and build the whole project (library, executables, every test) in build-gpu
#   3. ctest -L cuda: every CUDA op, layer and whole-model test against the CPU
#   4. with --sanitize: the layer and model tests under compute-sanitizer memcheck
#   5. with --train: a short jamba-tiny run on the GPU (train --device cuda) and `bench`
#      of the same config on GPU and CPU
#   6. with --perf: the performance table of docs/performance.md on jamba-small: bench --ops,
#      braid's whole step at each train.matmul_precision (fp32, tf32, bf16), PyTorch's step
#      (tools/bench_torch_gpu.py) in float32, TF32 and bf16 autocast, then Hugging Face's
#      Jamba (--hf-only, stopped after HF_TIMEOUT seconds, default 150: its slow path)
#   7. a summary table last (the device tool returns the output's tail)
# Logs go to $OUT (the folder the device tool brings back), else runs/gpu_check.
#
#   run(command="bash tools/gpu_check.sh --train", carry=[".deps"])
set -uo pipefail
train_config=${TRAIN_CONFIG:-configs/jamba-tiny.yaml}   # what --train trains and benches
sanitize=0 train=0 perf=0
for a in "$@"; do
    case "$a" in --sanitize) sanitize=1 ;; --train) train=1 ;; --perf) perf=1 ;;
        *) echo "gpu_check.sh: unknown option $a" >&2; exit 2 ;; esac
done

source "$(dirname "${BASH_SOURCE[0]}")/gpu_lib.sh" gpu_check   # root, out, build, jobs; .deps unpacked; set +e
STEP_TAIL=60
device_info
status=0
configure_and_build || status=1
if [ $status -eq 0 ]; then
    run_step "ctest -L cuda" "$out/ctest.log" ctest --test-dir "$build" -L cuda --output-on-failure -j2 || status=1
    cp "$build/Testing/Temporary/LastTest.log" "$out/ctest_full.log" 2>/dev/null
    grep -E "Test +#" "$out/ctest.log" | sed 's/^ *[0-9]*\/[0-9]* //' | while read -r l; do echo "  $l"; done
fi
if [ $status -eq 0 ] && [ $sanitize -eq 1 ]; then
    for t in test_cuda_layers test_cuda_mamba test_cuda_gla test_cuda_moe test_cuda_model; do
        [ -x "$build/tests/$t" ] || continue
        run_sanitizer memcheck "memcheck $t" 300 "$build/tests/$t" || status=1
    done
fi
if [ $status -eq 0 ] && [ $train -eq 1 ]; then
    run_step "train --device cuda" "$out/train.log" "$build/train" --config "$train_config" \
        --device cuda --steps 300 --set train.eval_every=300 --run-dir "$out/run" || status=1
    grep -E "^step|eval" "$out/train.log" | tail -n 4
    for dev in cuda cpu; do
        run_step "bench $dev" "$out/bench_$dev.log" "$build/bench" --config "$train_config" \
            --set train.device=$dev --steps 10 --warmup 2 || status=1
        tail -n 1 "$out/bench_$dev.log"
    done
fi
if [ $status -eq 0 ] && [ $perf -eq 1 ]; then
    small=configs/jamba-small.yaml
    run_step "bench --ops (jamba-small)" "$out/bench_ops.log" "$build/bench" --config $small --ops || status=1
    for prec in fp32 tf32 bf16; do
        run_step "bench step $prec" "$out/bench_step_$prec.log" "$build/bench" --config $small \
            --set train.matmul_precision=$prec --steps 10 --warmup 15 || status=1
        record "  braid $prec" "$(grep -oE 'step +[0-9.]+ ms' "$out/bench_step_$prec.log" | tail -n 1)" ""
    done
    # the same model in PyTorch (docs/performance.md). braid's steps above warm up 15 steps
    # (each new matmul shape's first call is slow and MoE row counts change every step:
    # bench.c); PyTorch's are timed after 2, its fastest window (its steps grow slower
    # later in the run: docs/performance.md), so the ratios favour PyTorch if anything
    S="--pattern MMMMAMMM --ffn DEDEDEDE --d-model 768 --n-heads 12 --n-kv-heads 4 --position rope
       --d-state 16 --expand 2 --d-conv 4 --experts 8 --top-k 2 --moe-hidden 1024 --dense-hidden 2048
       --vocab 8192 --batch 8 --seq-len 2048"
    # shellcheck disable=SC2086
    for variant in "fp32:" "tf32:--tf32" "bf16:--dtype bf16"; do
        name=${variant%%:*} flags=${variant#*:}
        run_step "torch step $name" "$out/torch_$name.log" python3 tools/bench_torch_gpu.py $S $flags \
            --steps 5 --warmup 2 --model-only --no-hf || status=1
        record "  torch $name" "$(grep -oE '"step_ms": [0-9.]+' "$out/torch_$name.log" | head -n 1)" ""
    done
    if [ "${HF_TIMEOUT:-150}" -gt 0 ]; then   # HF_TIMEOUT=0 skips it
        # shellcheck disable=SC2086
        run_step "HF Jamba (limit ${HF_TIMEOUT:-150} s)" "$out/hf_jamba.log" timeout "${HF_TIMEOUT:-150}" \
            python3 tools/bench_torch_gpu.py $S --hf-only --steps 1 --warmup 1
        grep -E "step [0-9]|model_hf_jamba" "$out/hf_jamba.log" | tail -n 4
    fi
fi
print_summary
exit $status
