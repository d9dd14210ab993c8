#!/usr/bin/env bash
# mixer_kinds.sh — MQAR recall of each mixer kind alone and in hybrids with attention,
# at a matched parameter budget: Mamba (M), GLA (G), sliding-window attention (W, window
# T/4, so most keys are out of its reach), full attention (A), and hybrids.
#
#   experiments/mixer_kinds.sh --scale tiny [--seeds N] [--jobs J] [--device cpu]
#
# Parameter budget: the pure-Mamba model at the default FFN width; each other pattern
# gets the dense FFN hidden size closest to it (see attention_ratio.sh). Each point also
# evaluates at 2× and 4× its training length.
#
# The grid, overridable from the environment (space-separated):
#   PATTERNS  tiny: MMMM GGGG WWWW AAAA MMAM GGAG MWMW
#             small: MMMMMMMM GGGGGGGG WWWWWWWW AAAAAAAA MMMMAMMM GGGGAGGG MWMWMWMW
#   SEQ_LENS  tiny: 128                     small: 512
#   KV_PAIRS  tiny: 16                      small: 64
set -euo pipefail
SWEEP=mixer_kinds
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; usage_common; }
. "$(dirname "$0")/lib.sh"
parse_common "$@"

if [ "$SCALE" = tiny ]; then
    PATTERNS=${PATTERNS:-"MMMM GGGG WWWW AAAA MMAM GGAG MWMW"}; SEQ_LENS=${SEQ_LENS:-128}; KV_PAIRS=${KV_PAIRS:-16}
else
    PATTERNS=${PATTERNS:-"MMMMMMMM GGGGGGGG WWWWWWWW AAAAAAAA MMMMAMMM GGGGAGGG MWMWMWMW"}
    SEQ_LENS=${SEQ_LENS:-512}; KV_PAIRS=${KV_PAIRS:-64}
fi

budget=$(params_of model.n_layers="$N_LAYERS" model.attention_ratio=0)
echo "[$SWEEP] parameter budget: $budget (pure Mamba, default FFN width)"
for pattern in $PATTERNS; do
    [ ${#pattern} -eq "$N_LAYERS" ] || { echo "$SWEEP: pattern $pattern is not $N_LAYERS blocks long" >&2; exit 1; }
    for T in $SEQ_LENS; do
        arch="model.n_layers=$N_LAYERS model.pattern=$pattern model.attention.window=$((T / 4))"
        # shellcheck disable=SC2086
        hidden=$(matched_hidden "$budget" $arch)
        for kv in $KV_PAIRS; do
            if [ $((4 * kv)) -gt "$T" ]; then continue; fi
            # shellcheck disable=SC2086
            add_point "$pattern-T$T-kv$kv" $arch model.dense.hidden="$hidden" task.seq_len="$T" \
                task.num_kv_pairs="$kv" "eval.seq_lens=[$((2 * T)),$((4 * T))]"
        done
    done
done
run_points
