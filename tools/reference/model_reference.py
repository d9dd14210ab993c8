#!/usr/bin/env python3
"""model_reference.py — an independent PyTorch (float64) forward of a whole braid model,
read from a braid checkpoint, written from the math in DESIGN.md (not from the C code).

    python3 tools/reference/model_reference.py CHECKPOINT.h5 BATCH.h5

BATCH.h5 holds int datasets `inputs` and `targets`, shape (B, T), -100 = ignored (the
external-dataset format). Prints `loss <mean cross-entropy over scored targets>` and
`scored <count>`.

    x0 = embed_tokens.weight[inputs]
    block i:  h = x + mixer(RMSNorm1(x));  x = h + ffn(RMSNorm2(h))   (ffn may be '-')
    logits = RMSNorm_f(x) . W^T     W = embed_tokens.weight (tied) or lm_head.weight
Implemented: attention ('A') and sliding-window attention ('W') with optional RoPE
(rotate-half pairs (i, i + hd/2)) and grouped-query heads, dense SwiGLU FFN ('D').
Mamba ('M'), GLA ('G') and MoE ('E') are not: such a checkpoint exits with status 77
(the conventional "skipped" status) and says which kind.

Needs torch, numpy and h5py. The config is read from the checkpoint's `config`
attribute with a small reader of the YAML subset braid writes (no PyYAML needed).
"""
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

SKIP = 77
KIND_NAMES = {"M": "mamba", "G": "gla", "E": "moe"}


def parse_scalar(text):
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [parse_scalar(v) for v in inner.split(",")] if inner else []
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def strip_comment(line):
    """Drops a '# ...' comment that is not inside a double-quoted string."""
    quoted = False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c == "#" and not quoted:
            return line[:i]
    return line


def read_braid_yaml(text):
    """The nested-mapping YAML subset config_write_yaml emits -> nested dicts."""
    root, stack = {}, [(-1, None)]
    stack[0] = (-1, root)
    for raw in text.splitlines():
        line = strip_comment(raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, _, value = line.strip().partition(":")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value.strip() == "":
            parent[key] = {}
            stack.append((indent, parent[key]))
        else:
            parent[key] = parse_scalar(value)
    return root


def rmsnorm(x, w, eps):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def rope(x, base):
    """x: (B, T, H, hd); rotates (x_i, x_{i+hd/2}) by t * base^(-2i/hd)."""
    _, T, _, hd = x.shape
    half = hd // 2
    inv_freq = base ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / hd)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention(x, p, prefix, acfg, window):
    """Plain masked T x T softmax attention (the C op is flash-style)."""
    B, T, d = x.shape
    n_heads = acfg["n_heads"]
    n_kv = acfg["n_kv_heads"] or n_heads
    hd = d // n_heads
    q = F.linear(x, p[prefix + "q_proj.weight"]).view(B, T, n_heads, hd)
    k = F.linear(x, p[prefix + "k_proj.weight"]).view(B, T, n_kv, hd)
    v = F.linear(x, p[prefix + "v_proj.weight"]).view(B, T, n_kv, hd)
    if acfg["position"] == "rope":
        q, k = rope(q, acfg["rope_base"]), rope(k, acfg["rope_base"])
    group = n_heads // n_kv
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd)
    t = torch.arange(T)[:, None]
    s = torch.arange(T)[None, :]
    visible = s <= t
    if window > 0:
        visible = visible & (s > t - window)
    scores = scores.masked_fill(~visible, float("-inf"))
    a = torch.einsum("bhts,bshd->bthd", scores.softmax(dim=-1), v).reshape(B, T, n_heads * hd)
    return F.linear(a, p[prefix + "o_proj.weight"])


def swiglu_ffn(x, p, prefix):
    gate = F.linear(x, p[prefix + "gate_proj.weight"])
    up = F.linear(x, p[prefix + "up_proj.weight"])
    return F.linear(F.silu(gate) * up, p[prefix + "down_proj.weight"])


def model_loss(p, cfg, inputs, targets):
    m = cfg["model"]
    eps = m["norm_eps"]
    pattern, ffn = m["pattern"], m["ffn"]
    x = p["embed_tokens.weight"][inputs]
    for i, (mix, ff) in enumerate(zip(pattern, ffn)):
        pre = "layers.%d." % i
        window = m["attention"]["window"] if mix == "W" else 0
        h = x + attention(rmsnorm(x, p[pre + "input_layernorm.weight"], eps), p, pre + "self_attn.",
                          m["attention"], window)
        if ff == "D":
            x = h + swiglu_ffn(rmsnorm(h, p[pre + "pre_ff_layernorm.weight"], eps), p, pre + "feed_forward.")
        else:
            x = h
    head = p["embed_tokens.weight"] if m["tie_embeddings"] else p["lm_head.weight"]
    logits = F.linear(rmsnorm(x, p["final_layernorm.weight"], eps), head)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100, reduction="sum")
    scored = int((targets != -100).sum())
    return loss.item() / max(scored, 1), scored


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
    ckpt_path, batch_path = argv[1], argv[2]
    with h5py.File(ckpt_path, "r") as f:
        if f.attrs.get("format") != "braid":
            print("model_reference.py: '%s' is not a braid checkpoint" % ckpt_path, file=sys.stderr)
            return 1
        cfg = read_braid_yaml(f.attrs["config"])
        m = cfg["model"]
        for sym in m["pattern"] + m["ffn"]:
            if sym in KIND_NAMES:
                print("model_reference.py: layer kind '%s' (symbol %s) is not implemented in this reference; "
                      "skipped" % (KIND_NAMES[sym], sym), file=sys.stderr)
                return SKIP
        params = {name: torch.from_numpy(np.asarray(ds[()], dtype=np.float64)) for name, ds in f["params"].items()}
    with h5py.File(batch_path, "r") as b:
        inputs = torch.from_numpy(np.asarray(b["inputs"][()], dtype=np.int64))
        targets = torch.from_numpy(np.asarray(b["targets"][()], dtype=np.int64))
    with torch.no_grad():
        loss, scored = model_loss(params, cfg, inputs, targets)
    print("loss %.12g" % loss)
    print("scored %d" % scored)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
