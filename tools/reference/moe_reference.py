#!/usr/bin/env python3
"""moe_reference.py — independent PyTorch reference for the MoE FFN layer (src/layers/moe.c).

The plain per-token math of DESIGN.md "MoE FFN" in float64, with the load-balancing
loss written as HF Mixtral's load_balancing_loss_func computes it:
    logits = x W_r^T;  p = softmax(logits);  top-k of p (renormalized if asked)
    y[n]   = sum_{e in topk(n)} w_e * (silu(x W_gate^T) * x W_up^T) W_down^T
    aux    = coef * E * sum_{j,e} mean_n(onehot(topk_j(n)) == e) * mean_n p[n,e]
    z      = coef_z * mean_n logsumexp(logits_n)^2
Gradients come from autograd of  L = sum(y * dy) + aux + z.

Writes tests/fixtures/moe_layer.bin (BRFX, see fixture.py): "x", every parameter by its
name after the layer prefix ("router.weight", "experts.0.gate_proj.weight", ...), "y",
"aux_loss", "dy", "dx", "grad.<param name>", and "config" = [d, E, top_k, hidden,
renormalize, aux_coef, z_coef, B, T]. Parameters and x are drawn in float32 so the C
test uses exactly the values the reference used.

Run from the repository root with a Python that has torch:  python3 tools/reference/moe_reference.py
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture import write_fixture  # noqa: E402

B, T, D, E, TOP_K, HIDDEN = 2, 5, 8, 4, 2, 12
RENORMALIZE = 1
AUX_COEF, Z_COEF = 0.1, 0.01
ROUTER_STD, EXPERT_STD = 0.8, 0.3
# Smallest gap allowed between the k-th and (k+1)-th router probability of any token,
# so that float32 (C) and float64 (here) pick the same experts.
MIN_MARGIN = 1e-3


def param_names():
    names = ["router.weight"]
    for e in range(E):
        names += [f"experts.{e}.gate_proj.weight", f"experts.{e}.up_proj.weight",
                  f"experts.{e}.down_proj.weight"]
    return names


def make_params(gen):
    def f32(shape, std):
        return (torch.randn(*shape, generator=gen, dtype=torch.float32) * std).double()
    params = {"router.weight": f32((E, D), ROUTER_STD)}
    for e in range(E):
        params[f"experts.{e}.gate_proj.weight"] = f32((HIDDEN, D), EXPERT_STD)
        params[f"experts.{e}.up_proj.weight"] = f32((HIDDEN, D), EXPERT_STD)
        params[f"experts.{e}.down_proj.weight"] = f32((D, HIDDEN), EXPERT_STD)
    return params


def expert_ffn(params, e, xn):
    gate = xn @ params[f"experts.{e}.gate_proj.weight"].T
    up = xn @ params[f"experts.{e}.up_proj.weight"].T
    return (torch.nn.functional.silu(gate) * up) @ params[f"experts.{e}.down_proj.weight"].T


def load_balancing_loss(probs, selected, num_experts, top_k):
    """HF Mixtral's load_balancing_loss_func (one layer, no padding mask)."""
    expert_mask = torch.nn.functional.one_hot(selected, num_experts).double()   # (N, k, E)
    tokens_per_expert = expert_mask.mean(dim=0)                                 # (k, E)
    router_prob_per_expert = probs.mean(dim=0)                                  # (E)
    return (tokens_per_expert * router_prob_per_expert.unsqueeze(0)).sum() * num_experts


def moe_layer(x, params):
    """x (B,T,D) -> y (B,T,D), aux + z. The per-token loop is the spec, not fast."""
    xf = x.reshape(-1, D)
    logits = xf @ params["router.weight"].T
    probs = torch.softmax(logits, dim=-1)
    topk_p, topk_e = torch.topk(probs, TOP_K, dim=-1)
    weights = topk_p / topk_p.sum(dim=-1, keepdim=True) if RENORMALIZE else topk_p
    rows = []
    for n in range(xf.shape[0]):
        yn = torch.zeros(D, dtype=torch.float64)
        for j in range(TOP_K):
            yn = yn + weights[n, j] * expert_ffn(params, int(topk_e[n, j]), xf[n])
        rows.append(yn)
    y = torch.stack(rows).reshape(B, T, D)
    aux = AUX_COEF * load_balancing_loss(probs, topk_e, E, TOP_K)
    z = Z_COEF * (torch.logsumexp(logits, dim=-1) ** 2).mean()
    return y, aux + z, probs


def main():
    gen = torch.Generator().manual_seed(20240603)
    for _attempt in range(100):
        x = torch.randn(B, T, D, generator=gen, dtype=torch.float32).double()
        params = make_params(gen)
        with torch.no_grad():
            _, _, probs = moe_layer(x, params)
        sorted_p = torch.sort(probs, dim=-1, descending=True).values
        margin = (sorted_p[:, TOP_K - 1] - sorted_p[:, TOP_K]).min().item()
        if margin > MIN_MARGIN:
            break
    else:
        raise SystemExit("no draw with clear routing margins")

    x.requires_grad_(True)
    for p in params.values():
        p.requires_grad_(True)
    y, aux, _ = moe_layer(x, params)
    dy = torch.randn(B, T, D, generator=gen, dtype=torch.float32).double()
    loss = (y * dy).sum() + aux
    loss.backward()

    tensors = {"config": [D, E, TOP_K, HIDDEN, RENORMALIZE, AUX_COEF, Z_COEF, B, T], "x": x}
    for name in param_names():
        tensors[name] = params[name]
    tensors["y"] = y
    tensors["aux_loss"] = [aux.item()]
    tensors["dy"] = dy
    tensors["dx"] = x.grad
    for name in param_names():
        tensors["grad." + name] = params[name].grad
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "tests", "fixtures", "moe_layer.bin")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_fixture(path, tensors)
    print(f"wrote {path}: routing margin {margin:.4f}, aux+z {aux.item():.6f}, "
          f"{os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
