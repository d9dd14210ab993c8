#!/usr/bin/env bash
# gpu_scan_profile.sh — where the selective scan's time goes on the GPU machine, in one
# device-tool call: builds test_cuda_scan, runs it, times it (test_cuda_scan --bench at jamba-small's
# Mamba shape, chunk 64 and 16) and profiles one forward and one backward kernel with
# Nsight Compute (pipe utilisation, instruction mix, warp stalls, shared-memory wavefronts).
# Usage (the call must carry .deps): bash tools/gpu_scan_profile.sh [B T di N]
# Logs go to $OUT (else runs/gpu_scan_profile); the timings table is printed last.
set -uo pipefail
if [ $# -ge 4 ]; then shape=("$@"); else shape=(8 2048 1536 16); fi
source "$(dirname "${BASH_SOURCE[0]}")/gpu_lib.sh" gpu_scan_profile   # root, out, build, jobs; .deps unpacked; set +e
device_info
configure_and_build test_cuda_scan || { print_summary; exit 1; }
bin=$build/tests/test_cuda_scan
# a timing of wrong results means nothing: the suite first
run_step "ctest scan" "$out/ctest.log" ctest --test-dir "$build" -R test_cuda_scan --output-on-failure
for chunk in 64 16; do
    run_step "bench chunk $chunk" "$out/bench-$chunk.log" timeout 120 "$bin" --bench "${shape[@]}" "$chunk"
done
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -n 1)
if [ -n "$ncu" ]; then
    sections=(--section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats
              --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis_Tables
              --section Occupancy --section LaunchStats)
    for k in forward backward; do
        run_step "ncu $k" "$out/ncu-$k.txt" timeout 240 "$ncu" "${sections[@]}" \
            -k "regex:selective_scan_${k}_kernel" --launch-skip 3 --launch-count 1 \
            "$bin" --bench "${shape[@]}" 64
    done
else
    record "ncu" "no ncu" 0
fi
print_summary
grep -h "^bench selective" "$out"/bench-*.log
