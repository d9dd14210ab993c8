#!/usr/bin/env bash
# bench_cpu.sh — braid's CPU training step against the PyTorch reference, same machine,
# same run, same model shapes (DESIGN.md "Performance (CPU)": batch 64 x T 64, vocab 256,
# d 64, 2 layers). Prints a table with the ratio; record it in docs/performance.md.
#
#   bash tools/bench_cpu.sh [threads]      (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
build=${BUILD_DIR:-build}
py=/usr/bin/python3; [ -x "$py" ] || py=python3
printf "%-22s %12s %12s %8s\n" model "braid tok/s" "torch tok/s" ratio
for spec in "attention AA configs/attention-tiny.yaml" "mamba MM configs/attention-tiny.yaml"; do
  set -- $spec
  name=$1 pattern=$2 config=$3
  braid=$("$build"/bench --config "$config" --set train.threads="$threads" \
            --set model.pattern="$pattern" --set model.ffn=DD --set model.d_model=64 \
            --set model.n_layers=2 --set train.batch_size=64 --set task.seq_len=64 \
            --set task.vocab_size=256 --json | tail -1 | sed 's/.*"tokens_per_s": \([0-9.]*\).*/\1/')
  torch=$($py tools/bench_torch.py --pattern "$pattern" --ffn DD --d-model 64 --threads "$threads" \
            --batch 64 --seq-len 64 --vocab 256 | sed 's/.*"tokens_per_s": \([0-9.]*\).*/\1/')
  ratio=$(awk -v a="$braid" -v b="$torch" 'BEGIN { printf "%.2f", a / b }')
  printf "%-22s %12.0f %12.0f %8s\n" "$name (2 layers, d 64)" "$braid" "$torch" "${ratio}x"
done
