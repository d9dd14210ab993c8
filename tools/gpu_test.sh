#!/usr/bin/env bash
# gpu_test.sh — build the CUDA ops and check them against the CPU ops, on a GPU machine,
# in one go (one device-tool call; see docs/gpu.md):
#   1. unpack libyaml and Check from .deps (tools/gpu_deps.sh; the call must carry .deps)
#   2. configure and build only what the check needs: test_cuda_ops (and the libraries)
#   3. ctest -R test_cuda_ops, then the same binary under compute-sanitizer memcheck
#      (out-of-bounds and misaligned accesses the comparisons alone could miss) and
#      racecheck (shared-memory races)
#   4. print a short summary table last (the device tool returns the output's tail)
#   5. with --mutants: plant known bugs one at a time and check the test catches each
# Logs go to $OUT (the device tool's folder that comes back), else to runs/gpu_test.
# Exit status: 0 if every step passed.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/gpu_lib.sh" gpu_test   # root, out, build, jobs; .deps unpacked; set +e
device_info

status=0
configure_and_build test_cuda_ops || status=1
if [ $status -eq 0 ]; then
    # only the test built above: the other CUDA tests have no binary in a fresh build-gpu
    run_step "ctest test_cuda_ops" "$out/ctest.log" \
        ctest --test-dir "$build" -R '^test_cuda_ops$' --output-on-failure || status=1
    cp "$build/Testing/Temporary/LastTest.log" "$out/test_cuda_ops.log" 2>/dev/null
    record_ctest test_cuda_ops "$out/ctest.log"
    run_sanitizer memcheck memcheck 240 "$build/tests/test_cuda_ops" || status=1
    # shared-memory races between threads of a block (the attention tiles)
    run_sanitizer racecheck racecheck 450 "$build/tests/test_cuda_ops" || status=1
fi

MUTANT_TARGET=test_cuda_ops MUTANT_TIMEOUT=120
if [ $status -eq 0 ] && [ "${1:-}" = "--mutants" ]; then
    mutant embedding.cu 's/if (i > 0 \&\& sorted_tokens\[i - 1\] == token) return;/if (i > 0 \&\& sorted_tokens[i - 1] == token \&\& i < 0) return;/' "embedding backward: every repeat of a token adds its run again"
    mutant embedding.cu 's/while (end < N \&\& sorted_tokens\[end\] == token) end++;/;/' "embedding backward: a token's run stops at its first row"
    mutant matmul.cu 's/bf16 || precision == PRECISION_FP32 ? CUBLAS_COMPUTE_32F/bf16 ? CUBLAS_COMPUTE_32F/' "matmul with TF32 on"
    mutant matmul.cu 's/__float2bfloat16_rn/__float2bfloat16_rz/' "bf16 operands truncated, not rounded"
    mutant matmul.cu 's/operand(bf16, BF16_DOUT, dout/operand(bf16, BF16_INP, dout/' "bf16 dout and inp share one buffer"
    mutant matmul.cu 's/N % 8 == 0 \&\& C % 8 == 0/C % 8 == 0/' "bf16 on a row count cuBLAS runs slowly"
    mutant matmul.cu 's/__floats2bfloat162_rn(a.x, a.y)/__floats2bfloat162_rn(a.y, a.x)/' "bf16 8-wide conversion swaps a pair"
    mutant matmul.cu 's/dinp_written ? \&zero : \&one/\&one/' "matmul write_dinp adds into dinp"
    mutant matmul.cu 's/weight, N, C, OC, 1, 1, stream);/weight, N, C, OC, 1, 0, stream);/' "matmul bf16 write_dinp adds into dinp"
    mutant matmul.cu 's/extern "C" void matmul_forget_weights_cuda(void) { mirror_src = NULL; }/extern "C" void matmul_forget_weights_cuda(void) { }/' "bf16 weight mirror never forgotten"
    mutant matmul.cu 's/const __nv_bfloat16 \*at = mirror + (src - mirror_src);/const __nv_bfloat16 *at = mirror;/' "every mirrored weight reads the first"
    mutant matmul.cu 's/held_src \&\& src == held_src \&\& n == held_n)/held_src \&\& n == held_n)/' "any input of the held one's size reads its bf16 copy"
    mutant matmul.cu 's/extern "C" void matmul_release_input_cuda(void) {/extern "C" void matmul_release_input_cuda(void) { return;/' "held input never released"
    mutant matmul.cu 's/    offered\[which\].src = copy ? src : NULL;/    if (!copy) return;\n    offered[which].src = copy ? src : NULL;/' "an offered bf16 copy is never withdrawn"
    mutant matmul.cu 's/        if (copy) return copy;/        (void)copy;/' "an offered bf16 copy is ignored"
    mutant rmsnorm.cu 's/dx\[c\] = (base ? base\[c\] : 0.0f) + r \*/dx[c] = r */' "rmsnorm dinp overwritten, not accumulated"
    mutant rmsnorm.cu 's/Lanes<4> d = dbase ? load_lanes<4>(dbase + at) : zero_lanes<4>();/Lanes<4> d = load_lanes<4>(dinp + at);/' "rmsnorm row backward: dinp added onto itself, not onto its base"
    mutant rmsnorm.cu 's/if (dinp16) store_lanes<4>(dinp16 + at, d);/;/' "rmsnorm row backward: dinp's bf16 copy not written"
    mutant rmsnorm.cu 's/if (dx16) dx16\[c\] = __float2bfloat16_rn(dx\[c\]);/;/' "rmsnorm general backward: dinp's bf16 copy not written"
    mutant rmsnorm.cu 's/for (int e = 0; e < 4; e++) x\[k\]\[e\] += add\[e\];/;/' "rmsnorm row forward: the residual not added"
    mutant rmsnorm.cu 's/store_lanes<4>(sum + (size_t)n \* C + 4 \* i, x\[k\]);/;/' "rmsnorm row forward: the sum not written back"
    mutant rmsnorm.cu 's/s\[c\] = x\[c\] + res\[c\];/s[c] = x[c];/' "rmsnorm general forward: the residual not added"
    mutant rmsnorm.cu 's/d\[e\] += r \* (dy/d[e] = r * (dy/' "rmsnorm row kernel: dinp overwritten, not accumulated"
    mutant rmsnorm.cu 's/s < S; s += RMSNORM_FINISH_GROUPS/s < S - 1; s += RMSNORM_FINISH_GROUPS/' "rmsnorm dw: the last block's partial dropped"
    mutant rmsnorm.cu 's/store_lanes<4>(partial + (size_t)blockIdx.x \* C + 4 \* i, acc\[k\])/store_lanes<4>(partial + (size_t)blockIdx.x * C + 4 * (i ^ 1), acc[k])/' "rmsnorm dw: partials written to the wrong columns"
    mutant rmsnorm.cu 's/half_sum\[warp - half\]\[k\]\[lane\] = acc\[k\]/half_sum[warp - half][k][lane] = zero_lanes<4>()/' "rmsnorm dw: a block adds only its first warp's sums"
    mutant rmsnorm.cu 's/for (int offset = L; offset < 32; offset <<= 1)/for (int offset = 2 * L; offset < 32; offset <<= 1)/' "rmsnorm dw: a warp's row groups not all added"
    mutant column_sum.cuh 's/for (int s = 0; s < slices; s++) sum +=/for (int s = 0; s < 1; s++) sum +=/' "column sums keep only the first row slice"
    mutant column_sum.cuh 's/n1 = min(N, n0 + rows_per_slice)/n1 = min(N - 1, n0 + rows_per_slice)/' "column sums drop the last row"
    mutant swiglu.cu 's/GRID_STRIDE(i, n \/ W) {/GRID_STRIDE(i, n \/ 4) {/' "swiglu kernels cover a quarter (scalar path)"
    mutant grid.cuh 's/return ld == row ? j : j \/ row \* ld + j % row;/return j;/' "swiglu: gradients written flat whatever their row stride (grid.cuh row_strided)"
    mutant grid.cuh 's/return ld == row || (row % 4 == 0 \&\& ld % 4 == 0);/return true;/' "swiglu: float4 pieces across rows (grid.cuh lanes_fit_rows)"
    mutant grid.cuh 's/make_float4(r.v\[0\], r.v\[1\], r.v\[2\], r.v\[3\])/make_float4(r.v[0], r.v[2], r.v[1], r.v[3])/' "float4 stores swap two lanes"
    mutant grid.cuh 's/% 16 == 0)/% 4 == 0)/' "float4 path taken on unaligned arrays"
    mutant cross_entropy.cu 's/put_dlogit(drow + v, 0.0f);/;/' "cross_entropy ignored rows left unwritten"
    mutant rope.cu 's/s = direction \* cs.y;/s = cs.y;/' "rope backward rotates forward"
    mutant rope.cu 's/if (T == table_T \&\& hd == table_hd \&\& base == table_base)/if (T == table_T \&\& base == table_base)/' "rope table kept for a new head size"
    mutant rope.cu 's/if (T == table_T \&\& hd == table_hd \&\& base == table_base)/if (T == table_T \&\& hd == table_hd)/' "rope table kept for a new base"
    mutant attention_common.cuh 's/j > t - window)/j >= t - window)/' "attention window one key too wide"
    mutant attention.cu 's/acc\[i\]\[e\] \*= corr;/;/' "attention forward skips online rescale"
    mutant attention.cu 's/h < (g + 1) \* group;/h < g * group + 1;/' "attention dk/dv sees one head of a group"
    mutant attention.cu 's/dq_row\[d\] += scale/dq_row[d] = scale/' "attention dq overwritten, not accumulated"
    mutant adamw.cu 's/first->no_decay ? 0.0f : s->weight_decay/s->weight_decay/' "adamw decays no_decay tensors"
    mutant adamw.cu 's/partials\[blockIdx.x\] = ss/partials[blockIdx.x] = ss * 0.999999/' "grad norm off by 5e-7"
    mutant adamw.cu 's/const float g = grad \* grad_scale;/const float g = grad;/' "adamw ignores the clipping factor"
    mutant adamw.cu 's/if (first < 8) {/if (first < 4) {/' "adamw skips a range's ragged tail"
    mutant adamw.cu 's/for (size_t i = 4 \* n4 + first; i < n; i += stride)/for (size_t i = 4 * n4 + first; i < n - 1; i += stride)/' "grad norm drops the last element"
    cmake --build "$build" -j"$jobs" --target test_cuda_ops >>"$out/mutants.log" 2>&1   # the real one again
fi

echo
print_test_report test_cuda_ops "$out/test_cuda_ops.log"
grep -E "ERROR SUMMARY" "$out/memcheck.log" 2>/dev/null | sed 's/^/  memcheck: /'
grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$out/racecheck.log" 2>/dev/null | sed 's/^/  racecheck: /'
print_summary || status=1
exit $status
