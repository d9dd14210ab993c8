# gpu_lib.sh — what the GPU-machine scripts (gpu_check.sh, gpu_test.sh, gpu_scan_test.sh,
# gpu_attention_test.sh, gpu_scan_profile.sh, gpu_scan_knockouts.sh, gpu_bf16_test.sh) share;
# sourced, not run, as
#   source "$(dirname "${BASH_SOURCE[0]}")/gpu_lib.sh" NAME
# First it sets what every script starts with: $root (the repository, also made the working
# directory), $out ($OUT: the folder the device tool brings back; else runs/NAME), $build
# (build-gpu) and $jobs ($JOBS, else 16); it unpacks libyaml and Check from .deps
# (tools/gpu_deps.sh; the call must carry .deps) and ends with set +e (gpu_deps.sh sets -e;
# here a failed step is recorded and the summary still prints). Then it provides:
#   record NAME RESULT SECONDS     a row of the summary table
#   run_step NAME LOG CMD...       runs CMD into LOG, records ok / FAILED (rc N) and the
#                                  time, shows LOG's last $STEP_TAIL (40) lines on failure;
#                                  returns CMD's status
#   configure_and_build [TARGET...] the configure, build (those targets, else all) and
#                                  build-warnings steps into $build; returns 1 if one failed
#   device_info                    $out/device.txt (GPU, driver, memory, nvcc) and its first line
#   record_ctest NAME LOG          "SKIPPED (no GPU)" or "N% tests passed" from a ctest log
#   find_sanitizer                 the compute-sanitizer path, or nothing
#   run_sanitizer TOOL NAME SECS BINARY  BINARY under compute-sanitizer --tool TOOL (memcheck,
#                                  racecheck) as step NAME, log $out/NAME.log (spaces as _),
#                                  at most SECS; without compute-sanitizer it records that
#   run_torch NAME SCRIPT          python3 SCRIPT (a PyTorch reference, at most 150 s) as step
#                                  NAME into $out/torch.log, or records "no PyTorch"
#   mutant FILE SED WHAT           plants one bug in src/cuda/FILE, rebuilds $MUTANT_TARGET,
#                                  expects it to fail (within $MUTANT_TIMEOUT s), restores;
#                                  with MUTANT_ONLY=REGEX set, only mutants whose WHAT
#                                  matches it (grep -E) run: re-checking one planted bug
#                                  costs a build and a test run, not the whole list
#   print_test_report NAME LOG     per-test lines and the worst |cuda − cpu| per op
#   print_summary                  the steps table, then the mutants table; returns 1 if a
#                                  mutant was missed, not applied, not run or did not build
# Logs and the summary go to $out; the summary is printed last because the device tool
# returns only the output's tail.

gpu_script=${1:?gpu_lib.sh: source it with a name, the folder under runs/ for its logs}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-$root/runs/$gpu_script}
mkdir -p "$out"
build=$root/build-gpu
jobs=${JOBS:-16}
source tools/gpu_deps.sh unpack
set +e

declare -a step_names step_results step_seconds mutant_rows

record() { step_names+=("$1"); step_results+=("$2"); step_seconds+=("$3"); }

run_step() {  # name, log file, command...
    local name=$1 log=$2; shift 2
    local start=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    record "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (rc $rc)")" $((SECONDS - start))
    [ $rc -ne 0 ] && { echo "---- $name failed; last lines of $log:"; tail -n "${STEP_TAIL:-40}" "$log"; }
    return $rc
}

configure_and_build() {  # targets to build (none: everything)
    local targets=() t
    for t in "$@"; do targets+=(--target "$t"); done
    run_step configure "$out/configure.log" cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release || return 1
    run_step build "$out/build.log" cmake --build "$build" -j"$jobs" "${targets[@]}" || return 1
    # warnings are defects too: count them (the build passes -Wall -Wextra to gcc and nvcc)
    record "build warnings" "$(grep -ci warning "$out/build.log")" 0
}

device_info() {
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null ||
      echo "no nvidia-smi"; nvcc --version | tail -n 1; } >"$out/device.txt"
    echo "device: $(head -n 1 "$out/device.txt")"
}

# ctest counts a skip (exit 77, no GPU) as no failure: say which it was
record_ctest() {  # name, ctest log
    if grep -q "Skipped" "$2"; then record "$1" "SKIPPED (no GPU)" 0
    else record "$1" "$(grep -oE "[0-9]+% tests passed" "$2" || echo '?')" 0; fi
}

find_sanitizer() {
    command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1
}

run_sanitizer() {  # tool, step name, time limit, binary
    local tool=$1 name=$2 limit=$3 binary=$4 sanitizer
    # NO_SANITIZERS=1: skip (the sanitizers and --mutants together outgrow one 10-minute
    # device call; run the mutants in a call of their own this way)
    if [ "${NO_SANITIZERS:-0}" = 1 ]; then record "$name" "skipped (NO_SANITIZERS=1)" 0; return 0; fi
    sanitizer=$(find_sanitizer)
    if [ -z "$sanitizer" ]; then record "$name" "no compute-sanitizer" 0; return 0; fi
    run_step "$name" "$out/${name// /_}.log" timeout "$limit" "$sanitizer" --tool "$tool" --error-exitcode 3 "$binary"
}

run_torch() {  # step name, script
    if python3 -c "import torch" 2>/dev/null; then
        run_step "$1" "$out/torch.log" timeout 150 python3 "$2"
    else
        record "$1" "no PyTorch" 0
    fi
}

# --mutants: checks that the tests can fail. Each mutant plants one bug of a kind the
# comparisons must catch (overwrite instead of accumulate, an unwritten tail, an off-by-one
# window, ...), rebuilds $MUTANT_TARGET, and expects it to fail; then restores the file.
mutant() {  # file under src/cuda, sed expression, what it breaks
    local file=src/cuda/$1 expr=$2 what=$3 result caught_by
    if [ -n "${MUTANT_ONLY:-}" ] && ! grep -qE -- "$MUTANT_ONLY" <<<"$what"; then return 0; fi
    cp -p "$file" "$file.orig"
    sed -i "$expr" "$file"
    if cmp -s "$file" "$file.orig"; then result="NOT APPLIED"
    elif ! cmake --build "$build" -j"$jobs" --target "$MUTANT_TARGET" >>"$out/mutants.log" 2>&1; then
        result="build failed"
    else
        timeout "${MUTANT_TIMEOUT:-120}" "$build/tests/$MUTANT_TARGET" >"$out/mutant.out" 2>&1
        case $? in
            0) result="MISSED" ;;
            77) result="not run (no GPU)" ;;   # a skip proves nothing, and is no catch
            *) caught_by=$(grep -m 1 -oE ':[EF]:[^:]*:[^:]*' "$out/mutant.out" | cut -d: -f4)
               result="caught${caught_by:+ by $caught_by}" ;;
        esac
    fi
    { echo "==== $what: $result"; cat "$out/mutant.out"; } >>"$out/mutants.log"
    mv "$file.orig" "$file" && touch "$file"
    mutant_rows+=("$(printf '| %-48s | %s |' "$what" "$result")")
}

print_test_report() {  # test name, its LastTest log
    echo "---- $1: per-test results"
    grep -E "Checks:|:[EF]:|no CUDA device" "$2" 2>/dev/null | sed 's/^/  /'
    # per op, the shape that came closest to its own tolerance (shapes and precisions have
    # different tolerances, so the largest error alone could sit beside the wrong one)
    echo "---- worst |cuda − cpu| / max|cpu| over each op's shapes, nearest its tolerance"
    awk '/worst \|diff\|\/max/ {
            op = substr($0, 3, 40); sub(/ +$/, "", op)
            match($0, /max [0-9.e+-]+/); r = substr($0, RSTART + 4, RLENGTH - 4) + 0
            match($0, /tol [0-9.e+-]+/); t = substr($0, RSTART + 4, RLENGTH - 4)
            if (!(op in worst) || r / (t + 1e-30) > worst[op] / (tol[op] + 1e-30)) { worst[op] = r; tol[op] = t }
         }
         END { for (op in worst) printf "  %-40s %.2e  (tol %s)\n", op, worst[op], tol[op] }' \
        "$2" 2>/dev/null | sort
}

print_summary() {
    echo
    echo "---- summary ($(head -n 1 "$out/device.txt" 2>/dev/null))"
    printf '| %-30s | %-28s | %7s |\n' step result seconds
    printf '| %-30s | %-28s | %7s |\n' ------------------------------ ---------------------------- -------
    local i
    for i in "${!step_names[@]}"; do
        printf '| %-30s | %-28s | %7s |\n' "${step_names[$i]}" "${step_results[$i]}" "${step_seconds[$i]}"
    done
    if [ -z "${mutant_rows[*]:-}" ]; then
        # a filter that matched nothing checked nothing: say so rather than pass quietly
        [ -z "${MUTANT_ONLY:-}" ] && return 0
        echo; echo "MUTANT_ONLY='$MUTANT_ONLY' matched no planted bug (or --mutants was not given)"; return 1
    fi
    echo
    printf '| %-48s | %s |\n' "planted bug (--mutants)" "$MUTANT_TARGET"
    printf '| %-48s | %s |\n' "------------------------------------------------" "------"
    printf '%s\n' "${mutant_rows[@]}"
    ! grep -q "MISSED\|NOT APPLIED\|build failed\|not run" <<<"${mutant_rows[*]}"
}
