"""gla_reference.py — independent PyTorch reference for braid's GLA layer (src/layers/gla.c).

Writes tests/fixtures/gla_<mode>.bin for mode in gla, retention, linear (the "gla" mode's
file is gla_layer.bin): the input x, every parameter (named as after the layer prefix:
"q_proj.weight", "gk_proj.0.weight", ...), the output y, a random upstream gradient dy,
and autograd's dx and "grad.<param>" for every parameter.

The math is DESIGN.md's "Gated linear attention", written straight from the equations
and computed in float64 with the SEQUENTIAL recurrence, token by token (no chunking),
so it shares nothing with the C kernel but the equations:
    q, k, v, g = x W_qᵀ, x W_kᵀ, x W_vᵀ, x W_gᵀ
    log α      = logsigmoid(x W_α1ᵀ W_α2ᵀ + b_α) / gate_normalizer      (mode "gla")
               = log(1 − 2^(−5−h)) for head h                          (mode "retention")
               = 0                                                     (mode "linear")
    S_t = diag(α_t) S_{t−1} + k_tᵀ v_t;   o_t = (q_t · dk^−0.5) S_t     per head
    y   = (RMSNorm_head(o) · w ⊙ silu(g)) W_oᵀ

Values are drawn in float32 (then widened) so the C test, which reads them as float32,
starts from exactly the same numbers. Run from anywhere, with a Python that has numpy
and torch (on the dev machines, Debian's /usr/bin/python3):
    python3 tools/reference/gla_reference.py
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture import write_fixture  # noqa: E402

# Must match the config in tests/test_gla.c (test "layer_matches_pytorch_reference").
B, T, D_MODEL, N_HEADS = 2, 13, 16, 2
EXPAND_K, EXPAND_V, GATE_RANK, GATE_NORMALIZER, NORM_EPS = 0.5, 1.0, 4, 16.0, 1e-6


def gla_layer(x, p, mode):
    """x: (B, T, d) float64; p: dict of float64 parameters requiring grad. Returns y."""
    batch, steps, _ = x.shape
    q = F.linear(x, p["q_proj.weight"])
    k = F.linear(x, p["k_proj.weight"])
    v = F.linear(x, p["v_proj.weight"])
    g = F.linear(x, p["g_proj.weight"])
    key_dim, value_dim = q.shape[-1], v.shape[-1]
    dk, dv = key_dim // N_HEADS, value_dim // N_HEADS
    if mode == "gla":
        gate = F.linear(F.linear(x, p["gk_proj.0.weight"]), p["gk_proj.1.weight"], p["gk_proj.1.bias"])
        log_alpha = F.logsigmoid(gate) / GATE_NORMALIZER
    elif mode == "retention":
        per_head = torch.log(1 - 2.0 ** (-5.0 - torch.arange(N_HEADS, dtype=torch.float64)))
        log_alpha = per_head.repeat_interleave(dk).expand(batch, steps, key_dim)
    else:
        log_alpha = torch.zeros(batch, steps, key_dim, dtype=torch.float64)

    q = q.view(batch, steps, N_HEADS, dk) * dk ** -0.5
    k = k.view(batch, steps, N_HEADS, dk)
    v = v.view(batch, steps, N_HEADS, dv)
    alpha = log_alpha.exp().view(batch, steps, N_HEADS, dk)
    state = torch.zeros(batch, N_HEADS, dk, dv, dtype=torch.float64)
    outs = []
    for t in range(steps):
        state = alpha[:, t, :, :, None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhc,bhce->bhe", q[:, t], state))
    o = torch.stack(outs, dim=1)                                   # (B, T, H, dv)
    normed = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + NORM_EPS) * p["g_norm.weight"]
    z = normed.reshape(batch, steps, value_dim) * F.silu(g)
    return F.linear(z, p["o_proj.weight"])


def make_fixture(mode, seed, path):
    rng = np.random.default_rng(seed)
    d = D_MODEL
    key_dim, value_dim = int(EXPAND_K * d), int(EXPAND_V * d)

    def draw(shape, std, mean=0.0):
        return torch.from_numpy((mean + std * rng.standard_normal(shape)).astype(np.float32)).double()

    # weights larger than the init's 0.02 so every path carries signal; gate bias spread
    # around −1 so channels decay at visibly different rates
    params = {
        "q_proj.weight": draw((key_dim, d), 0.3),
        "k_proj.weight": draw((key_dim, d), 0.3),
        "v_proj.weight": draw((value_dim, d), 0.3),
        "g_proj.weight": draw((value_dim, d), 0.3),
    }
    if mode == "gla":
        params["gk_proj.0.weight"] = draw((GATE_RANK, d), 0.5)
        params["gk_proj.1.weight"] = draw((key_dim, GATE_RANK), 0.5)
        params["gk_proj.1.bias"] = draw((key_dim,), 1.5, mean=-1.0)
    params["o_proj.weight"] = draw((d, value_dim), 0.3)
    params["g_norm.weight"] = draw((value_dim // N_HEADS,), 0.2, mean=1.0)
    for t in params.values():
        t.requires_grad_(True)
    x = draw((B, T, d), 1.0).requires_grad_(True)
    dy = draw((B, T, d), 1.0)

    y = gla_layer(x, params, mode)
    y.backward(dy)

    tensors = {"x": x, "y": y, "dy": dy, "dx": x.grad}
    tensors.update(params)
    tensors.update({"grad." + name: t.grad for name, t in params.items()})
    write_fixture(path, tensors)
    print("wrote %s (%d bytes)" % (path, os.path.getsize(path)))


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out_dir = os.path.join(root, "tests", "fixtures")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    for seed, (mode, name) in enumerate([("gla", "gla_layer.bin"), ("retention", "gla_retention.bin"),
                                         ("linear", "gla_linear.bin")]):
        make_fixture(mode, 1000 + seed, os.path.join(out_dir, name))


if __name__ == "__main__":
    main()
