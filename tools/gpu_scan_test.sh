#!/usr/bin/env bash
# gpu_scan_test.sh — build the CUDA Mamba kernels (src/cuda/scan.cu, conv1d.cu), check them
# against the CPU kernels and time the scan, on a GPU machine, in one device-tool call
# (docs/gpu-scan.md). Same structure as tools/gpu_test.sh:
#   1. unpack libyaml and Check from .deps (tools/gpu_deps.sh; the call must carry .deps)
#   2. configure and build test_cuda_scan into build-gpu
#   3. ctest -R test_cuda_scan
#   4. timing: test_cuda_scan --bench (B=8 T=2048 di=1536 N=16 chunk 64, median of 25,
#      against the memory-traffic floor at 3.0 TB/s), then, where PyTorch with CUDA is
#      installed, a plain PyTorch sequential scan of the same size over T/8 steps,
#      extrapolated ×8
#   5. the test binary under compute-sanitizer memcheck
#   6. with --mutants: plant known bugs one at a time; the test must catch each
#   7. racecheck (shared-memory races; slow, so last)
# A short summary is printed last (the device tool returns the output's tail).
# Logs go to $OUT (the device tool's folder that comes back), else to runs/gpu_scan_test.
# Exit status: 0 if every step passed.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/gpu_lib.sh" gpu_scan_test   # root, out, build, jobs; .deps unpacked; set +e
test_bin=$build/tests/test_cuda_scan
device_info

status=0
configure_and_build test_cuda_scan || status=1
if [ $status -eq 0 ]; then
    run_step "ctest scan" "$out/ctest.log" \
        ctest --test-dir "$build" -R test_cuda_scan --output-on-failure || status=1
    cp "$build/Testing/Temporary/LastTest.log" "$out/test_cuda_scan.log" 2>/dev/null
    record_ctest test_cuda_scan "$out/ctest.log"

    run_step "bench" "$out/bench.log" timeout 120 "$test_bin" --bench || status=1

    # PyTorch reference: the recurrence of mamba_cpu.h written as plain tensor ops, one
    # time step per iteration (what a researcher without a fused kernel runs)
    cat >"$out/torch_scan.py" <<'EOF'
import statistics, sys, time
import torch
if not torch.cuda.is_available():
    print("torch: no CUDA"); sys.exit(0)
Bsz, T, di, N = 8, 2048, 1536, 16
steps = T // 8
dev = "cuda"
g = torch.Generator(device=dev).manual_seed(0)
u = torch.randn(Bsz, steps, di, device=dev, generator=g)
delta = torch.rand(Bsz, steps, di, device=dev, generator=g) * 0.5 + 0.001
A = -torch.arange(1, N + 1, device=dev, dtype=torch.float32).expand(di, N).contiguous()
B = torch.randn(Bsz, steps, N, device=dev, generator=g)
C = torch.randn(Bsz, steps, N, device=dev, generator=g)
D = torch.ones(di, device=dev)
def scan(u, delta, A, B, C, D):
    h = torch.zeros(Bsz, di, N, device=dev)
    ys = []
    for t in range(u.shape[1]):
        dt = delta[:, t, :, None]
        h = torch.exp(dt * A) * h + (dt * u[:, t, :, None]) * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])
    return torch.stack(ys, 1)
def timed(fn, reps=5):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3
with torch.no_grad():
    fwd = timed(lambda: scan(u, delta, A, B, C, D))
leaves = [x.clone().requires_grad_() for x in (u, delta, A, B, C, D)]
dy = torch.randn(Bsz, steps, di, device=dev, generator=g)
def fwd_bwd():
    y = scan(*leaves); y.backward(dy)
both = timed(fwd_bwd)
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: eager sequential scan, "
      f"B={Bsz} di={di} N={N}, timed over T/8 = {steps} steps (median of 5), x8 to T={T}:")
print(f"torch sequential scan forward           {fwd:9.2f} ms for {steps} steps -> EXTRAPOLATED {8*fwd:9.1f} ms for T={T}")
print(f"torch sequential scan backward (autograd) {both-fwd:7.2f} ms for {steps} steps -> EXTRAPOLATED {8*(both-fwd):9.1f} ms for T={T}")
EOF
    run_torch "torch reference" "$out/torch_scan.py"
    run_sanitizer memcheck memcheck 150 "$test_bin" || status=1
fi

MUTANT_TARGET=test_cuda_scan MUTANT_TIMEOUT=60
if [ $status -eq 0 ] && [ "${1:-}" = "--mutants" ]; then
    # patterns for the scan kernels as they are (4 states a thread, sub-tile checkpoints, the
    # forward's y reduce-scattered over G steps, whole tiles addressed by WholeRows)
    mutant scan.cu 's/return fmaf(Dq, uu, p_y);/return p_y;/' "scan forward drops D·u"
    mutant scan.cu 's/butterfly_reduce_scatter<G, 1, G>(v, q);/butterfly_reduce_scatter<G, G, G>(v, q);/' \
        "scan forward y keeps a lane's own partials (no sum over the channel's lanes)"
    mutant scan.cu 's/for (int off = 1; off < G; off \*= 2) v += __shfl_xor_sync/for (int off = 2; off < G; off *= 2) v += __shfl_xor_sync/' \
        "scan forward y of a partial tile misses its neighbour lane's sum"
    mutant scan.cu 's/const bool save_at_groups = chunk % SCAN_FWD_GROUP == 0;/const bool save_at_groups = chunk % 8 == 0;/' \
        "scan forward checks chunk saves once a group, chunks not group-aligned"
    mutant scan.cu 's/if (!ENDS \&\& t0 + g == next_save) save_state();/if (!ENDS \&\& g == 0 \&\& t0 + g == next_save) save_state();/' \
        "scan forward checks chunk saves only at tile starts"
    mutant scan.cu 's/y_tile\[(s0 + y_slot) \* CB + cl\] = v\[0\];/y_tile[(s0 + (G - 1 - y_slot)) * CB + cl] = v[0];/' \
        "scan forward stores a batch's reduce-scattered y to the wrong steps"
    mutant scan.cu 's/return off + ((size_t)t0 + (size_t)r \* RS) \* cols;/return off + ((size_t)t0 + (size_t)r * (RS - 1)) * cols;/' \
        "scan whole-tile rows of a thread's later rounds one row too close"
    mutant scan.cu 's/y_sum(tid \/ R::W4 + r \* R::RS, 4 \* (tid % R::W4))/y_sum(tid \/ R::W4 + r * R::RS, 4 * ((tid + 1) % R::W4))/' \
        "scan forward whole-tile y write-out takes its neighbour's channels"
    mutant scan.cu 's/r_C.load_whole(C, rows_n, ts0, tid);/r_C.load_whole(B, rows_n, ts0, tid);/' \
        "scan backward whole-tile prefetch takes C from B"
    mutant scan.cu 's/const RN rows_n((int)blockIdx.x \* Bsz + b, T, N, 0, tid);/const RN rows_n(b, T, N, 0, tid);/' \
        "scan backward whole-tile dB\/dC partials all in the first channel block's rows"
    mutant scan.cu 's/                for (; s < len; s++) {/                for (; s + 1 < len; s++) {/' \
        "scan backward recompute skips a ragged sub-tile's last state"
    mutant scan.cu 's/for (int k = 0; k < RB; k++) put_reverse(s - k, o\[k\]);/for (int k = 0; k < RB; k++) put_reverse(s - k, o[RB - 1 - k]);/' \
        "scan backward stores a batch's results to the wrong steps"
    mutant scan.cu 's/for (; s >= 0; s--) put_reverse(s, reverse_one(s));/for (; s >= 0; s--) reverse_one(s);/' \
        "scan backward drops a ragged sub-tile's first steps"
    mutant scan.cu 's/if (du) du\[at\] = overwrite ? du_t\[i\] : du\[at\] + du_t\[i\];/if (du) du[at] = du_t[i];/' "scan du overwritten, not accumulated"
    mutant scan.cu 's/if (du) \*(float4 \*)(du + at) = \*(const float4 \*)(du_t + s \* CB + jj);/if (du) add4(du + at, *(const float4 *)(du_t + s * CB + jj));/' \
        "scan write variant accumulates du onto what was there"
    mutant scan.cu 's/if (ddelta) ddelta\[at\] = overwrite ? gd : ddelta\[at\] + gd;/if (ddelta \&\& !overwrite) ddelta[at] += gd;/' \
        "scan write variant leaves ddelta unwritten (4-byte path)"
    mutant scan.cu 's/    d.x += a.x;/    d.x = a.x;/' "scan float4 du, ddelta overwritten, not accumulated"
    mutant scan.cu 's/if (ddelta) add4(ddelta + at, gd);/if (ddelta) *(float4 *)(ddelta + at) = gd;/' "scan float4 ddelta overwritten, not accumulated"
    mutant scan.cu 's/if (s < len \&\& col0 + j < cols) cp_async16/if (s < len \&\& col0 + j + 4 < cols) cp_async16/' "scan 16-byte staging drops a row's last piece"
    mutant scan.cu 's/for (int k = 0; k < n_parts; k++)/for (int k = 0; k + 1 < n_parts; k++)/' "scan dB/dC sum skips the last channel block"
    mutant scan.cu 's/for (int i = 0; i < SCAN_NPT; i++) h\[i\] = ck\[i\];/;/' "scan sub-tile ignores its checkpointed state"
    mutant scan.cu 's/if (ww == 0) load_saved(kk, saved_next);/if (ww == 0) load_saved(kk + 1 < n_chunks ? kk + 1 : kk, saved_next);/' \
        "scan backward prefetches the next chunk's saved state from the wrong chunk"
    mutant scan.cu 's/const float wgt = carry\[i\] \* prev\[i\];/const float wgt = (carry[i] + dyv * Cn[i]) * prev[i];/' \
        "scan backward's dA/dδ weight adds dy·C to the decayed carry"
    mutant scan.cu 's/if (nk != k) ck_j = -1;/if (nk != k) { ck_j = -1; for (int i = 0; i < SCAN_NPT; i++) carry[i] = 0.0f; }/' "scan drops the gradient carried across chunks"
    mutant scan.cu 's/h = ex2(a2 \* y\[((size_t)b \* T + ts) \* channels + c\]) \* h + \*at;/h = *at;/' "scan segment start drops the earlier segments"
    mutant scan.cu 's/carry\[i\] = carried \&\& live ? carried_in\[sn(i)\] : 0.0f;/carry[i] = 0.0f;/' "scan segment ignores the carry from its right"
    mutant scan.cu 's/                            advance(po, de, ie);/                            (void)de;/' \
        "scan backward pair: the odd step's h_{t-1} without the even step's input"
    mutant scan.cu 's/o\[k + 1\] = reverse(ie, pe, de);/o[k + 1] = reverse(ie, pe, dec);/' \
        "scan backward pair: the even step takes the odd step's decays"
    mutant scan.cu 's/if (S::HALF \&\& se != s) {/if (false) {/' \
        "scan backward single odd step takes the even step's state"
    mutant scan.cu 's/if (S::HALF \&\& s >= 0 \&\& (s \& 1) == 0) {/if (false) {/' \
        "scan backward pairs start on an even step (odd sub-tile)"
    mutant scan.cu 's/const int pm = S::SORTED ? base \/ 2 : 0;/const int pm = S::SORTED ? ((base \/ 2) ^ 3) : 0;/' \
        "scan backward lane order not its butterfly slot's"
    mutant scan.cu 's/for (int i = 0; i < SCAN_NPT; i++) st\[i\] = decay\[i\] \* st\[i\] + dtu \* in.Bn\[i\];/for (int i = 0; i < SCAN_NPT; i++) st[i] = decay[i] * st[i] + in.dt * in.Bn[i];/' \
        "scan backward odd step's state without u"
    mutant scan.cu 's/make_float4(a.z, a.w, a.x, a.y);/make_float4(a.w, a.z, a.x, a.y);/' \
        "scan backward B/C copy 2 swizzled wrong"
    mutant scan.cu 's/out\[(idx % 2) \* NP + n0 + idx \/ 2\]/out[(idx % 2) * NP + n0 + (idx \/ 2 ^ 1)]/' \
        "scan backward lane-order dB/dC sums to the neighbouring state"
    mutant scan.cu 's/if (n0 + sn(i) < N) at\[sn(i)\] = dA_acc\[i\];/if (n0 + sn(i) < N) at[i] = dA_acc[i];/' \
        "scan backward dA in register order, not state order"
    mutant scan.cu 's/butterfly_reduce_scatter<V, G, 32, S::SORTED ? 2 : 0>(v, lane);/butterfly_reduce_scatter<V, G, 32, S::SORTED ? 3 : 0>(v, lane);/' \
        "scan backward butterfly's kind level taken as sorted"
    mutant scan.cu 's/g\[i\] = ex2(dt \* A2\[i\]) \* (g\[i\] + dyv \* Cn\[i\]);/g[i] = ex2(dt * A2[i]) * g[i] + dyv * Cn[i];/' "scan carry pass decays one step late"
    mutant scan.cu 's/dA, dD, dA_part, dD_part, n_seg \* Bsz, channels, N);/dA, dD, dA_part, dD_part, Bsz, channels, N);/' "scan dA/dD sum misses the segments' partials"
    mutant conv1d.cu 's/y.v\[p\] = device_silu(y.v\[p\]);/y.v[p] = device_silu(-y.v[p]);/' "conv forward's silu of −a"
    mutant conv1d.cu 's/g.v\[p\] \*= device_silu_grad(a.v\[p\]);/g.v[p] *= device_silu_grad(a.v[0]);/' "conv through silu: every lane takes the first lane's silu'"
    mutant conv1d.cu 's/win\[i\] = t < T ? dout_row(t) : zero_lanes<P>();/win[i] = t < T ? load_lanes<P>(dout + base + (size_t)t * C) : zero_lanes<P>();/' "conv through silu: the first window rows skip the silu'"
    mutant scan.cu 's/gd.z \* sigmoid_of_softplus(d.z), gd.w \* sigmoid_of_softplus(d.w));/gd.z * sigmoid_of_softplus(d.z), gd.w);/' "scan softplus: one lane of four left as dδ (float4 path)"
    mutant scan.cu 's/softplus ? ddt_t\[i\] \* sigmoid_of_softplus(dt_t\[i\])/softplus ? ddt_t[i] * sigmoid_of_softplus(dt_t[i + 1])/' "scan softplus takes the next step's δ (4-byte path)"
    mutant scan.cu 's/-1.0f \/ 24), 1.0f \/ 6), -0.5f), 1.0f);/-1.0f \/ 24), 1.0f \/ 6), -0.4f), 1.0f);/' "scan softplus series below 1/4 wrong"
    mutant scan.cu 's/: 1.0f - ex2(-d \* LOG2E);/: 1.0f - ex2(-d);/' "scan softplus above 1/4 forgets log2 e"
    mutant scan.cu 's/SCAN_BWD_WRITE | (delta_softplus ? SCAN_BWD_DELTA_SOFTPLUS : 0)/SCAN_BWD_WRITE/' "scan write ignores delta_softplus"
    mutant conv1d.cu 's/if constexpr (std::is_same_v<DX, float>) d = load_lanes<P>(dx_t);/if constexpr (std::is_same_v<DX, float>) d = zero_lanes<P>();/' "conv1d dx overwritten, not accumulated"
    mutant conv1d.cu 's/for (int g = 0; g < CONV_WALKS; g++) sum +=/for (int g = 1; g < CONV_WALKS; g++) sum +=/' "conv1d dweight misses a walk"
    mutant conv1d.cu 's/win\[j\] = t >= 0 ? load_lanes<P>(xs + (size_t)t \* C) : zero_lanes<P>();/win[j] = zero_lanes<P>();/' "conv1d forward walk ignores the rows before it"
    mutant conv1d.cu 's/const int t = w.t0 + i - 1;/const int t = w.t0 + i;/' "conv1d backward window starts a row late"
    cmake --build "$build" -j"$jobs" --target test_cuda_scan >>"$out/mutants.log" 2>&1   # the real one again
fi

if [ $status -eq 0 ]; then
    run_sanitizer racecheck racecheck 120 "$test_bin" || status=1
fi

echo
print_test_report test_cuda_scan "$out/test_cuda_scan.log"
grep -E "ERROR SUMMARY" "$out/memcheck.log" 2>/dev/null | sed 's/^/  memcheck: /'
grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$out/racecheck.log" 2>/dev/null | sed 's/^/  racecheck: /'
echo "---- timing"
grep -E "^bench|^torch" "$out/bench.log" "$out/torch.log" 2>/dev/null | sed 's/^[^:]*://; s/^/  /'
print_summary || status=1
exit $status
