"""mamba_reference.py — an independent PyTorch (float64) Mamba-1 layer, written straight
from DESIGN.md's math, that writes the fixtures tests/test_mamba.c compares braid to.

    [x1, z]    = x W_inᵀ
    u          = silu(causal_conv1d(x1))      F.conv1d, groups=di, padding k−1, first T outputs
    [δr, B, C] = u W_xᵀ                       (inner_norms: RMSNorm on each, Jamba)
    δ          = softplus(δr W_dtᵀ + b_dt)
    A          = −exp(A_log)
    h_t        = exp(δ_t A) ⊙ h_{t−1} + (δ_t u_t) B_t,   y_t = h_t·C_t + D ⊙ u_t
    out        = (y ⊙ silu(z)) W_outᵀ

The scan is a plain sequential loop over t (no chunking, no tricks), and every gradient
comes from autograd, so nothing is shared with the C implementation but the equations.

Each fixture holds x, every parameter (named as after the layer prefix, e.g.
"in_proj.weight"), y, a random dy, dx and "grad.<param>" for every parameter. The C test
reads the shapes (d, di, N, k, R) from the tensors themselves.

Usage: python3 tools/reference/mamba_reference.py [--out tests/fixtures]   (torch 1.13)
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture import write_fixture  # noqa: E402


def rmsnorm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def mamba_forward(x, p, inner_norms, eps):
    """x: (B, T, d); p: dict of parameters. Returns out (B, T, d)."""
    Bsz, T, _ = x.shape
    di, N = p["A_log"].shape
    k = p["conv1d.weight"].shape[2]
    R = p["dt_proj.weight"].shape[1]

    xz = F.linear(x, p["in_proj.weight"])
    x1, z = xz[..., :di], xz[..., di:]
    conv = F.conv1d(x1.transpose(1, 2), p["conv1d.weight"], p["conv1d.bias"],
                    padding=k - 1, groups=di)[..., :T]
    u = F.silu(conv.transpose(1, 2))                       # (B, T, di)

    dbc = F.linear(u, p["x_proj.weight"])
    dtr, Bm, Cm = torch.split(dbc, [R, N, N], dim=-1)
    if inner_norms:
        dtr = rmsnorm(dtr, p["dt_layernorm.weight"], eps)
        Bm = rmsnorm(Bm, p["b_layernorm.weight"], eps)
        Cm = rmsnorm(Cm, p["c_layernorm.weight"], eps)
    delta = F.softplus(F.linear(dtr, p["dt_proj.weight"], p["dt_proj.bias"]))  # (B, T, di)
    A = -torch.exp(p["A_log"])                             # (di, N)

    h = torch.zeros(Bsz, di, N, dtype=x.dtype)
    ys = []
    for t in range(T):
        dt = delta[:, t, :, None]                          # (B, di, 1)
        h = torch.exp(dt * A) * h + dt * u[:, t, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + p["D"] * u[:, t])
    y = torch.stack(ys, dim=1)                             # (B, T, di)
    return F.linear(y * F.silu(z), p["out_proj.weight"])


def make_params(d, expand, N, k, R, inner_norms, gen):
    """Parameters near mamba-ssm's inits, perturbed so every term is exercised at a
    generic point (D ≠ 1, norm weights ≠ 1, A_log off its log(n+1) grid). δ is drawn
    larger than the init's [0.001, 0.1] so the 19 steps decay visibly."""
    di = expand * d

    def uniform(shape, bound):
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound

    def noise(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float64) * std

    dt = torch.exp(torch.rand(di, generator=gen, dtype=torch.float64)
                   * (math.log(0.5) - math.log(0.05)) + math.log(0.05))
    p = {
        "in_proj.weight": uniform((2 * di, d), d ** -0.5),
        "conv1d.weight": uniform((di, 1, k), k ** -0.5),
        "conv1d.bias": uniform((di,), k ** -0.5),
        "x_proj.weight": uniform((R + 2 * N, di), di ** -0.5),
        "dt_proj.weight": uniform((di, R), R ** -0.5),
        "dt_proj.bias": dt + torch.log(-torch.expm1(-dt)),
        "A_log": torch.log(torch.arange(1, N + 1, dtype=torch.float64)).repeat(di, 1)
                 + noise((di, N), 0.1),
        "D": 1 + noise((di,), 0.1),
        "out_proj.weight": uniform((d, di), di ** -0.5),
    }
    if inner_norms:
        p["dt_layernorm.weight"] = 1 + noise((R,), 0.1)
        p["b_layernorm.weight"] = 1 + noise((N,), 0.1)
        p["c_layernorm.weight"] = 1 + noise((N,), 0.1)
    return p


def write_layer_fixture(path, inner_norms, seed, B=2, T=19, d=16, expand=2, N=4, k=4, R=None,
                        eps=1e-6):
    R = R or math.ceil(d / 16)
    gen = torch.Generator().manual_seed(seed)
    p = make_params(d, expand, N, k, R, inner_norms, gen)
    # round to float32 first: the C side gets exactly these values
    p = {name: v.float().double().requires_grad_() for name, v in p.items()}
    x = torch.randn(B, T, d, generator=gen, dtype=torch.float64).float().double().requires_grad_()
    dy = torch.randn(B, T, d, generator=gen, dtype=torch.float64).float().double()

    y = mamba_forward(x, p, inner_norms, eps)
    y.backward(dy)

    tensors = {"x": x}
    tensors.update(p)
    tensors["y"] = y
    tensors["dy"] = dy
    tensors["dx"] = x.grad
    for name, v in p.items():
        tensors["grad." + name] = v.grad
    write_fixture(path, tensors)
    print("wrote %s (%d tensors, %d bytes)" % (path, len(tensors), os.path.getsize(path)))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "..", "tests", "fixtures"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    write_layer_fixture(os.path.join(args.out, "mamba_layer.bin"), inner_norms=False, seed=3)
    # dt_rank 4 here: RMSNorm over a single δr column would be just sign(δr)·w
    write_layer_fixture(os.path.join(args.out, "mamba_layer_norms.bin"), inner_norms=True, seed=4,
                        R=4)


if __name__ == "__main__":
    main()
