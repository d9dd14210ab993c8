#!/usr/bin/env bash
# gpu_test.sh — build the CUDA ops and check them against the CPU ops, on a GPU machine,
# in one go (one device-tool call; see docs/gpu.md):
#   1. unpack libyaml and Check from .deps (tools/gpu_deps.sh; the call must carry .deps)
#   2. configure and build only what the check needs: test_cuda_ops (and the libraries)
#   3. ctest -L cuda (test_cuda_ops), then the same binary under compute-sanitizer memcheck
#      (out-of-bounds and misaligned accesses the comparisons alone could miss) and
#      racecheck (shared-memory races)
#   4. print a short summary table last (the device tool returns the output's tail)
#   5. with --mutants: plant known bugs one at a time and check the test catches each
# Logs go to $OUT (the device tool's folder that comes back), else to runs/gpu_test.
# Exit status: 0 if every step passed.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-$root/runs/gpu_test}
mkdir -p "$out"
build=$root/build-gpu
jobs=${JOBS:-16}

source tools/gpu_deps.sh unpack
set +e   # gpu_deps.sh sets -e; here a failed step is recorded, and the summary still prints

declare -a step_names step_results step_seconds
record() {   # name, status, seconds
    step_names+=("$1"); step_results+=("$2"); step_seconds+=("$3")
}
run_step() {  # name, log file, command...
    local name=$1 log=$2; shift 2
    local start=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    record "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (rc $rc)")" $((SECONDS - start))
    [ $rc -ne 0 ] && { echo "---- $name failed; last lines of $log:"; tail -n 40 "$log"; }
    return $rc
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null ||
  echo "no nvidia-smi"; nvcc --version | tail -n 1; } >"$out/device.txt"
echo "device: $(head -n 1 "$out/device.txt")"

status=0
run_step configure "$out/configure.log" \
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release || status=1
if [ $status -eq 0 ]; then
    run_step build "$out/build.log" \
        cmake --build "$build" -j"$jobs" --target test_cuda_ops || status=1
    # warnings are defects too: count them (the build passes -Wall -Wextra to gcc and nvcc)
    warnings=$(grep -ci "warning" "$out/build.log")
    record "build warnings" "$warnings" 0
fi
if [ $status -eq 0 ]; then
    run_step "ctest -L cuda" "$out/ctest.log" \
        ctest --test-dir "$build" -L cuda --output-on-failure || status=1
    cp "$build/Testing/Temporary/LastTest.log" "$out/test_cuda_ops.log" 2>/dev/null
    # ctest counts a skip (exit 77, no GPU) as no failure: say which it was
    if grep -q "Skipped" "$out/ctest.log"; then record "test_cuda_ops" "SKIPPED (no GPU)" 0
    else record "test_cuda_ops" "$(grep -oE "[0-9]+% tests passed" "$out/ctest.log" || echo '?')" 0; fi
    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
    if [ -n "$sanitizer" ]; then
        run_step "memcheck" "$out/memcheck.log" \
            timeout 240 "$sanitizer" --tool memcheck --error-exitcode 3 "$build/tests/test_cuda_ops" \
            || status=1
        # shared-memory races between threads of a block (the attention tiles)
        run_step "racecheck" "$out/racecheck.log" \
            timeout 150 "$sanitizer" --tool racecheck --error-exitcode 3 "$build/tests/test_cuda_ops" \
            || status=1
    else
        record "memcheck" "no compute-sanitizer" 0
    fi
fi

# --mutants: checks that the tests can fail. Each mutant plants one bug of a kind the
# comparisons must catch (overwrite instead of accumulate, an unwritten tail, an off-by-one
# window, TF32 on, ...), rebuilds, and expects test_cuda_ops to fail; then restores the file.
mutant() {  # file under src/cuda, sed expression, what it breaks
    local file=src/cuda/$1 expr=$2 what=$3 result caught_by
    cp -p "$file" "$file.orig"
    sed -i "$expr" "$file"
    if cmp -s "$file" "$file.orig"; then result="NOT APPLIED"
    elif ! cmake --build "$build" -j"$jobs" --target test_cuda_ops >>"$out/mutants.log" 2>&1; then
        result="build failed"
    elif timeout 120 "$build/tests/test_cuda_ops" >"$out/mutant.out" 2>&1; then result="MISSED"
    else
        caught_by=$(grep -m 1 -oE ':[EF]:[^:]*:[^:]*' "$out/mutant.out" | cut -d: -f4)
        result="caught${caught_by:+ by $caught_by}"
    fi
    { echo "==== $what: $result"; cat "$out/mutant.out"; } >>"$out/mutants.log"
    mv "$file.orig" "$file" && touch "$file"
    mutant_rows+=("$(printf '| %-44s | %s |' "$what" "$result")")
}
declare -a mutant_rows
if [ $status -eq 0 ] && [ "${1:-}" = "--mutants" ]; then
    mutant matmul.cu 's/compute_type = CUBLAS_COMPUTE_32F;/compute_type = CUBLAS_COMPUTE_32F_FAST_TF32;/' "matmul with TF32 on"
    mutant rmsnorm.cu 's/dx\[c\] += r \*/dx[c] = r */' "rmsnorm dinp overwritten, not accumulated"
    mutant swiglu.cu 's/i < n;/i + 1 < n;/g' "swiglu last element never written"
    mutant cross_entropy.cu 's/drow\[v\] = 0.0f;/;/' "cross_entropy ignored rows left unwritten"
    mutant rope.cu 's/direction \* (float)sin_angle/(float)sin_angle/' "rope backward rotates forward"
    mutant attention.cu 's/j > t - window)/j >= t - window)/' "attention window one key too wide"
    mutant attention.cu 's/acc\[i\]\[e\] \*= corr;/;/' "attention forward skips online rescale"
    mutant attention.cu 's/h < (g + 1) \* group;/h < g * group + 1;/' "attention dk/dv sees one head of a group"
    mutant attention.cu 's/dq_row\[d\] += scale/dq_row[d] = scale/' "attention dq overwritten, not accumulated"
    mutant adamw.cu 's/first->no_decay ? 0.0f : s->weight_decay/s->weight_decay/' "adamw decays no_decay tensors"
    mutant adamw.cu 's/partials\[blockIdx.x\] = ss/partials[blockIdx.x] = ss * 0.999999/' "grad norm off by 5e-7"
    cmake --build "$build" -j"$jobs" --target test_cuda_ops >>"$out/mutants.log" 2>&1   # the real one again
fi

echo
echo "---- test_cuda_ops: per-test results"
grep -E "Checks:|:[EF]:|no CUDA device" "$out/test_cuda_ops.log" 2>/dev/null | sed 's/^/  /'
echo "---- worst |cuda − cpu| / max|cpu| over each op's shapes"
awk '/worst \|diff\|\/max/ {
        op = substr($0, 3, 40); sub(/ +$/, "", op)
        match($0, /max [0-9.e+-]+/); r = substr($0, RSTART + 4, RLENGTH - 4) + 0
        match($0, /tol [0-9.e+-]+/); tol[op] = substr($0, RSTART + 4, RLENGTH - 4)
        if (!(op in worst) || r > worst[op]) worst[op] = r
     }
     END { for (op in worst) printf "  %-40s %.2e  (tol %s)\n", op, worst[op], tol[op] }' \
    "$out/test_cuda_ops.log" 2>/dev/null | sort
grep -E "ERROR SUMMARY" "$out/memcheck.log" 2>/dev/null | sed 's/^/  memcheck: /'
grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$out/racecheck.log" 2>/dev/null | sed 's/^/  racecheck: /'
echo
echo "---- summary ($(head -n 1 "$out/device.txt"))"
printf '| %-16s | %-18s | %7s |\n' step result seconds
printf '| %-16s | %-18s | %7s |\n' ---------------- ------------------ -------
for i in "${!step_names[@]}"; do
    printf '| %-16s | %-18s | %7s |\n' "${step_names[$i]}" "${step_results[$i]}" "${step_seconds[$i]}"
done
if [ -n "${mutant_rows[*]:-}" ]; then
    echo
    printf '| %-44s | %s |\n' "planted bug (--mutants)" "test_cuda_ops"
    printf '| %-44s | %s |\n' "--------------------------------------------" "------"
    printf '%s\n' "${mutant_rows[@]}"
    grep -q "MISSED\|NOT APPLIED\|build failed" <<<"${mutant_rows[*]}" && status=1
fi
exit $status
