#!/usr/bin/env python3
"""bench_torch.py — the PyTorch reference for braid's CPU step timing.

Builds the same model braid trains (token embedding, pre-norm RMSNorm blocks, causal
attention with RoPE or a Mamba-1 mixer, SwiGLU FFN, final norm, tied LM head), and
times eager-mode training steps (forward, backward, AdamW) on random MQAR-shaped
batches. The Mamba mixer uses a sequential scan over time (the plain-PyTorch way).

    python3 tools/bench_torch.py --pattern AA --ffn DD --d-model 64 --batch 64 --seq-len 64

Prints one JSON line with tokens_per_s. tools/bench_cpu.sh runs it beside `bench`.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, base=10000.0):
    # x: (B, H, T, hd); rotate pairs (i, i + hd/2)
    T, hd = x.shape[-2], x.shape[-1]
    half = hd // 2
    inv = base ** (-torch.arange(half, dtype=x.dtype) * 2.0 / hd)
    ang = torch.arange(T, dtype=x.dtype)[:, None] * inv[None, :]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h = heads
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)

    def forward(self, x):
        B, T, d = x.shape
        hd = d // self.h
        q = self.q(x).view(B, T, self.h, hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.h, hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.h, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        s = q @ k.transpose(-1, -2) / math.sqrt(hd)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, float("-inf"))
        y = s.softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(B, T, d))


class Mamba(nn.Module):
    def __init__(self, d, d_state=16, expand=2, d_conv=4):
        super().__init__()
        di, R = expand * d, math.ceil(d / 16)
        self.di, self.N, self.R = di, d_state, R
        self.in_proj = nn.Linear(d, 2 * di, bias=False)
        self.conv = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1)
        self.x_proj = nn.Linear(di, R + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(R, di)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1).float()).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        x1, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv(x1.transpose(1, 2))[..., :T].transpose(1, 2))
        dbc = self.x_proj(u)
        dr, Bm, Cm = dbc.split([self.R, self.N, self.N], dim=-1)
        delta = F.softplus(self.dt_proj(dr))
        A = -torch.exp(self.A_log)
        h = torch.zeros(B, self.di, self.N)
        ys = []
        for t in range(T):  # sequential scan
            dA = torch.exp(delta[:, t, :, None] * A)
            h = dA * h + (delta[:, t, :, None] * u[:, t, :, None]) * Bm[:, t, None, :]
            ys.append((h * Cm[:, t, None, :]).sum(-1))
        y = torch.stack(ys, dim=1) + self.D * u
        return self.out_proj(y * F.silu(z))


class SwiGLU(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Model(nn.Module):
    def __init__(self, vocab, d, pattern, ffn, heads, hidden):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList()
        for m, f in zip(pattern, ffn):
            mixer = Attention(d, heads) if m == "A" else Mamba(d)
            self.blocks.append(nn.ModuleList([RMSNorm(d), mixer, RMSNorm(d),
                                              SwiGLU(d, hidden) if f == "D" else None]))
        self.norm = RMSNorm(d)

    def forward(self, tokens):
        x = self.embed(tokens)
        for n1, mixer, n2, ffn in self.blocks:
            x = x + mixer(n1(x))
            if ffn is not None:
                x = x + ffn(n2(x))
        return self.norm(x) @ self.embed.weight.t()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pattern", default="AA")
    ap.add_argument("--ffn", default="DD")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    hidden = ((8 * a.d_model + 2) // 3 + 7) // 8 * 8
    model = Model(a.vocab, a.d_model, a.pattern, a.ffn, a.heads, hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    times = []
    for s in range(a.warmup + a.steps):
        tokens = torch.randint(a.vocab, (a.batch, a.seq_len))
        targets = torch.randint(a.vocab, (a.batch, a.seq_len))
        targets[:, : a.seq_len // 2] = -100
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(tokens)
        loss = F.cross_entropy(logits.view(-1, a.vocab), targets.view(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if s >= a.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "pattern": a.pattern, "ffn": a.ffn, "d_model": a.d_model, "batch": a.batch,
                      "seq_len": a.seq_len, "step_ms": round(1e3 * med, 3),
                      "tokens_per_s": round(a.batch * a.seq_len / med, 1)}))


if __name__ == "__main__":
    main()
