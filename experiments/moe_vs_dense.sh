#!/usr/bin/env bash
# moe_vs_dense.sh — MoE FFNs against a dense FFN at equal ACTIVE parameters per token,
# on MQAR with a fixed hybrid mixer pattern (tiny MMAM, small MMMMAMMM).
#
#   experiments/moe_vs_dense.sh --scale tiny [--seeds N] [--jobs J] [--device cpu]
#
# With the dense SwiGLU hidden size h (8/3·d_model rounded up to 8), a token passes
# through 3·d·h FFN weights in every variant:
#   dense        ffn D…D, hidden h
#   moe-e4-top2  ffn E…E, 4 experts of hidden h/2, top-2   (4× the FFN parameters stored)
#   moe-e4-top1  ffn E…E, 4 experts of hidden h, top-1     (Switch-style)
#   jamba        ffn DEDE…, MoE (4 experts, hidden h/2, top-2) every other block
# (router weights, d × experts, are the only extra active parameters.) summary.json
# records the stored parameter count, so plots show both views.
#
# The grid, overridable from the environment:  SEQ_LENS (tiny 128, small 512),
# KV_PAIRS (tiny 16, small 64), MIXERS (the mixer pattern, n_layers long: tiny MMAM,
# small MMMMAMMM; at a short budget pick one that learns MQAR at all, e.g. MMAMMMAM).
set -euo pipefail
SWEEP=moe_vs_dense
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; usage_common; }
. "$(dirname "$0")/lib.sh"
parse_common "$@"

if [ "$SCALE" = tiny ]; then MIXERS=${MIXERS:-MMAM}; SEQ_LENS=${SEQ_LENS:-128}; KV_PAIRS=${KV_PAIRS:-16}
else MIXERS=${MIXERS:-MMMMAMMM}; SEQ_LENS=${SEQ_LENS:-512}; KV_PAIRS=${KV_PAIRS:-64}; fi
[ ${#MIXERS} -eq "$N_LAYERS" ] || { echo "$SWEEP: MIXERS $MIXERS is not $N_LAYERS blocks long" >&2; exit 1; }
# points of another mixer pattern are named for it, so they never pass for the default's
case "$MIXERS" in MMAM|MMMMAMMM) tag="" ;; *) tag="$MIXERS-" ;; esac
h=$(( (D_MODEL * 8 / 3 + 7) / 8 * 8 ))
all() { local s=""; for _ in $(seq 1 "$N_LAYERS"); do s="$s$1"; done; echo "$s"; }
alternate() { local s=""; for _ in $(seq 1 $((N_LAYERS / 2))); do s="$s$1$2"; done; echo "$s"; }

for T in $SEQ_LENS; do
    for kv in $KV_PAIRS; do
        if [ $((4 * kv)) -gt "$T" ]; then continue; fi
        common="model.n_layers=$N_LAYERS model.pattern=$MIXERS model.dense.hidden=$h task.seq_len=$T task.num_kv_pairs=$kv"
        common="$common eval.seq_lens=[$((2 * T)),$((4 * T))]"
        # shellcheck disable=SC2086
        {
        add_point "${tag}dense-T$T-kv$kv" $common model.ffn="$(all D)"
        add_point "${tag}moe-e4-top2-T$T-kv$kv" $common model.ffn="$(all E)" model.moe.experts=4 model.moe.top_k=2 \
            model.moe.hidden=$((h / 2))
        add_point "${tag}moe-e4-top1-T$T-kv$kv" $common model.ffn="$(all E)" model.moe.experts=4 model.moe.top_k=1 \
            model.moe.hidden="$h"
        add_point "${tag}jamba-T$T-kv$kv" $common model.ffn="$(alternate D E)" model.moe.experts=4 model.moe.top_k=2 \
            model.moe.hidden=$((h / 2))
        }
    done
done
run_points
