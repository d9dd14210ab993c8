#!/usr/bin/env bash
# gpu_attention_test.sh — build the CUDA attention kernels (src/cuda/attention.cu, float32 on
# the CUDA cores; attention_tc.cu, TF32 or bf16 on the tensor cores), check them against the CPU op
# (attention_wgmma.cu: the bf16 forward on Hopper's wgmma) and time them beside PyTorch's
# SDPA, on a GPU machine, in one device-tool call
# (docs/gpu.md). Same structure as tools/gpu_scan_test.sh:
#   1. unpack libyaml and Check from .deps (tools/gpu_deps.sh; the call must carry .deps)
#   2. configure and build test_cuda_ops and bench into build-gpu
#   3. ctest -R test_cuda_ops (every op; attention at 11 shapes in float32, TF32 and bf16)
#   4. timing: bench --ops at jamba-small's shape (B 8, T 2048, H 12, Hkv 4, hd 64), the
#      attention rows; then PyTorch's SDPA at the same shape in float32 and bf16 (CUDA
#      events, median of 20), where PyTorch with CUDA is installed
#   5. test_cuda_ops under compute-sanitizer memcheck
#   6. with --mutants: plant known bugs in attention_tc.cu (TF32 and bf16), attention_wgmma.cu and
#      attention_common.cuh one at a time; the test must catch each
#   7. racecheck (shared-memory races; slow, so last)
# --quick skips 5 and 7 (the sanitizers): a first look at correctness and timing.
# A short summary is printed last (the device tool returns the output's tail).
# Logs go to $OUT (the device tool's folder that comes back), else to runs/gpu_attention_test.
# Exit status: 0 if every step passed.
set -uo pipefail
mutants=0 quick=0
for a in "$@"; do
    case "$a" in --mutants) mutants=1 ;; --quick) quick=1 ;;
        *) echo "gpu_attention_test.sh: unknown option $a (--mutants, --quick)" >&2; exit 2 ;; esac
done

source "$(dirname "${BASH_SOURCE[0]}")/gpu_lib.sh" gpu_attention_test   # root, out, build, jobs; .deps unpacked; set +e
test_bin=$build/tests/test_cuda_ops
device_info

status=0
configure_and_build test_cuda_ops bench || status=1
if [ $status -eq 0 ]; then
    run_step "ctest ops" "$out/ctest.log" \
        ctest --test-dir "$build" -R test_cuda_ops --output-on-failure || status=1
    cp "$build/Testing/Temporary/LastTest.log" "$out/test_cuda_ops.log" 2>/dev/null
    record_ctest test_cuda_ops "$out/ctest.log"

    run_step "bench --ops" "$out/bench_ops.log" timeout 300 "$build/bench" --ops \
        --config configs/jamba-small.yaml || status=1

    cat >"$out/torch_sdpa.py" <<'PY'
import statistics, sys
import torch
import torch.nn.functional as F
if not torch.cuda.is_available():
    print("torch: no CUDA"); sys.exit(0)
B, T, H, Hkv, hd = 8, 2048, 12, 4, 64
flops_fwd = 4.0 * B * H * T * T * hd / 2          # causal: half the pairs (bench_ops.c)
g = torch.Generator(device="cuda").manual_seed(0)
def timed(fn, reps=20, warm=3):
    for _ in range(warm): fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return statistics.median(ts)
for dtype in (torch.float32, torch.bfloat16):
    q = torch.randn(B, H, T, hd, device="cuda", generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(B, Hkv, T, hd, device="cuda", generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(B, Hkv, T, hd, device="cuda", generator=g, dtype=dtype).requires_grad_()
    do = torch.randn(B, H, T, hd, device="cuda", generator=g, dtype=dtype)
    f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    def fwd():
        with torch.no_grad(): f()
    def both():
        q.grad = k.grad = v.grad = None
        f().backward(do)
    ms_f, ms_b = timed(fwd), timed(both)
    name = str(dtype).replace("torch.", "")
    print(f"torch SDPA {name:8s} fwd {ms_f:7.3f} ms {flops_fwd / ms_f / 1e9:6.1f} TFLOP/s   "
          f"fwd+bwd {ms_b:7.3f} ms {3.5 * flops_fwd / ms_b / 1e9:6.1f} TFLOP/s")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}, B={B} T={T} H={H} Hkv={Hkv} hd={hd}")
PY
    run_torch "torch SDPA" "$out/torch_sdpa.py"

    if [ $quick -eq 1 ]; then
        record "memcheck" "skipped (--quick)" 0
    else
        run_sanitizer memcheck memcheck 200 "$test_bin" || status=1
    fi
fi

MUTANT_TARGET=test_cuda_ops MUTANT_TIMEOUT=120
if [ $status -eq 0 ] && [ $mutants -eq 1 ]; then
    mutant attention_tc.cu 's/const float x0 = x\[8 \* n\], x1 = x\[LD + 8 \* n\];/const float x0 = x[LD + 8 * n], x1 = x[8 * n];/' \
        "tc scores·rows: keys 2t, 2t+1 swapped"
    mutant attention_tc.cu 's/{ acc\[mt\]\[n\]\[2 \* half\] \*= corr; acc\[mt\]\[n\]\[2 \* half + 1\] \*= corr; }/acc[mt][n][2 * half] *= corr;/' \
        "tc forward rescales half the outputs"
    mutant attention_tc.cu 's/row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));//' \
        "tc forward row max misses two lanes"
    mutant attention_tc.cu 's/dq_row\[d\] += scale \* x/dq_row[d] = scale * x/' \
        "tc dq overwritten, not accumulated"
    mutant attention_tc.cu 's/if (d < hd) put(d, acc\[n\]\[2 \* half + e\]);/if (d < hd) put(d, acc[n][2 * half]);/' \
        "tc write-back (out, dq, dk, dv): odd columns get the even ones' values"
    mutant attention_common.cuh 's/-(c % 2 ? lse_c.y : lse_c.x)/-(c % 2 ? lse_c.x : lse_c.y)/' \
        "dk/dv (tc and wgmma) reads a neighbour's lse"
    mutant attention_common.cuh 's/if (!visible_at(g + 8 \* (c \/ 2), 8 \* n + 2 \* t + c % 2))/if (!visible_at(g + 8 * (c % 2), 8 * n + 2 * t + c % 2))/' \
        "mask (tc and wgmma): rows g and g+8 confused on diagonal tiles"
    mutant attention_common.cuh 's/k0 + nk - 1 <= q0 \&\&/k0 + nk - 1 <= q0 + nq - 1 \&\&/' \
        "tiles crossing the diagonal skip the mask (every kernel)"
    mutant attention_tc.cu 's/v.z = d + 2 < hd ? src\[2\] : 0.0f;/v.z = d + 3 < hd ? src[2] : 0.0f;/' \
        "tc operand copies drop dim 4k+2 of a ragged head (TF32 and bf16)"
    mutant attention_tc.cu 's/if (j0 + BC <= t_last) stage(st ^ 1, j0 + BC);/if (j0 + BC <= t_last) stage(st, j0 + BC);/' \
        "tc forward/dq: next K/V tile copied over the one in use"
    mutant attention_tc.cu 's/const int h_next = t0 + BR <= t_end ? h : h + 1,/const int h_next = t0 + BR <= t_end ? h : h + 2,/' \
        "tc dk/dv skips every other query head of its group"
    mutant attention_tc.cu 's/a\[mt\]\[0\] = pack_bf16(w\[mt\]\[2 \* kk\]\[0\], w\[mt\]\[2 \* kk\]\[1\]);/a[mt][0] = pack_bf16(w[mt][2 * kk][2], w[mt][2 * kk][3]);/' \
        "bf16 scores·rows: rows g and g+8 of P swapped"
    mutant attention_tc.cu 's/ldmatrix_x4<true>(bb, x_at/ldmatrix_x4<false>(bb, x_at/' \
        "bf16 scores·rows: V/K/Q/dO not transposed"
    mutant attention_tc.cu 's/ldmatrix_x4<false>(a1\[mt\], a_at + 16 \* mt \* LD + 16 \* ks + 16);/ldmatrix_x4<false>(a1[mt], a_at + 16 * mt * LD + 16 * ks);/' \
        "bf16 rows·rowsᵀ: second k-step reads the first"
    mutant attention_tc.cu 's/const float \*lo = a_lo + 16 \* mt \* LD + 8 \* kk, \*hi = lo + 8 \* LD;/const float *lo = a_lo + 8 * kk, *hi = lo + 8 * LD;/' \
        "tc TF32 rows·rowsᵀ: second m-tile reads the first's rows"
    mutant attention_tc.cu 's/ldmatrix_x4<false>(a0\[mt\], a_at + 16 \* mt \* LD + 16 \* ks);/ldmatrix_x4<false>(a0[mt], a_at + 16 * ks);/' \
        "bf16 rows·rowsᵀ: second m-tile reads the first's rows"
    mutant attention_wgmma.cu 's/return r \* 128 + ((c ^ (r \& 7)) << 4);/return r * 128 + (c << 4);/' \
        "wgmma: tiles stored unswizzled, read swizzled"
    mutant attention_wgmma.cu 's/%36, p, 1, 1, 1;/%36, p, 1, 1, 0;/' \
        "wgmma P·V: V read K-major, not transposed"
    mutant attention_wgmma.cu 's/wgmma_ss(acc, rows_desc(a, ks), rows_desc(b, ks), ks);/wgmma_ss(acc, rows_desc(a, 0), rows_desc(b, ks), ks);/' \
        "wgmma rows·rowsᵀ (Q·Kᵀ, dO·Vᵀ, ...): every 16-dim step reads A's first"
    mutant attention_wgmma.cu 's/o\[4 \* n + 2 \* half\] \*= corr, o\[4 \* n + 2 \* half + 1\] \*= corr;/o[4 * n + 2 * half] *= corr;/' \
        "wgmma forward rescales half the outputs"
    mutant attention_wgmma.cu 's/return visible(t0 + row0 + r, j0 + c, T, window);/return visible(t0 + row0 + r, j0 + (c \& ~1), T, window);/' \
        "wgmma forward/dq mask: odd key columns judged as the even ones"
    mutant attention_wgmma.cu 's/return visible(t0 + c, j0 + row0 + r, T, window);/return visible(t0 + c, j0 + row0 + (r \& ~1), T, window);/' \
        "wgmma dk/dv mask: odd key rows judged as the even ones"
    mutant attention_wgmma.cu 's/scores_times_cols(dk_acc, da, q_tile);/scores_times_cols(dk_acc, da, do_tile);/' \
        "wgmma dk: dSᵀ times dO instead of Q"
    mutant attention_wgmma.cu 's/-lse_r\[c \/ 2\]/-lse_r[0]/' \
        "wgmma dq: rows g+8 take row g's lse"
    mutant attention_wgmma.cu 's/if (j0 + 64 <= t_last) stage(buffer ^ 1, j0 + 64);/if (j0 + 64 <= t_last) stage(buffer, j0 + 64);/' \
        "wgmma dq: next K/V tile copied over the one in use"
    mutant attention_wgmma.cu 's/const int h_next = t0 + 64 <= t_end ? h : h + 1,/const int h_next = t0 + 64 <= t_end ? h : h + 2,/' \
        "wgmma dk/dv skips every other query head of its group"
    cmake --build "$build" -j"$jobs" --target test_cuda_ops >>"$out/mutants.log" 2>&1   # the real one again
fi

if [ $status -eq 0 ] && [ $quick -eq 0 ]; then
    run_sanitizer racecheck racecheck 450 "$test_bin" || status=1
fi

echo
print_test_report test_cuda_ops "$out/test_cuda_ops.log" | grep -iE "attention|Checks|:[EF]:|----"
grep -E "ERROR SUMMARY" "$out/memcheck.log" 2>/dev/null | sed 's/^/  memcheck: /'
grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$out/racecheck.log" 2>/dev/null | sed 's/^/  racecheck: /'
echo "---- timing"
grep -E "attention" "$out/bench_ops.log" 2>/dev/null | sed 's/^/  /'
grep -E "^torch" "$out/torch.log" 2>/dev/null | sed 's/^/  /'
print_summary || status=1
exit $status
