#!/usr/bin/env python3
"""bench_torch_gpu.py — the PyTorch reference that braid's CUDA training step is timed against.

What it measures (each result is one JSON line on stdout):

  {"what": "env"}    torch version, device, and which newer PyTorch features this run could
                     use (SDPA, its enable_gqa, fused AdamW, torch.compile, flex_attention,
                     grouped_mm, F.rms_norm); anything missing has a plain fallback.
  {"what": "check"}  with --check: the fast paths below against plain references on small
                     random cases (chunked vs sequential selective scan, chunked GLA vs its
                     recurrence, attention and sliding-window attention vs explicit masked
                     softmax, MoE dispatch vs per-token routing), outputs and gradients.
  {"what": "model"}  a whole training step of the hybrid model braid builds (DESIGN.md "The
                     math"; src/models/model.h): x0 = embed(tokens); per block
                     h = x + mixer(RMSNorm(x)), x' = h + ffn(RMSNorm(h)); logits =
                     RMSNorm(x_L) · Wembᵀ (tied); mean cross-entropy over targets != -100
                     plus the MoE load-balancing losses. Mixers by --pattern symbol: M Mamba-1,
                     A causal attention (GQA), W sliding-window attention, G gated linear
                     attention; FFNs by --ffn symbol: D dense SwiGLU, E MoE, - none.
                     A step is zero_grad(set_to_none) + forward + backward + grad-norm clip +
                     AdamW (fused where available). Median of --steps timed steps after
                     --warmup untimed ones, torch.cuda.synchronize() before and after each,
                     on random MQAR-shaped batches (random tokens; targets -100 except a few
                     query positions per row). tokens_per_s = batch·seq_len / median step.
  {"what": "model_hf_jamba"}  the same timing for Hugging Face's JambaForCausalLM with an
                     equivalent JambaConfig, when transformers has it (else "skipped").
  {"what": "op"}     single ops, forward+backward unless the name says otherwise, median of
                     --op-repeats (CUDA events on the GPU): cuBLAS matmul at the Mamba
                     in_proj shape, SDPA causal attention, sliding-window attention and GLA
                     (when the pattern has them), the selective scan alone (sequential and
                     chunked, and the faster of the two as "selective_scan"), and the MoE
                     layer (routing, dispatch, experts, combine).

How each FLOP / byte figure is counted (so braid's bench can use the same formulas):
  matmul       2·M·K·N                       (M = batch·seq_len, K = d, N = 2·d_inner)
  attention    4·B·H·T²·hd · ½ (causal) · 3.5   forward is two T×T×hd matmuls (QKᵀ, PV) at
               2 FLOP per multiply-add, half of them masked; the backward is five such
               matmuls, 2.5× the forward, so forward+backward = 3.5× forward.
  sliding win. 4·B·H·hd·Σ_t min(t+1, w) · 3.5   the same, counting only unmasked pairs.
  GLA (chunk)  3 · B·H·T·(2·L·(dk+dv) + 4·dk·dv)  what the chunked form computes: per chunk
               of L steps QKᵀ, (QKᵀ)V, Q·S and KᵀV; the backward ~2× the forward.
  MoE          3 · (6·S·d·H + 2·N·d·E)       S = N·top_k routed rows, each through a SwiGLU
               expert (three d×H matmuls) plus the router; backward 2× forward.
  scan bytes   fwd = 4·(3·B·T·di + 2·B·T·N)  fp32: read u, δ (B·T·di each), B, C (B·T·N
               each), write y (B·T·di); A and D are negligible. The backward is counted as
               2.5× that (read dy, u, δ, B, C; read-modify-write du, dδ, dB, dC), so
               forward+backward moves 3.5 · fwd bytes. These are the minimal bytes, the
               floor a fused kernel could reach; "gbps" is minimal bytes / time.

The selective scan, two ways (both float32, as braid computes it on every backend):
  sequential  h_t = exp(δ_t A) ⊙ h_{t-1} + δ_t u_t B_t, one torch.addcmul per step after all
              decays and inputs are precomputed in one pass each; y from all h_t at once.
  chunked     split T into chunks of L (--scan-chunk, 16). With S_t the cumulative
              log-decay Σ δ A from the chunk start and a reference step r in the middle
              of the chunk,
                  h_t = e^{S_t-S_r} · ( Σ_{s≤t} e^{-(S_s-S_r)} δ_s u_s B_s  +  e^{S_r} h_0 )
              so the intra-chunk part is one cumsum over pre-scaled inputs and one
              contraction with C, for all chunks at once; only the chunk-to-chunk state
              carry loops (T/L small steps). Because A does not depend on t, S_t = A·Δ_t
              with Δ = cumsum(δ): the cumsum runs over (B, T, di), not the (B, T, di, N)
              states ("factorized"). Mamba-1's decay differs per (channel, state), so the
              L×L "attention" form of Mamba-2/GLA would need B·T·di·N·L memory; this form
              needs B·T·di·N like the sequential scan.
              Range: every exponent must stay within ±80 (fp32's exp overflows past ~88):
              the factorized form is exact while δ·max|A| ≤ 80/(L/2) everywhere (10 at
              L = 16: δ ≤ 0.62 with Mamba's init A down to −16; δ at init is ≲ 0.1), which
              one max over δ decides per call (a host sync). Otherwise the "clamped" form
              cumsums the per-(channel, state) log-decays, each clamped at −80/(L/2): exact
              up to e^-10 on a step that forgets the state anyway, one more full-size pass.
              The model line reports how often each form ran. --check: both forms against
              the sequential scan, to 1e-4.

Usage (GPU, the lead's run; braid's bench beside it):
    python3 tools/bench_torch_gpu.py --pattern MMMAMMMM --ffn DEDEDEDE --d-model 1024 \\
        --batch 8 --seq-len 2048 --dtype bf16 --check
    python3 tools/bench_torch_gpu.py ... --compile          # torch.compile'd model
CPU smoke test (Debian's torch 1.13: use /usr/bin/python3):
    /usr/bin/python3 tools/bench_torch_gpu.py --device cpu --pattern MAMG --ffn DEDE \\
        --d-model 64 --n-heads 2 --n-kv-heads 1 --experts 4 --top-k 2 --vocab 256 \\
        --batch 2 --seq-len 128 --steps 2 --warmup 1 --check

Stands alone: nothing imported from braid or from other Mamba/GLA projects.
"""
import argparse
import contextlib
import json
import math
import platform
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# ---------------------------------------------------------------------------------------
# Output and timing helpers


def emit(obj):
    print(json.dumps(obj), flush=True)


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_op_ms(fn, device, repeats, warmup):
    """Median time of fn() in ms: on the GPU, CUDA events recorded on the stream before and
    after the call (so a launch-bound op counts its gaps too), on the CPU perf_counter."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return median(times)


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


# ---------------------------------------------------------------------------------------
# Feature detection: everything newer than torch 1.13 is probed, and falls back.

FEATURES = {
    "sdpa": hasattr(F, "scaled_dot_product_attention"),  # torch >= 2.0
    "sdpa_gqa": False,            # enable_gqa= (torch >= 2.5), probed in detect_features
    "fused_adamw": False,         # probed
    "compile": hasattr(torch, "compile"),
    "rms_norm": hasattr(F, "rms_norm"),  # torch >= 2.4
    "flex_attention": False,      # probed (CUDA only: eager flex_attention is a slow fallback)
    "grouped_mm": False,          # probed (CUDA, bf16)
}

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except Exception:  # noqa: BLE001 — any import problem means "not available"
    create_block_mask = flex_attention = None

GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def compiler_disable(fn):
    """Keeps torch.compile out of fn: the sequential scan (T unrolled steps would take
    forever to compile) and the per-expert loop (data-dependent sizes would recompile on
    every new routing). A no-op where torch.compile does not exist."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "disable"):
        return compiler.disable(fn)
    dynamo = getattr(torch, "_dynamo", None)
    if dynamo is not None and hasattr(dynamo, "disable"):
        return dynamo.disable(fn)
    return fn


def make_adamw(groups, lr, device):
    """AdamW as braid's (β 0.9/0.95, eps 1e-8); fused=True where this torch and device
    have it, else foreach, else the plain loop."""
    kw = dict(lr=lr, betas=(0.9, 0.95), eps=1e-8)
    for extra in ({"fused": True}, {"foreach": True}, {}):
        # fresh group dicts each try: the optimizer writes its defaults (fused=...) into them
        fresh = [dict(g) if isinstance(g, dict) else g for g in groups]
        try:
            opt = torch.optim.AdamW(fresh, **kw, **extra)
            return opt, (list(extra)[0] if extra else "for-loop")
        except (TypeError, RuntimeError, ValueError):
            continue
    raise RuntimeError("torch.optim.AdamW could not be built")


def autocast_ctx(device, dtype_name):
    if dtype_name == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compute_dtype(dtype_name):
    return torch.bfloat16 if dtype_name == "bf16" else torch.float32


# ---------------------------------------------------------------------------------------
# Normalization and positions


def rms_norm(x, weight, eps):
    if FEATURES["rms_norm"]:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def apply_rope(x, base=10000.0):
    """x (B, H, T, hd): rotate the pairs (i, i + hd/2) by position·base^(-2i/hd), as braid's
    rope (and HF's rotate_half). Tables in fp32, result back in x's dtype."""
    T, hd = x.shape[-2], x.shape[-1]
    half = hd // 2
    inv = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) * 2.0 / hd)
    ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


# ---------------------------------------------------------------------------------------
# Attention: causal (A) and sliding-window (W). q (B, H, T, hd), k/v (B, Hkv, T, hd).
# Query head h reads kv head h // (H/Hkv), as braid's GQA (and repeat_interleave).


def attention_reference(q, k, v, window=0):
    """Explicit masked softmax in fp32: the fallback without SDPA and the --check reference."""
    H, Hkv, T = q.shape[1], k.shape[1], q.shape[2]
    if Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~band_mask(T, window, q.device), float("-inf"))
    return (s.softmax(-1) @ v.float()).to(q.dtype)


def device_key(device):
    """"cuda" and "cuda:0" name the same GPU: one cache key for both."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return "cuda:%d" % torch.cuda.current_device()
    return str(device)


_MASKS = {}


def band_mask(T, window, device):
    """(T, T) bool, True where query t may read key s: s ≤ t and (window = 0 or t - s < window)."""
    key = (T, window, device_key(device))
    if key not in _MASKS:
        t = torch.arange(T, device=device)
        m = t[None, :] <= t[:, None]
        if window:
            m &= (t[:, None] - t[None, :]) < window
        _MASKS[key] = m
    return _MASKS[key]


def sdpa(q, k, v, is_causal=True, attn_mask=None):
    """F.scaled_dot_product_attention with GQA via enable_gqa where it exists, else by
    repeating k and v (the same math, more memory traffic)."""
    H, Hkv = q.shape[1], k.shape[1]
    if Hkv != H and FEATURES["sdpa_gqa"]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                              enable_gqa=True)
    if Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


def causal_attention(q, k, v):
    if FEATURES["sdpa"]:
        return sdpa(q, k, v, is_causal=True)
    return attention_reference(q, k, v)


_FLEX = {}


def flex_compiled():
    if "fn" not in _FLEX:
        # flex_attention is only fast compiled; eager it runs an unfused T×T fallback
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


_BLOCK_MASKS = {}


def window_block_mask(T, window, device):
    key = (T, window, device_key(device))
    if key not in _BLOCK_MASKS:
        def in_window(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx < window)
        _BLOCK_MASKS[key] = create_block_mask(in_window, None, None, T, T, device=str(device))
    return _BLOCK_MASKS[key]


def window_attention(q, k, v, window, impl):
    """Sliding-window attention: flex_attention with a block mask (skips whole blocks
    outside the band) where available, else SDPA with an explicit band mask (T×T bool;
    the efficient kernel still streams it), else the explicit reference."""
    T = q.shape[2]
    if impl == "flex":
        gqa = k.shape[1] != q.shape[1]
        return flex_compiled()(q, k, v, block_mask=window_block_mask(T, window, q.device), enable_gqa=gqa)
    if FEATURES["sdpa"]:
        return sdpa(q, k, v, is_causal=False, attn_mask=band_mask(T, window, q.device))
    return attention_reference(q, k, v, window)


class Attention(nn.Module):
    """q/k/v/o projections without bias (one fused qkv matmul), optional RoPE, GQA."""

    def __init__(self, d, n_heads, n_kv_heads, window, rope, swa_impl, init_std, o_std):
        super().__init__()
        self.H, self.Hkv, self.hd = n_heads, n_kv_heads, d // n_heads
        self.window, self.rope, self.swa_impl = window, rope, swa_impl
        self.qkv = nn.Linear(d, (n_heads + 2 * n_kv_heads) * self.hd, bias=False)
        self.o = nn.Linear(n_heads * self.hd, d, bias=False)
        nn.init.normal_(self.qkv.weight, std=init_std)
        nn.init.normal_(self.o.weight, std=o_std)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.H * self.hd, self.Hkv * self.hd, self.Hkv * self.hd], dim=-1)
        q = q.view(B, T, self.H, self.hd).transpose(1, 2)
        k = k.view(B, T, self.Hkv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.Hkv, self.hd).transpose(1, 2)
        if self.rope:
            q, k = apply_rope(q), apply_rope(k)
        if self.window:
            a = window_attention(q, k, v, self.window, self.swa_impl)
        else:
            a = causal_attention(q, k, v)
        return self.o(a.transpose(1, 2).reshape(B, T, self.H * self.hd))


# ---------------------------------------------------------------------------------------
# Mamba-1 and its selective scan. u, δ (B, T, di); A (di, N); Bm, Cm (B, T, N); D (di).
# y_t = h_t · C_t + D ⊙ u_t with h_t = exp(δ_t A) ⊙ h_{t-1} + (δ_t u_t) B_t, h_0 = 0.

# exponents in the chunked forms stay within ±EXP_RANGE (fp32's exp overflows past ~88.7)
EXP_RANGE = 80.0


def selective_scan_sequential(u, delta, A, Bm, Cm, D):
    """One step of the recurrence per iteration: the plain-PyTorch scan. All decays and
    inputs are made in one pass each first, so a step is a single addcmul; unbind (not
    indexing) hands out the per-step slices, because each indexing op's backward would
    write a zero-filled full-size gradient (O(T²) traffic)."""
    u, delta, Bm, Cm = u.float(), delta.float(), Bm.float(), Cm.float()
    Bsz, T, di = u.shape
    N = A.shape[1]
    decay = torch.exp(delta.unsqueeze(-1) * A)                       # (B, T, di, N)
    inp = (delta * u).unsqueeze(-1) * Bm.unsqueeze(2)                # (B, T, di, N)
    h = u.new_zeros(Bsz, di, N)
    states = []
    for a_t, x_t in zip(decay.unbind(1), inp.unbind(1)):
        h = torch.addcmul(x_t, a_t, h)
        states.append(h)
    hs = torch.stack(states, dim=1)                                  # (B, T, di, N)
    return torch.einsum("btdn,btn->btd", hs, Cm) + D * u


SCAN_PATHS = {"factorized": 0, "clamped": 0}   # how often each chunked form ran (reported)


def selective_scan_chunked(u, delta, A, Bm, Cm, D, chunk=16, path="auto"):
    """The chunked scan (the file's docstring has the algebra and its range).
    Two ways to get the cumulative log-decay S_t = Σ_{s≤t} δ_s A inside a chunk:
      factorized  S_t = A·Δ_t with Δ the running sum of δ: the cumsum runs over
                  (B, T, di), never over the (B, T, di, N) states. Exact while every
                  exponent fits, i.e. while δ·max|A| ≤ max_step everywhere.
      clamped     the per-(channel, state) log-decays δA, clamped at -max_step, summed
                  over (B, T, di, N): one more full-size cumsum, exact up to e^-max_step
                  on steps that forget the state anyway.
    path="auto" takes the factorized form when it is exact (one max over δ: a host sync)."""
    u, delta, Bm, Cm = u.float(), delta.float(), Bm.float(), Cm.float()
    Bsz, T, di = u.shape
    N = A.shape[1]
    L = chunk
    nc = -(-T // L)
    pad = nc * L - T
    if pad:  # δ = 0 on padding: decay 1 and no input, so the carried state is unchanged
        u, delta = F.pad(u, (0, 0, 0, pad)), F.pad(delta, (0, 0, 0, pad))
        Bm, Cm = F.pad(Bm, (0, 0, 0, pad)), F.pad(Cm, (0, 0, 0, pad))
    r = L // 2 - 1                                                   # reference step in each chunk
    # exponents are sums of at most L−1−r per-step log-decays: keep them within ±EXP_RANGE
    max_step = EXP_RANGE / max(1, L - 1 - r)
    if path == "auto":
        path = "factorized" if float(delta.detach().amax()) * float(A.detach().abs().amax()) <= max_step else "clamped"
    SCAN_PATHS[path] += 1
    if path == "factorized":
        cum = delta.view(Bsz, nc, L, di).cumsum(2).unsqueeze(-1)     # Δ_t, (B, nc, L, di, 1)
        S_rel = (cum - cum[:, :, r:r + 1]) * A                       # S_t − S_r, (B, nc, L, di, N)
        S_last, S_ref = cum[:, :, -1] * A, cum[:, :, r] * A          # (B, nc, di, N)
    else:
        S = (delta.unsqueeze(-1) * A).clamp(min=-max_step).view(Bsz, nc, L, di, N).cumsum(2)
        S_rel = S - S[:, :, r:r + 1]
        S_last, S_ref = S[:, :, -1], S[:, :, r]
    grow = torch.exp(S_rel)                                          # decay from r to t (> 1 for t < r)
    x_B = (delta * u).view(Bsz, nc, L, di, 1) * Bm.view(Bsz, nc, L, 1, N)
    # Σ_{s≤t} e^{−(S_s − S_r)} δ_s u_s B_s: the inputs scaled back to the reference, summed
    k_cum = (x_B / grow).cumsum(2)                                   # (B, nc, L, di, N)
    # each chunk's final state from a zero start, and its total decay
    h_local = grow[:, :, -1] * k_cum[:, :, -1]                       # (B, nc, di, N)
    chunk_decay = torch.exp(S_last)                                  # (B, nc, di, N)
    # carry the true state across chunks: h0[c+1] = decay[c] ⊙ h0[c] + h_local[c]
    h = u.new_zeros(Bsz, di, N)
    starts = []
    for a_c, b_c in zip(chunk_decay.unbind(1), h_local.unbind(1)):
        starts.append(h)
        h = torch.addcmul(b_c, a_c, h)
    h0 = torch.stack(starts, dim=1)                                  # (B, nc, di, N)
    # h_t = e^{S_t − S_r} (k_cum_t + e^{S_r} h0) ;  y_t = h_t · C_t
    states = grow * (k_cum + (torch.exp(S_ref) * h0).unsqueeze(2))
    y = torch.einsum("bcldn,bcln->bcld", states, Cm.view(Bsz, nc, L, N)).reshape(Bsz, nc * L, di)[:, :T]
    return y + D * u[:, :T]


def selective_scan(u, delta, A, Bm, Cm, D, impl, chunk, recompute):
    fn = selective_scan_sequential if impl == "sequential" else selective_scan_chunked
    args = (u, delta, A, Bm, Cm, D) if impl == "sequential" else (u, delta, A, Bm, Cm, D, chunk)
    if recompute and torch.is_grad_enabled():
        # keep only the inputs; the backward re-runs the scan (as braid recomputes states
        # per chunk instead of storing all of h)
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


# torch.compile stays out of the scan unless --compile-scan (set in main)
SCAN_ENTRY = {"fn": compiler_disable(selective_scan)}


class Mamba(nn.Module):
    """Mamba-1 mixer: in_proj → [x1, z]; u = silu(causal depthwise conv1d(x1) + bias);
    x_proj → [δr, B, C]; δ = softplus(dt_proj(δr) + b); A = -exp(A_log); scan;
    out_proj(y ⊙ silu(z)). Inits as braid's mamba.c (mamba-ssm's)."""

    def __init__(self, d, d_state, expand, d_conv, dt_rank, scan, scan_chunk, recompute):
        super().__init__()
        di, N, R = expand * d, d_state, dt_rank
        self.di, self.N, self.R, self.k = di, N, R, d_conv
        self.scan, self.scan_chunk, self.recompute = scan, scan_chunk, recompute
        self.in_proj = nn.Linear(d, 2 * di, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(di, 1, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(di))
        self.x_proj = nn.Linear(di, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, di, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=False)
        with torch.no_grad():
            for w, bound in ((self.in_proj.weight, d ** -0.5), (self.conv_weight, d_conv ** -0.5),
                             (self.conv_bias, d_conv ** -0.5), (self.x_proj.weight, di ** -0.5),
                             (self.dt_proj.weight, R ** -0.5), (self.out_proj.weight, di ** -0.5)):
                w.uniform_(-bound, bound)
            # b_dt = inverse softplus of dt drawn log-uniform in [0.001, 0.1]
            dt = torch.exp(torch.rand(di) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x):
        B, T, _ = x.shape
        x1, z = self.in_proj(x).split(self.di, dim=-1)
        conv = F.conv1d(x1.transpose(1, 2), self.conv_weight.to(x1.dtype), self.conv_bias.to(x1.dtype),
                        padding=self.k - 1, groups=self.di)[..., :T]
        u = F.silu(conv.transpose(1, 2))                             # (B, T, di)
        dtr, Bm, Cm = self.x_proj(u).split([self.R, self.N, self.N], dim=-1)
        delta = F.softplus(self.dt_proj(dtr).float())                # δ in fp32, as the scan
        A = -torch.exp(self.A_log.float())
        y = SCAN_ENTRY["fn"](u, delta, A, Bm, Cm, self.D.float(), self.scan, self.scan_chunk, self.recompute)
        return self.out_proj((y * F.silu(z.float())).to(x1.dtype))


# ---------------------------------------------------------------------------------------
# Gated linear attention (braid's gla.c, fla's GatedLinearAttention layer).
# q, k (B, H, T, dk), v (B, H, T, dv), log_alpha (B, H, T, dk) ≤ 0, q already scaled:
#   S_t = diag(α_t) S_{t-1} + k_tᵀ v_t,  o_t = q_t S_t


def gla_recurrent(q, k, v, log_alpha):
    """Step-by-step recurrence in fp32: the --check reference."""
    q, k, v, alpha = q.float(), k.float(), v.float(), log_alpha.float().exp()
    Bsz, H, T, dk = q.shape
    S = q.new_zeros(Bsz, H, dk, v.shape[-1])
    out = []
    for t in range(T):
        S = alpha[:, :, t, :, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        out.append(torch.einsum("bhc,bhce->bhe", q[:, :, t], S))
    return torch.stack(out, dim=2)


def gla_chunked(q, k, v, log_alpha, chunk=64):
    """Chunked GLA (Yang et al. 2024's chunkwise form). Decays per key channel are
    cumulated in fp32 inside each chunk; the intra-chunk part is (q̃ k̃ᵀ ⊙ causal) v with
    q̃, k̃ scaled to a reference in the middle of the chunk (exponents within ±80: one
    level of chunking suffices because α = sigmoid(.)^(1/16) decays slowly; per-step
    log α is clamped at -80/(L/2), i.e. logsigmoid below -40, which never occurs in
    practice); the inter-chunk part carries the (dk, dv) state with a loop over chunks.
    Matmuls run in the autocast dtype, decays in fp32."""
    Bsz, H, T, dk = q.shape
    dv = v.shape[-1]
    L = min(chunk, T)
    nc = -(-T // L)
    pad = nc * L - T
    if pad:  # zero q/k/v and log α = 0 on padding: no output, state unchanged
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_alpha = F.pad(log_alpha, (0, 0, 0, pad))
    r = L // 2 - 1 if L > 1 else 0
    max_step = EXP_RANGE / max(1, L - 1 - r)
    la = log_alpha.float().clamp(min=-max_step).view(Bsz, H, nc, L, dk)
    S = la.cumsum(3)                                                 # (B, H, nc, L, dk)
    ref = S[:, :, :, r:r + 1]
    last = S[:, :, :, -1:]
    qc, kc, vc = q.view(Bsz, H, nc, L, dk), k.view(Bsz, H, nc, L, dk), v.view(Bsz, H, nc, L, dv)
    q_ref = qc.float() * torch.exp(S - ref)
    k_ref = kc.float() * torch.exp(ref - S)
    scores = q_ref @ k_ref.transpose(-1, -2)                         # (B, H, nc, L, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    o = scores.masked_fill(~causal, 0.0) @ vc                        # intra-chunk
    k_to_end = kc.float() * torch.exp(last - S)                      # decay from s to chunk end, ≤ 1
    kv = (k_to_end.transpose(-1, -2) @ vc).float()                   # (B, H, nc, dk, dv)
    chunk_decay = torch.exp(last.squeeze(3)).unsqueeze(-1)           # (B, H, nc, dk, 1)
    state = kv.new_zeros(Bsz, H, dk, dv)                             # carried in fp32
    starts = []
    for a_c, kv_c in zip(chunk_decay.unbind(2), kv.unbind(2)):
        starts.append(state)
        state = torch.addcmul(kv_c, a_c, state)
    states = torch.stack(starts, dim=2)                              # (B, H, nc, dk, dv)
    o = o + (qc.float() * torch.exp(S)) @ states                     # inter-chunk: q_t e^{S_t} S_start
    return o.reshape(Bsz, H, nc * L, dv)[:, :, :T]


class GLA(nn.Module):
    """GLA mixer as braid's gla.c ("gla" mode): Dk = expand_k·d (0.5), Dv = expand_v·d (1),
    low-rank (16) gate with normalizer 16, per-head RMSNorm ⊙ swish(g), o_proj."""

    def __init__(self, d, n_heads, chunk, init_std, o_std, eps, expand_k=0.5, expand_v=1.0,
                 gate_rank=16, gate_normalizer=16.0):
        super().__init__()
        self.H, self.Dk, self.Dv = n_heads, int(expand_k * d), int(expand_v * d)
        self.dk, self.dv = self.Dk // n_heads, self.Dv // n_heads
        self.chunk, self.eps, self.gate_normalizer = chunk, eps, gate_normalizer
        self.qkvg = nn.Linear(d, 2 * self.Dk + 2 * self.Dv, bias=False)   # q, k, v, g fused
        self.gk0 = nn.Linear(d, gate_rank, bias=False)
        self.gk1 = nn.Linear(gate_rank, self.Dk, bias=True)
        self.o = nn.Linear(self.Dv, d, bias=False)
        self.g_norm = nn.Parameter(torch.ones(self.dv))
        for w in (self.qkvg.weight, self.gk0.weight, self.gk1.weight):
            nn.init.normal_(w, std=init_std)
        nn.init.zeros_(self.gk1.bias)
        nn.init.normal_(self.o.weight, std=o_std)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v, g = self.qkvg(x).split([self.Dk, self.Dk, self.Dv, self.Dv], dim=-1)
        log_alpha = F.logsigmoid(self.gk1(self.gk0(x)).float()) / self.gate_normalizer

        def heads(t, w):
            return t.reshape(B, T, self.H, w).transpose(1, 2)
        o = gla_chunked(heads(q, self.dk) * self.dk ** -0.5, heads(k, self.dk), heads(v, self.dv),
                        heads(log_alpha, self.dk), self.chunk)
        o = rms_norm(o.transpose(1, 2).float(), self.g_norm, self.eps)   # (B, T, H, dv)
        return self.o((o.reshape(B, T, self.Dv) * F.silu(g.float())).to(v.dtype))


# ---------------------------------------------------------------------------------------
# FFNs


class SwiGLU(nn.Module):
    """(silu(x W_gate) ⊙ x W_up) W_down, gate and up as one matmul."""

    def __init__(self, d, hidden, init_std, o_std):
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        nn.init.normal_(self.gate_up.weight, std=init_std)
        nn.init.normal_(self.down.weight, std=o_std)

    def forward(self, x):
        g, u = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(g) * u)


@compiler_disable
def experts_loop(xg, counts, w_gate_up, w_down, hidden):
    """Each expert's SwiGLU on its contiguous block of gathered rows, one matmul per
    expert and projection; counts.tolist() is the one host sync per layer."""
    outs = []
    start = 0
    for e, c in enumerate(counts.tolist()):
        if c == 0:
            continue
        g, u = F.linear(xg[start:start + c], w_gate_up[e]).split(hidden, dim=-1)
        outs.append(F.linear(F.silu(g) * u, w_down[e]))
        start += c
    return torch.cat(outs, dim=0)


def experts_grouped(xg, counts, w_gate_up, w_down, hidden, dtype):
    """All experts in two grouped GEMMs (torch's grouped_mm: rows of expert e are
    offs[e-1]..offs[e]-1); no host sync. mat_b is (E, K, N): the weights transposed."""
    offs = counts.cumsum(0).to(torch.int32)
    gu = GROUPED_MM(xg.to(dtype), w_gate_up.to(dtype).transpose(1, 2), offs=offs)
    g, u = gu.split(hidden, dim=-1)
    return GROUPED_MM(F.silu(g) * u, w_down.to(dtype).transpose(1, 2), offs=offs)


def moe_route(xs, w_router, top_k, renormalize):
    """Router: p = softmax(x W_rᵀ) in fp32, the top-k experts (descending p) and their
    combine weights (renormalized to sum 1 when asked, as Mixtral)."""
    probs = F.linear(xs, w_router).float().softmax(-1)               # (N, E)
    top_w, top_e = probs.topk(top_k, dim=-1)                         # (N, k)
    if renormalize:
        top_w = top_w / top_w.sum(-1, keepdim=True)
    return probs, top_w, top_e


def moe_forward(xs, w_router, w_gate_up, w_down, top_k, renormalize, aux_coef, impl, grouped_dtype=torch.bfloat16):
    """xs (N, d) → (y (N, d), aux). Dispatch: the N·k (token, rank) slots are sorted by
    expert, the token rows gathered, each expert runs on its contiguous block; the
    combine un-sorts and sums each token's k weighted outputs (a gather, no atomics).
    Switch load-balancing loss aux = coef·E·Σ_e f_e P_e, f_e = routed count / N (a
    constant), P_e = mean router probability."""
    N, E, hidden = xs.shape[0], w_router.shape[0], w_down.shape[-1]
    probs, top_w, top_e = moe_route(xs, w_router, top_k, renormalize)
    flat_e = top_e.reshape(-1)                                       # slot = token·k + rank
    # counts by scatter_add (a static shape, unlike bincount, so torch.compile keeps it)
    counts = torch.zeros(E, dtype=torch.long, device=xs.device).scatter_add_(0, flat_e, torch.ones_like(flat_e))
    aux = aux_coef * E * (counts.float() / N * probs.mean(0)).sum()
    order = torch.sort(flat_e, stable=True)[1]                       # slots grouped by expert
    xg = xs[order // top_k]
    if impl == "grouped":
        yg = experts_grouped(xg, counts, w_gate_up, w_down, hidden, grouped_dtype)
    else:
        yg = experts_loop(xg, counts, w_gate_up, w_down, hidden)
    yg = yg.float() * top_w.reshape(-1)[order].unsqueeze(-1)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    y = yg.index_select(0, inverse).view(N, top_k, -1).sum(1)
    return y.to(xs.dtype), aux


def moe_reference(xs, w_router, w_gate_up, w_down, top_k, renormalize):
    """Every expert on every token, weighted by the token's routing weight for it (zero
    if not chosen): the --check reference for the dispatch (same routing, no sorting)."""
    hidden = w_down.shape[-1]
    _, top_w, top_e = moe_route(xs, w_router, top_k, renormalize)
    y = torch.zeros_like(xs)
    for e in range(w_router.shape[0]):
        g, u = F.linear(xs, w_gate_up[e]).split(hidden, dim=-1)
        weight = (top_w * (top_e == e)).sum(-1, keepdim=True)
        y = y + weight * F.linear(F.silu(g) * u, w_down[e])
    return y


class MoE(nn.Module):
    """E SwiGLU experts (gate and up stacked: w_gate_up (E, 2H, d); w_down (E, d, H)),
    softmax router without bias, top-k; see moe_forward."""

    def __init__(self, d, experts, top_k, hidden, renormalize, aux_coef, impl, init_std, o_std):
        super().__init__()
        self.k, self.renormalize, self.aux_coef, self.impl = top_k, renormalize, aux_coef, impl
        self.router = nn.Linear(d, experts, bias=False)
        self.w_gate_up = nn.Parameter(torch.empty(experts, 2 * hidden, d))
        self.w_down = nn.Parameter(torch.empty(experts, d, hidden))
        nn.init.normal_(self.router.weight, std=init_std)
        nn.init.normal_(self.w_gate_up, std=init_std)
        nn.init.normal_(self.w_down, std=o_std)

    def forward(self, x):
        y, aux = moe_forward(x.reshape(-1, x.shape[-1]), self.router.weight, self.w_gate_up, self.w_down,
                             self.k, self.renormalize, self.aux_coef, self.impl)
        return y.view(x.shape), aux


# ---------------------------------------------------------------------------------------
# The model


class HybridLM(nn.Module):
    def __init__(self, a):
        super().__init__()
        d, L = a.d_model, len(a.pattern)
        self.vocab, self.eps = a.vocab, a.norm_eps
        o_std = a.init_std / math.sqrt(2 * L)                       # GPT-2 residual scaling
        self.embed = nn.Embedding(a.vocab, d)
        nn.init.normal_(self.embed.weight, std=a.init_std)
        self.norms1, self.mixers, self.norms2, self.ffns = (nn.ModuleList() for _ in range(4))
        for m, f in zip(a.pattern, a.ffn):
            if m == "M":
                mixer = Mamba(d, a.d_state, a.expand, a.d_conv, a.dt_rank, a.scan, a.scan_chunk, a.scan_recompute)
            elif m in "AW":
                mixer = Attention(d, a.n_heads, a.n_kv_heads, a.window if m == "W" else 0,
                                  a.position == "rope", a.swa_impl, a.init_std, o_std)
            elif m == "G":
                mixer = GLA(d, a.gla_heads, a.gla_chunk, a.init_std, o_std, a.norm_eps)
            else:
                raise ValueError("pattern symbol %r: expected M, A, W or G" % m)
            if f == "D":
                ffn = SwiGLU(d, a.dense_hidden, a.init_std, o_std)
            elif f == "E":
                ffn = MoE(d, a.experts, a.top_k, a.moe_hidden, a.renormalize, a.aux_coef, a.moe_impl,
                          a.init_std, o_std)
            elif f == "-":
                ffn = nn.Identity()  # placeholder, skipped in forward
            else:
                raise ValueError("ffn symbol %r: expected D, E or -" % f)
            self.norms1.append(RMSNorm(d, a.norm_eps))
            self.mixers.append(mixer)
            self.norms2.append(RMSNorm(d, a.norm_eps))
            self.ffns.append(ffn)
        self.has_ffn = [f != "-" for f in a.ffn]
        self.final_norm = RMSNorm(d, a.norm_eps)

    def forward(self, tokens, targets):
        x = self.embed(tokens)
        aux = x.new_zeros(())
        for n1, mixer, n2, ffn, has_ffn in zip(self.norms1, self.mixers, self.norms2, self.ffns, self.has_ffn):
            x = x + mixer(n1(x))
            if has_ffn:
                y = ffn(n2(x))
                if isinstance(y, tuple):
                    y, a_loss = y
                    aux = aux + a_loss
                x = x + y
        logits = self.final_norm(x) @ self.embed.weight.t()          # tied LM head
        ce = F.cross_entropy(logits.view(-1, self.vocab).float(), targets.view(-1), ignore_index=-100)
        return ce + aux


def param_groups(model, weight_decay):
    """braid's defaults: decay matrices; no decay on embeddings, norms, biases, A_log, D."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        big = p.dim() >= 2 and "embed" not in name and "A_log" not in name
        (decay if big else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def mqar_batches(n, B, T, vocab, device, seed):
    """Random MQAR-shaped batches: tokens uniform in [0, vocab); targets -100 everywhere
    except K = max(1, T/16) query positions per row in the second half, whose targets are
    random values. The loss' cost does not depend on which positions, only the shapes."""
    g = torch.Generator().manual_seed(seed)
    K = max(1, min(T // 16, T - T // 2))
    out = []
    for _ in range(n):
        tokens = torch.randint(vocab, (B, T), generator=g)
        targets = torch.full((B, T), -100, dtype=torch.long)
        pos = T // 2 + torch.rand(B, T - T // 2, generator=g).argsort(-1)[:, :K]
        targets.scatter_(1, pos, torch.randint(vocab, (B, K), generator=g))
        out.append((tokens.to(device), targets.to(device)))
    return out


def time_training(step, batches, steps, warmup, device):
    times = []
    for i in range(warmup + steps):
        tokens, targets = batches[i % len(batches)]
        sync(device)
        t0 = time.perf_counter()
        step(tokens, targets)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        # each step on stderr: a slow reference killed by a time limit still leaves its steps
        print("  step %d/%d%s: %.1f ms" % (i + 1, warmup + steps, " (warm-up)" if i < warmup else "",
                                           1e3 * (time.perf_counter() - t0)), file=sys.stderr, flush=True)
    return median(times)


def prepare_window_masks(a, device):
    """The sliding window's mask (flex_attention's block mask, or SDPA's band mask) is
    built once per (T, window) here, in eager mode, so a compiled model only looks it up."""
    if "W" in a.pattern:
        if a.swa_impl == "flex":
            window_block_mask(a.seq_len, a.window, device)
        else:
            band_mask(a.seq_len, a.window, device)


def bench_model(a, device):
    torch.manual_seed(a.seed)
    model = HybridLM(a).to(device)
    prepare_window_masks(a, device)
    n_params = sum(p.numel() for p in model.parameters())
    opt, opt_kind = make_adamw(param_groups(model, 0.1), 1e-3, device)
    fwd = model
    compiled = False
    if a.compile:
        if FEATURES["compile"]:
            fwd = torch.compile(model, mode=a.compile_mode)
            compiled = True
        else:
            emit({"what": "warning", "msg": "--compile: this torch has no torch.compile; timing eager"})
    params = [p for p in model.parameters()]

    def step(tokens, targets):
        opt.zero_grad(set_to_none=True)
        with autocast_ctx(device, a.dtype):
            loss = fwd(tokens, targets)
        loss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, a.clip)
        opt.step()
        return loss

    batches = mqar_batches(4, a.batch, a.seq_len, a.vocab, device, a.seed)
    for key in SCAN_PATHS:
        SCAN_PATHS[key] = 0
    # one untimed step first to check the loss is finite (and to compile, if asked)
    compile_error = None
    try:
        loss = step(*batches[0])
    except Exception as e:  # noqa: BLE001 — a failed compile is reported, then timed eager
        if not compiled:
            raise
        compile_error = "%s: %s" % (type(e).__name__, str(e)[:300])
        emit({"what": "warning", "msg": "torch.compile failed, timing eager: " + compile_error})
        fwd, compiled = model, False
        loss = step(*batches[0])
    if not torch.isfinite(loss).item():
        raise RuntimeError("model loss is %s on the first step" % loss.item())
    med = time_training(step, batches, a.steps, max(0, a.warmup - 1), device)
    out = {"what": "model", "tokens_per_s": round(a.batch * a.seq_len / med, 1),
           "step_ms": round(1e3 * med, 3), "params": n_params, "dtype": a.dtype, "compile": compiled,
           "scan": a.scan, "device": device_name(device),
           "pattern": a.pattern, "ffn": a.ffn, "d_model": a.d_model, "batch": a.batch, "seq_len": a.seq_len,
           "vocab": a.vocab, "optimizer": "AdamW " + opt_kind, "scan_recompute": a.scan_recompute,
           "scan_chunk": a.scan_chunk, "scan_paths": dict(SCAN_PATHS) if a.scan == "chunked" else None,
           "moe_impl": a.moe_impl, "swa_impl": a.swa_impl,
           "torch": torch.__version__, "loss": round(float(loss), 4)}
    if compile_error:
        out["compile_error"] = compile_error
    if device.type == "cuda":
        out["max_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    emit(out)


# ---------------------------------------------------------------------------------------
# Hugging Face Jamba, when transformers has it


def layer_period(symbols, hit):
    """(period, offset) with block i a hit exactly when i % period == offset, or None."""
    L = len(symbols)
    want = [s == hit for s in symbols]
    for p in range(1, L + 2):
        for o in range(p):
            if [i % p == o for i in range(L)] == want:
                return p, o
    return None


def bench_hf_jamba(a, device):
    try:
        from transformers import JambaConfig, JambaForCausalLM
    except Exception as e:  # noqa: BLE001
        reason = "transformers not installed" if isinstance(e, ModuleNotFoundError) else "no Jamba: %s" % e
        emit({"what": "model_hf_jamba", "skipped": reason})
        return
    if set(a.pattern) - set("MA") or set(a.ffn) - set("DE"):
        emit({"what": "model_hf_jamba", "skipped": "pattern/ffn not expressible in Jamba (only M/A mixers, D/E ffns)"})
        return
    attn, experts = layer_period(a.pattern, "A"), layer_period(a.ffn, "E")
    if attn is None or experts is None:
        emit({"what": "model_hf_jamba", "skipped": "pattern not periodic as Jamba's attn/expert_layer_period"})
        return
    notes = []
    if a.moe_hidden != a.dense_hidden:
        notes.append("Jamba has one intermediate_size; used dense_hidden for experts too")
    if a.position == "rope":
        notes.append("Jamba's attention has no RoPE")
    if a.renormalize and "E" in a.ffn:
        notes.append("Jamba does not renormalize the top-k router weights")
    notes.append("Jamba's Mamba has RMSNorms on dt, B, C (braid: inner_norms)")
    try:
        import importlib.util
        kernels = all(importlib.util.find_spec(m) is not None for m in ("mamba_ssm", "causal_conv1d"))
        cfg = JambaConfig(
            vocab_size=a.vocab, tie_word_embeddings=True, hidden_size=a.d_model,
            intermediate_size=a.dense_hidden, num_hidden_layers=len(a.pattern),
            num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
            num_experts=max(a.experts, 1), num_experts_per_tok=a.top_k,
            expert_layer_period=experts[0], expert_layer_offset=experts[1],
            attn_layer_period=attn[0], attn_layer_offset=attn[1],
            mamba_d_state=a.d_state, mamba_d_conv=a.d_conv, mamba_expand=a.expand, mamba_dt_rank=a.dt_rank,
            mamba_conv_bias=True, mamba_proj_bias=False, use_mamba_kernels=kernels,
            output_router_logits="E" in a.ffn, router_aux_loss_coef=a.aux_coef, rms_norm_eps=a.norm_eps,
            initializer_range=a.init_std, use_cache=False, max_position_embeddings=max(a.seq_len, 4096))
        try:
            cfg._attn_implementation = "sdpa" if FEATURES["sdpa"] else "eager"
        except Exception:  # noqa: BLE001 — older/newer configs: keep their default
            pass
        torch.manual_seed(a.seed)
        model = JambaForCausalLM(cfg).to(device)
        model.train()
        n_params = sum(p.numel() for p in model.parameters())
        opt, opt_kind = make_adamw(param_groups(model, 0.1), 1e-3, device)
        params = list(model.parameters())

        def step(tokens, targets):
            opt.zero_grad(set_to_none=True)
            with autocast_ctx(device, a.dtype):
                loss = model(input_ids=tokens, labels=targets, use_cache=False).loss
            loss.backward()
            if a.clip > 0:
                torch.nn.utils.clip_grad_norm_(params, a.clip)
            opt.step()

        batches = mqar_batches(4, a.batch, a.seq_len, a.vocab, device, a.seed)
        med = time_training(step, batches, a.steps, a.warmup, device)
        import transformers
        emit({"what": "model_hf_jamba", "tokens_per_s": round(a.batch * a.seq_len / med, 1),
              "step_ms": round(1e3 * med, 3), "params": n_params, "dtype": a.dtype, "compile": False,
              "device": device_name(device), "mamba_kernels": kernels, "transformers": transformers.__version__,
              "attn_layer_period": attn, "expert_layer_period": experts, "optimizer": "AdamW " + opt_kind,
              "notes": notes})
    except Exception as e:  # noqa: BLE001 — a reference that cannot run is reported, not fatal
        emit({"what": "model_hf_jamba", "skipped": "error: %s: %s" % (type(e).__name__, str(e)[:300])})


# ---------------------------------------------------------------------------------------
# Per-op timings


def op_line(op, shape, ms, fwd_ms=None, **metric):
    out = {"what": "op", "op": op, "shape": shape, "ms": round(ms, 4)}
    if fwd_ms is not None:
        out["fwd_ms"] = round(fwd_ms, 4)
    out.update(metric)
    emit(out)


def fwd_bwd_fn(f, leaves, seed=0):
    """Returns (forward+backward closure, forward-only closure) for f() -> tensor."""
    with torch.no_grad():
        probe = f()
    grad = torch.randn(probe.shape, generator=torch.Generator().manual_seed(seed)).to(probe.device, probe.dtype)
    del probe

    def both():
        for t in leaves:
            t.grad = None
        f().backward(grad)

    def forward():
        with torch.no_grad():
            f()
    return both, forward


class OpBench:
    """Shared shape, seeded random inputs and the timer for the per-op benchmarks; each
    op_* function below builds its inputs, times them and frees them on return."""

    def __init__(self, a, device):
        self.a, self.device, self.dt = a, device, compute_dtype(a.dtype)
        self.g = torch.Generator().manual_seed(a.seed)

    def randn(self, *shape, scale=1.0, dtype=None, grad=False):
        t = (torch.randn(*shape, generator=self.g) * scale).to(self.device, dtype or self.dt)
        return t.requires_grad_() if grad else t

    def timed(self, fn):
        return time_op_ms(fn, self.device, self.a.op_repeats, self.a.op_warmup)

    def dtype_name(self):
        return str(self.dt).replace("torch.", "")


def op_matmul(o):
    """cuBLAS through torch at the Mamba in_proj shape: (B·T, d) · (d, 2·di), forward only."""
    a = o.a
    M, K, N = a.batch * a.seq_len, a.d_model, 2 * a.expand * a.d_model
    x, w = o.randn(M, K), o.randn(K, N, scale=K ** -0.5)
    ms = o.timed(lambda: x @ w)
    op_line("matmul_in_proj", {"M": M, "K": K, "N": N, "dtype": o.dtype_name()}, ms,
            tflops=round(2.0 * M * K * N / (ms * 1e-3) / 1e12, 3))


def op_attention(o):
    """SDPA causal at (B, T, H, hd) with the model's kv heads; then the sliding window."""
    a = o.a
    B, T, H, Hkv, hd = a.batch, a.seq_len, a.n_heads, a.n_kv_heads, a.d_model // a.n_heads
    q = o.randn(B, H, T, hd, grad=True)
    k, v = o.randn(B, Hkv, T, hd, grad=True), o.randn(B, Hkv, T, hd, grad=True)
    shape = {"B": B, "T": T, "H": H, "Hkv": Hkv, "hd": hd, "dtype": o.dtype_name()}
    both, fwd = fwd_bwd_fn(lambda: causal_attention(q, k, v), [q, k, v])
    ms, fms = o.timed(both), o.timed(fwd)
    flops_fwd = 4.0 * B * H * T * T * hd * 0.5
    op_line("attention" + ("" if FEATURES["sdpa"] else "_reference"), shape, ms, fms,
            tflops=round(3.5 * flops_fwd / (ms * 1e-3) / 1e12, 3), fwd_tflops=round(flops_fwd / (fms * 1e-3) / 1e12, 3))
    if "W" in a.pattern:
        prepare_window_masks(a, o.device)
        pairs = sum(min(t + 1, a.window) for t in range(T))
        both, fwd = fwd_bwd_fn(lambda: window_attention(q, k, v, a.window, a.swa_impl), [q, k, v])
        ms, fms = o.timed(both), o.timed(fwd)
        flops_fwd = 4.0 * B * H * hd * pairs
        op_line("sliding_window_attention", dict(shape, window=a.window, impl=a.swa_impl), ms, fms,
                tflops=round(3.5 * flops_fwd / (ms * 1e-3) / 1e12, 3), fwd_tflops=round(flops_fwd / (fms * 1e-3) / 1e12, 3))


def op_scan(o):
    """The selective scan alone, fp32: u, δ, A, B, C, D → y; both implementations, then
    the faster one as "selective_scan". δ is drawn in Mamba's init range [0.001, 0.1]."""
    a = o.a
    B, T, di, N = a.batch, a.seq_len, a.expand * a.d_model, a.d_state
    f32 = torch.float32
    u = o.randn(B, T, di, dtype=f32, grad=True)
    delta = torch.exp(torch.rand(B, T, di, generator=o.g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
    delta = delta.to(o.device).requires_grad_()
    A = (-torch.arange(1, N + 1, dtype=f32).repeat(di, 1)).to(o.device).requires_grad_()
    Bm, Cm = o.randn(B, T, N, dtype=f32, grad=True), o.randn(B, T, N, dtype=f32, grad=True)
    Dp = torch.ones(di, device=o.device).requires_grad_()
    inputs = [u, delta, A, Bm, Cm, Dp]
    fwd_bytes = 4.0 * (3 * B * T * di + 2 * B * T * N)          # read u, δ, B, C; write y (fp32)
    # "chunked" takes the factorized form here (δ at init); "chunked_clamped" is what it
    # costs once δ·|A| is too large for it (trained models): timed for reference only
    impls = {"chunked": lambda: selective_scan_chunked(*inputs, chunk=a.scan_chunk),
             "sequential": lambda: selective_scan_sequential(*inputs),
             "chunked_clamped": lambda: selective_scan_chunked(*inputs, chunk=a.scan_chunk, path="clamped")}
    results = {}
    for impl, f in impls.items():
        try:
            both, fwd = fwd_bwd_fn(f, inputs)
            ms, fms = o.timed(both), o.timed(fwd)
        except RuntimeError as e:  # e.g. out of memory at a large shape
            emit({"what": "op", "op": "selective_scan_" + impl, "skipped": str(e)[:200]})
            if o.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        results[impl] = (ms, fms)
        op_line("selective_scan_" + impl, {"B": B, "T": T, "di": di, "N": N,
                                           "chunk": None if impl == "sequential" else a.scan_chunk},
                ms, fms, gbps=round(3.5 * fwd_bytes / (ms * 1e-3) / 1e9, 2),
                fwd_gbps=round(fwd_bytes / (fms * 1e-3) / 1e9, 2))
    results.pop("chunked_clamped", None)
    if results:
        best = min(results, key=lambda i: results[i][0])
        ms, fms = results[best]
        op_line("selective_scan", {"B": B, "T": T, "di": di, "N": N, "impl": best}, ms, fms,
                gbps=round(3.5 * fwd_bytes / (ms * 1e-3) / 1e9, 2), fwd_gbps=round(fwd_bytes / (fms * 1e-3) / 1e9, 2),
                bytes_fwd_bwd=int(3.5 * fwd_bytes))


def op_gla(o):
    """The chunked GLA core (q, k, v, log α → o) at the model's GLA shape."""
    a = o.a
    B, T, Hg = a.batch, a.seq_len, a.gla_heads
    dk, dv = int(0.5 * a.d_model) // Hg, a.d_model // Hg
    q = o.randn(B, Hg, T, dk, scale=dk ** -0.5, grad=True)
    k, v = o.randn(B, Hg, T, dk, grad=True), o.randn(B, Hg, T, dv, grad=True)
    la = (F.logsigmoid(torch.randn(B, Hg, T, dk, generator=o.g) + 3.0) / 16.0).to(o.device).requires_grad_()
    with autocast_ctx(o.device, a.dtype):
        both, fwd = fwd_bwd_fn(lambda: gla_chunked(q, k, v, la, a.gla_chunk), [q, k, v, la])
        ms, fms = o.timed(both), o.timed(fwd)
    L = min(a.gla_chunk, T)
    flops_fwd = B * Hg * T * (2.0 * L * (dk + dv) + 4.0 * dk * dv)
    op_line("gla_chunked", {"B": B, "T": T, "H": Hg, "dk": dk, "dv": dv, "chunk": L}, ms, fms,
            tflops=round(3 * flops_fwd / (ms * 1e-3) / 1e12, 3))


def op_moe(o):
    """The MoE layer on B·T tokens: router, top-k, dispatch, experts, combine, aux loss."""
    a = o.a
    d, Ntok = a.d_model, a.batch * a.seq_len
    moe = MoE(d, a.experts, a.top_k, a.moe_hidden, a.renormalize, a.aux_coef, a.moe_impl, a.init_std,
              a.init_std).to(o.device)
    x = o.randn(Ntok, d, dtype=torch.float32, grad=True)

    def moe_out():
        y, aux = moe(x)
        return y + aux  # the aux loss' gradient path through the router included
    with autocast_ctx(o.device, a.dtype):
        both, fwd = fwd_bwd_fn(moe_out, [x] + list(moe.parameters()))
        ms, fms = o.timed(both), o.timed(fwd)
    flops_fwd = 6.0 * Ntok * a.top_k * d * a.moe_hidden + 2.0 * Ntok * d * a.experts
    op_line("moe", {"tokens": Ntok, "d": d, "experts": a.experts, "top_k": a.top_k, "hidden": a.moe_hidden,
                    "impl": a.moe_impl}, ms, fms, tflops=round(3 * flops_fwd / (ms * 1e-3) / 1e12, 3))


def bench_ops(a, device):
    o = OpBench(a, device)
    ops = [op_matmul, op_attention, op_scan]
    if "G" in a.pattern:
        ops.append(op_gla)
    if "E" in a.ffn:
        ops.append(op_moe)
    for op in ops:
        op(o)
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# --check: fast paths against plain references, outputs and gradients


def compare(name, f_fast, f_ref, inputs, tol, seed=0):
    """Runs both on clones of inputs, compares outputs and input gradients. Passes when
    max |fast - ref| <= tol · max(1, max |ref|) for the output and every gradient."""
    outs, grads = [], []
    dy = None
    for f in (f_fast, f_ref):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        y = f(*leaves)
        if dy is None:
            dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.device, y.dtype)
        y.backward(dy)
        outs.append(y.detach())
        grads.append([t.grad for t in leaves])
    worst = 0.0
    for a_, b_ in [(outs[0], outs[1])] + list(zip(grads[0], grads[1])):
        if b_ is None:
            continue
        err = (a_.float() - b_.float()).abs().max().item() / max(1.0, b_.float().abs().max().item())
        worst = max(worst, err)
    ok = worst <= tol
    emit({"what": "check", "name": name, "max_rel_err": float("%.3g" % worst), "tol": tol, "ok": ok})
    return ok


def run_checks(a, device):
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 checks
    g = torch.Generator().manual_seed(1234)

    def rn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)
    ok = True
    # selective scan: T not a multiple of the chunk, δ around mamba's init range and above
    Bsz, T, di, N = 2, 37, 8, 6
    u, Bm, Cm, Dp = rn(Bsz, T, di), rn(Bsz, T, N), rn(Bsz, T, N), rn(di)
    delta = F.softplus(rn(Bsz, T, di, scale=0.5) - 2.0)            # ≈ 0.03 … 0.5
    A_log = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(di, 1).to(device)
    A = -torch.exp(A_log + rn(di, N, scale=0.1))                    # Mamba's init, perturbed
    for chunk in sorted({a.scan_chunk, 8}):
        for path in ("factorized", "clamped"):
            ok &= compare("selective_scan chunked(L=%d, %s) vs sequential" % (chunk, path),
                          lambda *t: selective_scan_chunked(*t, chunk=chunk, path=path), selective_scan_sequential,
                          [u, delta, A, Bm, Cm, Dp], 1e-4)
    # large δ (trained-model-like, δ·|A| up to ~60): the auto path clamps; the state is forgotten
    # within a step where it does, so the result still matches to 1e-4
    big = F.softplus(rn(Bsz, T, di) + 1.0) * 3.0
    ok &= compare("selective_scan chunked(L=%d, auto, large delta) vs sequential" % a.scan_chunk,
                  lambda *t: selective_scan_chunked(*t, chunk=a.scan_chunk), selective_scan_sequential,
                  [u, big, A, Bm, Cm, Dp], 1e-4)
    # GLA chunked vs recurrence: T not a multiple of the chunk
    Hh, T2, dk, dv = 2, 45, 4, 8
    la = F.logsigmoid(rn(Bsz, Hh, T2, dk, scale=2.0)) / 4.0          # faster decay than the model's /16
    ok &= compare("gla chunked(L=16) vs recurrence", lambda q, k, v, l: gla_chunked(q, k, v, l, 16), gla_recurrent,
                  [rn(Bsz, Hh, T2, dk, scale=0.5), rn(Bsz, Hh, T2, dk), rn(Bsz, Hh, T2, dv), la], 1e-4)
    # attention (causal and window, GQA) vs the explicit masked softmax; 1e-3 because the fused
    # kernels accumulate the softmax online in a different order
    Hq, Hk, T3, hd = 4, 2, 50, 16
    qkv = [rn(Bsz, Hq, T3, hd), rn(Bsz, Hk, T3, hd), rn(Bsz, Hk, T3, hd)]
    ok &= compare("attention causal GQA (%s) vs reference" % ("sdpa" if FEATURES["sdpa"] else "reference"),
                  causal_attention, attention_reference, qkv, 1e-3)
    ok &= compare("sliding-window attention w=7 (%s) vs reference" % a.swa_impl,
                  lambda q, k, v: window_attention(q, k, v, 7, a.swa_impl),
                  lambda q, k, v: attention_reference(q, k, v, 7), qkv, 1e-3)
    # MoE dispatch vs per-token routing (grouped GEMMs run only in bf16: the loop is checked
    # here in fp32; the grouped path is checked against the loop when it is probed)
    d_, E_, H_ = 16, 4, 24
    moe_in = [rn(33, d_), rn(E_, d_, scale=0.8), rn(E_, 2 * H_, d_, scale=0.3), rn(E_, d_, H_, scale=0.3)]
    ok &= compare("moe dispatch (sorted, per-expert loop) vs per-token",
                  lambda x, wr, wgu, wd: moe_forward(x, wr, wgu, wd, 2, True, 0.0, "loop")[0],
                  lambda x, wr, wgu, wd: moe_reference(x, wr, wgu, wd, 2, True), moe_in, 1e-4)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return ok


# ---------------------------------------------------------------------------------------
# Probes for the GPU-only fast paths (run once, on the real device, dtype and shapes)


def probe_flex(a, device):
    if flex_attention is None or device.type != "cuda" or not FEATURES["compile"]:
        return "flex_attention unavailable (needs torch >= 2.5, CUDA)"
    try:
        dt = compute_dtype(a.dtype)
        T, hd = min(a.seq_len, 512), a.d_model // a.n_heads
        q = torch.randn(1, a.n_heads, T, hd, device=device, dtype=dt, requires_grad=True)
        k = torch.randn(1, a.n_kv_heads, T, hd, device=device, dtype=dt, requires_grad=True)
        v = torch.randn(1, a.n_kv_heads, T, hd, device=device, dtype=dt, requires_grad=True)
        y = window_attention(q, k, v, a.window, "flex")
        y.float().sum().backward()
        ref = attention_reference(q.detach().float(), k.detach().float(), v.detach().float(), a.window)
        err = (y.detach().float() - ref).abs().max().item()
        if not err < 5e-2:
            return "flex_attention disagrees with the reference (max err %.3g)" % err
        return None
    except Exception as e:  # noqa: BLE001
        return "flex_attention failed: %s: %s" % (type(e).__name__, str(e)[:200])


def probe_grouped_mm(a, device):
    if GROUPED_MM is None or device.type != "cuda":
        return "grouped_mm unavailable (needs torch >= 2.8, CUDA)"
    if a.dtype != "bf16":
        return "grouped_mm runs in bf16 only; --dtype float32 uses the per-expert loop"
    try:
        d, Hd, E = a.d_model, a.moe_hidden, max(a.experts, 2)
        gen = torch.Generator().manual_seed(7)
        counts = torch.tensor([5] + [0] + [3 * (i + 1) for i in range(E - 2)], device=device)  # an empty group too
        S = int(counts.sum())
        xg = (torch.randn(S, d, generator=gen) * 0.5).to(device).requires_grad_()
        wgu = (torch.randn(E, 2 * Hd, d, generator=gen) * d ** -0.5).to(device).requires_grad_()
        wd = (torch.randn(E, d, Hd, generator=gen) * Hd ** -0.5).to(device).requires_grad_()
        y = experts_grouped(xg, counts, wgu, wd, Hd, torch.bfloat16)
        y.float().sum().backward()
        ref = experts_loop(xg.detach().bfloat16(), counts, wgu.detach().bfloat16(), wd.detach().bfloat16(), Hd)
        err = (y.detach().float() - ref.float()).abs().max().item() / max(1e-6, ref.float().abs().max().item())
        if not err < 5e-2:
            return "grouped_mm disagrees with the loop (rel err %.3g)" % err
        if wgu.grad is None or xg.grad is None:
            return "grouped_mm has no backward here"
        return None
    except Exception as e:  # noqa: BLE001
        return "grouped_mm failed: %s: %s" % (type(e).__name__, str(e)[:200])


def detect_features(a, device):
    notes = {}
    if FEATURES["sdpa"]:
        try:
            q = torch.zeros(1, 2, 4, 8, device=device)
            kv = torch.zeros(1, 1, 4, 8, device=device)
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
            FEATURES["sdpa_gqa"] = True
        except (TypeError, RuntimeError):
            notes["sdpa_gqa"] = "no enable_gqa: k and v are repeated per query head"
    else:
        notes["sdpa"] = "no F.scaled_dot_product_attention (torch < 2.0): explicit masked softmax"
    _, kind = make_adamw([torch.zeros(1, device=device, requires_grad=True)], 1e-3, device)
    FEATURES["fused_adamw"] = kind == "fused"
    if not FEATURES["fused_adamw"]:
        notes["fused_adamw"] = "AdamW " + kind
    if not FEATURES["compile"]:
        notes["compile"] = "no torch.compile (torch < 2.0)"
    need_swa = "W" in a.pattern
    if a.swa_impl in ("auto", "flex") and need_swa:
        why = probe_flex(a, device)
        FEATURES["flex_attention"] = why is None
        if why:
            if a.swa_impl == "flex":
                raise SystemExit("--swa-impl flex: " + why)
            notes["flex_attention"] = why + "; sliding window via SDPA + band mask"
    if a.swa_impl == "auto":
        a.swa_impl = "flex" if FEATURES["flex_attention"] else "mask"
    if a.moe_impl in ("auto", "grouped") and "E" in a.ffn:
        why = probe_grouped_mm(a, device)
        FEATURES["grouped_mm"] = why is None
        if why:
            if a.moe_impl == "grouped":
                raise SystemExit("--moe-impl grouped: " + why)
            notes["grouped_mm"] = why + "; MoE experts in a per-expert loop"
    if a.moe_impl == "auto":
        a.moe_impl = "grouped" if FEATURES["grouped_mm"] else "loop"
    return notes


# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pattern", default="MMMAMMMM", help="mixer per block: M mamba, A attention, W sliding window, G gla")
    ap.add_argument("--ffn", default="DEDEDEDE", help="ffn per block: D dense SwiGLU, E MoE, - none")
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--n-heads", type=int, default=16)
    ap.add_argument("--n-kv-heads", type=int, default=0, help="0 = n_heads")
    ap.add_argument("--window", type=int, default=256, help="sliding window of W blocks")
    ap.add_argument("--position", choices=["none", "rope"], default="none",
                    help="attention positions (braid's default none)")
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--expand", type=int, default=2)
    ap.add_argument("--d-conv", type=int, default=4)
    ap.add_argument("--dt-rank", type=int, default=0, help="0 = ceil(d_model/16)")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--moe-hidden", type=int, default=0, help="0 = dense hidden")
    ap.add_argument("--dense-hidden", type=int, default=0, help="0 = 8/3·d rounded up to 8")
    ap.add_argument("--no-renormalize", dest="renormalize", action="store_false", help="top-k weights not renormalized")
    ap.add_argument("--aux-coef", type=float, default=0.01, help="MoE load-balancing loss weight")
    ap.add_argument("--gla-heads", type=int, default=4)
    ap.add_argument("--gla-chunk", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["float32", "bf16"], default="float32",
                    help="bf16 = torch.autocast(bfloat16) with fp32 master weights")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in float32 (off by default, as braid's cuBLAS)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (the scan stays eager unless --compile-scan)")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode")
    ap.add_argument("--compile-scan", action="store_true", help="let torch.compile trace the chunked scan too")
    ap.add_argument("--scan", choices=["sequential", "chunked"], default="chunked", help="the model's selective scan")
    ap.add_argument("--scan-chunk", type=int, default=16, help="chunk of the chunked scan (2 … 16: see the docstring)")
    ap.add_argument("--scan-recompute", choices=["auto", "on", "off"], default="auto",
                    help="checkpoint the scan (recompute in backward); auto: on when its saved states would "
                         "not fit in half the GPU's memory")
    ap.add_argument("--swa-impl", choices=["auto", "flex", "mask"], default="auto")
    ap.add_argument("--moe-impl", choices=["auto", "grouped", "loop"], default="auto")
    ap.add_argument("--clip", type=float, default=1.0, help="grad-norm clip as braid's train.grad_clip (0 = off)")
    ap.add_argument("--op-repeats", type=int, default=10)
    ap.add_argument("--op-warmup", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="check fast paths against references first")
    ap.add_argument("--ops-only", action="store_true")
    ap.add_argument("--model-only", action="store_true")
    ap.add_argument("--no-hf", action="store_true", help="skip the Hugging Face Jamba timing")
    ap.add_argument("--hf-only", action="store_true",
                    help="only the Hugging Face Jamba timing (its slow path can take minutes a step)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    a.norm_eps, a.init_std = 1e-6, 0.02
    if len(a.pattern) != len(a.ffn):
        ap.error("--pattern and --ffn must have one symbol per block")
    if set(a.pattern) - set("MAWG") or set(a.ffn) - set("DE-"):
        ap.error("--pattern takes M, A, W, G; --ffn takes D, E, -")
    a.n_kv_heads = a.n_kv_heads or a.n_heads
    if a.scan_chunk < 2 or a.gla_chunk < 1:
        ap.error("--scan-chunk must be >= 2 and --gla-chunk >= 1")
    if a.d_model % a.n_heads or a.n_heads % a.n_kv_heads:
        ap.error("n_heads must divide d_model and n_kv_heads must divide n_heads")
    if a.position == "rope" and (a.d_model // a.n_heads) % 2:
        ap.error("rope needs an even head_dim")
    a.dt_rank = a.dt_rank or -(-a.d_model // 16)
    a.dense_hidden = a.dense_hidden or ((8 * a.d_model + 2) // 3 + 7) // 8 * 8
    a.moe_hidden = a.moe_hidden or a.dense_hidden
    if a.ops_only and a.model_only:
        ap.error("--ops-only and --model-only exclude each other")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but this torch sees no GPU (use --device cpu for a smoke test)")
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    notes = detect_features(a, device)
    if a.compile_scan and a.scan == "chunked":
        SCAN_ENTRY["fn"] = selective_scan
    elif a.compile_scan:
        notes["compile_scan"] = "ignored for the sequential scan: T unrolled steps would take too long to compile"
    if a.scan_chunk > 16:
        notes["scan_chunk"] = ("chunk %d clamps per-step log-decays at -%.1f (> e^-10): the chunked scan is inexact "
                               "for fast-decaying states when δ is large" % (a.scan_chunk, EXP_RANGE / (a.scan_chunk // 2)))
    if a.scan_recompute == "auto":
        # what autograd keeps per Mamba layer: ~6 (chunked) / ~4 (sequential) fp32 tensors of B·T·di·N
        states = a.batch * a.seq_len * a.expand * a.d_model * a.d_state
        per_layer = 4.0 * states * (6 if a.scan == "chunked" else 4)
        budget = float("inf")
        if device.type == "cuda":
            budget = 0.5 * torch.cuda.get_device_properties(device).total_memory
        a.scan_recompute = a.pattern.count("M") * per_layer > budget
    else:
        a.scan_recompute = a.scan_recompute == "on"
    emit({"what": "env", "torch": torch.__version__, "python": sys.version.split()[0], "device": device_name(device),
          "cuda": torch.version.cuda, "features": FEATURES, "fallbacks": notes, "tf32": a.tf32,
          "swa_impl": a.swa_impl, "moe_impl": a.moe_impl, "scan_recompute": a.scan_recompute,
          "threads": torch.get_num_threads()})
    failed = False
    if a.check:
        failed = not run_checks(a, device)
    if a.hf_only:
        bench_hf_jamba(a, device)
        return
    if not a.ops_only:
        bench_model(a, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if a.no_hf:
            emit({"what": "model_hf_jamba", "skipped": "--no-hf"})
        else:
            bench_hf_jamba(a, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not a.model_only:
        bench_ops(a, device)
    if failed:
        raise SystemExit("a --check failed (see the check lines)")


if __name__ == "__main__":
    main()
