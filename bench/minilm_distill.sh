#!/usr/bin/env bash
# Distils all-MiniLM-L6-v2 (the real model from ../shared/fixtures/) into a 3-layer student on
# fixtures/text/wordnet_train.txt, validated on wordnet_val.txt, and measures the student's
# fidelity to the teacher on the 200 evaluation sentences, which training never sees. Extra
# arguments go to `wick distill` (e.g. --hint-weight 0 --lr 0.0003 --epochs 10).
# Usage: bench/minilm_distill.sh [MODEL_DIR] [SENTENCES] [wick distill flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-../shared/fixtures/models/all-MiniLM-L6-v2}
sentences=${2:-../shared/fixtures/data/sentences.txt}
shift $(( $# < 2 ? $# : 2 ))
cargo build --release -q
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
./target/release/wick distill --teacher "$model" --layers 3 --train fixtures/text/wordnet_train.txt \
  --val fixtures/text/wordnet_val.txt --test "$sentences" --out "$tmp/student" "$@" 2>/dev/null \
  | grep -v '^wrote'
echo "seconds: $(( $(date +%s) - start ))"
