"""ops_reference.py — independent PyTorch (float64) references for the attention and
dense SwiGLU FFN layers, written from the math in DESIGN.md, not from the C code.

Writes (BRFX, see fixture.py), each case's tensors named "<case>.<name>":
  tests/fixtures/attention_layer.bin   cases full_norope, gqa_rope, window_gqa_rope
  tests/fixtures/ffn_dense_layer.bin   case  swiglu
Per case: config = [B, T, d_model, n_heads, n_kv_heads, rope, window, rope_base, ffn_hidden],
x, every weight under its parameter name after the layer prefix (q_proj.weight, ...),
y = layer(x), dy (random), grad.x and grad.<weight> = gradients of Σ y·dy.

The attention here is the plain masked T×T softmax (the C op is flash-style), GQA by
repeat_interleave of the kv heads, the window as a band mask, and RoPE in the
rotate-half layout: pairs (i, i + hd/2) rotated by t·base^(−2i/hd).
Run from anywhere: python3 tools/reference/ops_reference.py
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture import write_fixture  # noqa: E402

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures")


def rope(x, base):
    """x: (B, T, H, hd). Rotates (x_i, x_{i+hd/2}) by angle t * base^(-2i/hd)."""
    B, T, H, hd = x.shape
    half = hd // 2
    inv_freq = base ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / hd)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]   # (T, half)
    cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention_layer(x, w, n_heads, n_kv_heads, use_rope, rope_base, window):
    B, T, d = x.shape
    hd = d // n_heads
    q = F.linear(x, w["q_proj.weight"]).view(B, T, n_heads, hd)
    k = F.linear(x, w["k_proj.weight"]).view(B, T, n_kv_heads, hd)
    v = F.linear(x, w["v_proj.weight"]).view(B, T, n_kv_heads, hd)
    if use_rope:
        q, k = rope(q, rope_base), rope(k, rope_base)
    group = n_heads // n_kv_heads
    k = k.repeat_interleave(group, dim=2)     # query head h reads kv head h // group
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd)
    t = torch.arange(T)[:, None]
    s = torch.arange(T)[None, :]
    visible = s <= t
    if window > 0:
        visible = visible & (s > t - window)
    scores = scores.masked_fill(~visible, float("-inf"))
    a = torch.einsum("bhts,bshd->bthd", scores.softmax(dim=-1), v).reshape(B, T, d)
    return F.linear(a, w["o_proj.weight"])


def ffn_dense_layer(x, w):
    return F.linear(F.silu(F.linear(x, w["gate_proj.weight"])) * F.linear(x, w["up_proj.weight"]),
                    w["down_proj.weight"])


def make_case(name, gen, B, T, d, shapes, forward, config):
    x = torch.randn(B, T, d, generator=gen, dtype=torch.float64).requires_grad_()
    w = {n: (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.3).requires_grad_()
         for n, shape in shapes.items()}
    # Round inputs to float32 first, so the C test (which reads float32) sees the same values.
    with torch.no_grad():
        x.copy_(x.float().double())
        for p in w.values():
            p.copy_(p.float().double())
    y = forward(x, w)
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64).float().double()
    (y * dy).sum().backward()
    out = {f"{name}.config": torch.tensor(config, dtype=torch.float64), f"{name}.x": x}
    for n, p in w.items():
        out[f"{name}.{n}"] = p
    out[f"{name}.y"] = y
    out[f"{name}.dy"] = dy
    out[f"{name}.grad.x"] = x.grad
    for n, p in w.items():
        out[f"{name}.grad.{n}"] = p.grad
    return out


def main():
    gen = torch.Generator().manual_seed(20240611)
    os.makedirs(FIXTURE_DIR, exist_ok=True)

    tensors = {}
    d = 16
    for name, B, T, H, Hkv, use_rope, window in [
        ("full_norope", 2, 9, 4, 4, False, 0),
        ("gqa_rope", 2, 11, 4, 2, True, 0),
        ("window_gqa_rope", 2, 13, 4, 2, True, 4),
    ]:
        hd = d // H
        shapes = {"q_proj.weight": (H * hd, d), "k_proj.weight": (Hkv * hd, d),
                  "v_proj.weight": (Hkv * hd, d), "o_proj.weight": (d, H * hd)}
        base = 10000.0

        def forward(x, w, H=H, Hkv=Hkv, use_rope=use_rope, base=base, window=window):
            return attention_layer(x, w, H, Hkv, use_rope, base, window)

        tensors.update(make_case(name, gen, B, T, d, shapes, forward,
                                 [B, T, d, H, Hkv, int(use_rope), window, base, 0]))
    path = os.path.join(FIXTURE_DIR, "attention_layer.bin")
    write_fixture(path, tensors)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")

    hidden, B, T = 24, 2, 7
    shapes = {"gate_proj.weight": (hidden, d), "up_proj.weight": (hidden, d), "down_proj.weight": (d, hidden)}
    tensors = make_case("swiglu", gen, B, T, d, shapes, ffn_dense_layer, [B, T, d, 4, 0, 0, 0, 10000.0, hidden])
    path = os.path.join(FIXTURE_DIR, "ffn_dense_layer.bin")
    write_fixture(path, tensors)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
