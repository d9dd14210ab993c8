#!/usr/bin/env bash
# attention_ratio.sh — MQAR recall against the fraction of attention mixers (the rest
# Mamba), at a matched parameter budget, × training sequence length × kv pairs.
#
#   experiments/attention_ratio.sh --scale tiny [--seeds N] [--jobs J] [--device cpu]
#
# The question (Zoology, Arora et al. 2023; Jamba, Lieber et al. 2024): at small d_model
# attention solves MQAR while pure Mamba degrades as the kv pairs grow; does a hybrid
# with a few attention blocks close the gap? Attention blocks are spread evenly by the
# config's own ratio resolution (0.25 of 4 → MMAM, 0.125 of 8 → MMMMAMMM). Parameter
# budget: the pure-Mamba model at the default FFN width; every other ratio gets the
# dense FFN hidden size that brings it closest to that count (attention blocks have
# about half a Mamba block's parameters), so a ratio is not rewarded for being bigger.
# Each point also evaluates at 2× and 4× its training length (length generalisation).
#
# The grid, overridable from the environment (space-separated):
#   RATIOS    tiny: 0 0.25 0.5 1            small: 0 0.125 0.25 0.5 1
#   SEQ_LENS  tiny: 64 128                  small: 256 512
#   KV_PAIRS  tiny: 4 16                    small: 16 32 64
set -euo pipefail
SWEEP=attention_ratio
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; usage_common; }
. "$(dirname "$0")/lib.sh"
parse_common "$@"

if [ "$SCALE" = tiny ]; then
    RATIOS=${RATIOS:-"0 0.25 0.5 1"}; SEQ_LENS=${SEQ_LENS:-"64 128"}; KV_PAIRS=${KV_PAIRS:-"4 16"}
else
    RATIOS=${RATIOS:-"0 0.125 0.25 0.5 1"}; SEQ_LENS=${SEQ_LENS:-"256 512"}; KV_PAIRS=${KV_PAIRS:-"16 32 64"}
fi

arch_sets() { echo "model.n_layers=$N_LAYERS model.attention_ratio=$1"; }
budget=$(params_of $(arch_sets 0))
echo "[$SWEEP] parameter budget: $budget (pure Mamba, default FFN width)"
for ratio in $RATIOS; do
    # shellcheck disable=SC2046
    hidden=$(matched_hidden "$budget" $(arch_sets "$ratio"))
    for T in $SEQ_LENS; do
        for kv in $KV_PAIRS; do
            if [ $((4 * kv)) -gt "$T" ]; then continue; fi   # MQAR needs T ≥ 4·kv
            add_point "ratio$ratio-T$T-kv$kv" $(arch_sets "$ratio") model.dense.hidden="$hidden" \
                task.seq_len="$T" task.num_kv_pairs="$kv" "eval.seq_lens=[$((2 * T)),$((4 * T))]"
        done
    done
done
run_points
