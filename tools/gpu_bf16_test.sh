#!/usr/bin/env bash
# gpu_bf16_test.sh — the bf16 operands written by the ops that make them (ops_cuda.h; docs/gpu.md
# "Matmul precision"), checked on a GPU machine in one device-tool call:
#   1. unpack libyaml and Check from .deps (tools/gpu_deps.sh; the call must carry .deps)
#   2. build test_cuda_model and test_cuda_ops into build-gpu
#   3. ctest both: test_cuda_model's bf16_operands_from_their_producers_change_no_bit trains
#      bf16 steps with the producers on and off and wants the same bits; test_cuda_ops
#      checks an offered bf16 copy is read, and forgotten once withdrawn
#   4. test_cuda_model under compute-sanitizer memcheck (skipped with NO_SANITIZERS=1)
#   5. with --mutants: plant bugs in the producers one at a time; the model test must catch each
#      (and six in the MoE layer's saved expert outputs and its bf16 gather, which test_cuda_moe
#      must catch)
# A short summary is printed last. Logs go to $OUT, else runs/gpu_bf16_test.
#
#   run(command="bash tools/gpu_bf16_test.sh --mutants", carry=[".deps"], timeout_s=600)
set -uo pipefail
mutants=0
for a in "$@"; do
    case "$a" in --mutants) mutants=1 ;;
        *) echo "gpu_bf16_test.sh: unknown option $a (--mutants)" >&2; exit 2 ;; esac
done

source "$(dirname "${BASH_SOURCE[0]}")/gpu_lib.sh" gpu_bf16_test   # root, out, build, jobs; .deps unpacked; set +e
device_info

status=0
configure_and_build test_cuda_model test_cuda_ops || status=1
if [ $status -eq 0 ]; then
    run_step "ctest model, ops" "$out/ctest.log" \
        ctest --test-dir "$build" -R '^test_cuda_(model|ops)$' --output-on-failure || status=1
    cp "$build/Testing/Temporary/LastTest.log" "$out/tests.log" 2>/dev/null
    record_ctest "test_cuda_model, test_cuda_ops" "$out/ctest.log"
    grep -E "with and without producers" "$out/tests.log" | sed 's/^ */  /'
    [ "${NO_SANITIZERS:-0}" = 1 ] || run_sanitizer memcheck "memcheck model" 300 "$build/tests/test_cuda_model" || status=1
fi

MUTANT_TARGET=test_cuda_model MUTANT_TIMEOUT=200
if [ $status -eq 0 ] && [ $mutants -eq 1 ]; then
    mutant grid.cuh 's/__floats2bfloat162_rn(r.v\[0\], r.v\[1\])/__floats2bfloat162_rn(r.v[1], r.v[0])/' \
        "bf16 store_lanes swaps two lanes"
    mutant ../layers/moe.c 's/(h16, dgate_up16, dgate_up16 + H,/(h16, dgate_up16, dgate_up16,/' \
        "moe: bf16 dup written over dgate (the up half never written)"
    mutant ../layers/mamba.c 's/(gated16, dz16, w.dgated/(gated16, dz16 + 8, w.dgated/' \
        "mamba: bf16 dz written 8 values off"
    mutant ../models/model.c 's/offer_bf16_grad_copy(m, ops, dh, Nd, dh_copy);/offer_bf16_grad_copy(m, ops, dh, Nd, dx16);/' \
        "model: the mixer's backward offered dx's bf16 copy for dh"
    mutant ../layers/ffn_dense.c 's/(h16, dgate_up16, dgate_up16 + hidden, dh,/(h16, dgate_up16, dgate_up16, dh,/' \
        "dense: dup written over dgate (the up half never written)"
    mutant ../layers/ffn_dense.c 's/\*h16 = (uint16_t \*)(dgate_up + nh);/*h16 = (uint16_t *)dgate_up;/' \
        "dense: h16 written over the gate and up gradients"
    mutant swiglu.cu 's/hv\[e\] = g\[e\] \* s \* u\[e\];/hv[e] = g[e] * s;/' \
        "swiglu fused bf16: h = silu(gate), missing the up factor"
    mutant mamba_glue.cu 's/gt\[e\] = yy\[e\] \* s;/gt[e] = yy[e] * zz[e];/' \
        "mamba gate fused bf16: gated = y * z, not y * silu(z)"
    mutant conv1d.cu 's/else d = zero_lanes<P>();/else d = load_lanes<P>(dout + base + (size_t)t * C);/' \
        "conv bf16 dx starts from dout, not 0"
    mutant cross_entropy.cu 's/{ \*p = __float2bfloat16_rn(v); }/{ *p = __float2bfloat16_rz(v); }/' \
        "cross-entropy bf16 dlogits truncated, not rounded"
    mutant ../models/model.c 's/m->vocab, grad_scale, NULL, NULL,/m->vocab, 2 * grad_scale, NULL, NULL,/' \
        "lm head bf16: dlogits at twice the scale"
    mutant rmsnorm.cu 's/store_lanes<4>(out16 + (size_t)n \* C + 4 \* i, y)/store_lanes<4>(out16 + (size_t)n * C + 4 * i, x[k])/' \
        "rmsnorm row kernel: bf16 copy of the input, not the output"
    mutant ../models/model.c '0,/offer_bf16_copy(m, ops, b->norm2_out, Nd, b->norm2_bf16);/s//offer_bf16_copy(m, ops, b->norm2_out, Nd, b->norm1_bf16);/' \
        "forward offers norm1's copy for norm2's output"
    mutant ../layers/mamba.c 's/NULL, v.u16, W_x, BT, di, R + 2 \* N, 0);/NULL, v.u16 + 8, W_x, BT, di, R + 2 * N, 0);/' \
        "x_proj backward reads u16 8 values off"
    mutant conv1d.cu 's/if (u16) store_lanes<P>(u16 + at, y);/if (u16) { store_lanes<P>(u16 + at, y); if (at == 0) u16[0] = __float2bfloat16_rn(0.5f); }/' \
        "silu's bf16 copy wrong in its first value"
    mutant moe.cu 's/out\[e\] = w \* g\[e\];/out[e] = sizeof(Out) == 2 ? w * g[e] * 1.001953125f : w * g[e];/' \
        "moe: bf16 deo is not bf16_rn of w*dy"
    mutant ../layers/moe.c 's/(uint16_t \*)sc.deo, \*h16 = (uint16_t \*)sc.dup;/(uint16_t *)sc.deo, *h16 = (uint16_t *)sc.deo;/' \
        "moe: bf16 h16 written over deo16 before dW_down reads it"
    cmake --build "$build" -j"$jobs" --target test_cuda_model >>"$out/mutants.log" 2>&1   # the real one again
    # the MoE layer's saved expert outputs and its combine backward (test_cuda_moe)
    MUTANT_TARGET=test_cuda_moe
    mutant moe.cu 's/store_lanes<W>(deo + W \* (row + c), out);/store_lanes<W>(deo + W * (dy_row + c), out);/' \
        "moe: combine backward writes deo to the token row, not the slot row"
    mutant ../layers/moe.c 's/moe_combine_backward_cuda(sc.dweight, sc.deo, sv.eo,/moe_combine_backward_cuda(sc.dweight, sv.eo, sv.eo,/' \
        "moe: backward overwrites the saved eo (the old in-place deo)"
    mutant ../layers/moe.c 's/float \*eo = sv->eo + (size_t)o \* d;/float *eo = sc->deo + (size_t)o * d;/' \
        "moe: forward writes eo into scratch, not the saved eo"
    # the bf16 gather of the experts' input rows (test_gather_bf16_matches_reference, and the
    # layer's producers-on against producers-off bits)
    mutant moe.cu 's/const int token = slot_token\[s\];/const int token = slot_token[(s + 1) % S];/' \
        "moe: bf16 gather copies the token row of the next slot"
    mutant moe.cu 's/: __float2bfloat16_rn(x\[from\]);/: __float2bfloat16_rz(x[from]);/' \
        "moe: bf16 gather's scalar path truncates x, not rounds to nearest even"
    mutant ../layers/moe.c '0,/const uint16_t \*xg16_rows = xg16 + (size_t)o \* d;/s//const uint16_t *xg16_rows = xg16 + 2 * (size_t)o * d;/' \
        "moe: forward reads an expert's bf16 rows at the float32 gather's offset"
    cmake --build "$build" -j"$jobs" --target test_cuda_moe >>"$out/mutants.log" 2>&1
    # in_proj's output gradient written as one [dx1 | dz] array (test_cuda_mamba's strided tests)
    MUTANT_TARGET=test_cuda_mamba
    mutant grid.cuh 's/return ld == row ? j : j \/ row \* ld + j % row;/return j;/' \
        "mamba gate: dz written flat whatever its row stride (grid.cuh row_strided)"
    mutant conv1d.cu 's/DX \*dx_t = dx + ((size_t)w.b \* T + t) \* dx_ld + w.c;/DX *dx_t = dx + ((size_t)w.b * T + t) * C + w.c;/' \
        "conv1d: dx rows C apart whatever dx_ld"
    cmake --build "$build" -j"$jobs" --target test_cuda_mamba >>"$out/mutants.log" 2>&1
fi

print_summary || status=1
exit $status
