#!/usr/bin/env bash
# gpu_scan_knockouts.sh — what each part of the selective scan's backward costs, in one
# device-tool call: builds test_cuda_scan once per knockout (tools/scan_knockouts.py removes
# one part of the kernel from a copy of the tree, so its gradients are wrong: timings only),
# side by side, and times the backward of each at chunk 64 and 16 (chunk 16: no walk from a
# chunk's saved start), two rounds (every variant, then every variant again). The kernel as
# it is first runs its suite, so the base timing is of a kernel that passes its test.
# Usage (the call must carry .deps):
#   bash tools/gpu_scan_knockouts.sh [KNOCKOUT[,KNOCKOUT] ...]   (default: each one, both sums over lanes together, and all but the arithmetic)
# SHAPE="B T di N" (default jamba-small's 8 2048 1536 16), CHUNKS (default "64 16").
# Copies go to .deps/knockout_* (ignored); the table is printed last and kept in $OUT/knockouts.txt.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu_lib.sh" gpu_scan_knockouts   # root, out, build, jobs
device_info
if [ $# -gt 0 ]; then variants=("$@")
else variants=(base noshfl nobutterfly nosum_n nobutterfly,nosum_n noex2_reverse nodbc_store nowriteout nostates_store
                 nobutterfly,nosum_n,nodbc_store,nowriteout,nostates_store); fi
configure_and_build test_cuda_scan || { print_summary; exit 1; }
run_step "ctest scan" "$out/ctest.log" ctest --test-dir "$build" -R test_cuda_scan --output-on-failure
build_variant() {   # name: a copy of the tree with the knockouts applied, test_cuda_scan built
    local dir=.deps/knockout_${1//,/_}
    rm -rf "$dir" && mkdir -p "$dir" && cp -r CMakeLists.txt src tests tools configs experiments "$dir"/ 2>/dev/null
    python3 tools/scan_knockouts.py "$dir/src/cuda/scan.cu" "$1" &&
        cmake -S "$dir" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release >"$out/configure_${1//,/_}.log" 2>&1 &&
        cmake --build "$dir/build" -j4 --target test_cuda_scan >"$out/build_${1//,/_}.log" 2>&1 ||
        echo "knockout $1: build FAILED (see $out/build_${1//,/_}.log)"
}
for v in "${variants[@]}"; do build_variant "$v" & done
wait
print_summary
declare -A ms
for round in 1 2; do   # rounds outermost, so a drifting clock touches every variant alike
    for v in "${variants[@]}"; do
        for chunk in ${CHUNKS:-64 16}; do
            bin=.deps/knockout_${v//,/_}/build/tests/test_cuda_scan
            ms[$v/$chunk/$round]=$(timeout 60 "$bin" --bench ${SHAPE:-8 2048 1536 16} "$chunk" 2>&1 |
                awk '$1 == "bench" && $2 == "selective_scan_bwd" {print $4}')
        done
    done
done
{
    printf "%-24s %5s %16s %8s\n" knockout chunk "backward ms" "round 2"
    for v in "${variants[@]}"; do
        for chunk in ${CHUNKS:-64 16}; do
            printf "%-24s %5s %16s %8s\n" "$v" "$chunk" "${ms[$v/$chunk/1]:-?}" "${ms[$v/$chunk/2]:-?}"
        done
    done
} | tee "$out/knockouts.txt"
