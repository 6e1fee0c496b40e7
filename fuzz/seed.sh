#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the fixtures and the shipped recipes: architectures and
# recipes as they are, and small float models and INT8 artifacts that wick itself writes (so
# that their metadata carries an architecture and the targets reach model building).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
wick=target/release/wick
c=fuzz/corpus
mkdir -p $c/safetensors $c/architecture $c/recipe $c/manifest $c/int8_artifact $c/onnx
cp fixtures/arch/*.arch.json fixtures/models/*.arch.json $c/architecture/
cp passes/*.json $c/recipe/
data="--train fixtures/data/digits_train.safetensors --val fixtures/data/digits_val.safetensors"
seq="--train fixtures/data/digits_seq_train.safetensors --val fixtures/data/digits_seq_val.safetensors"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for s in "digits_mlp digits_mlp_small $data digits_train" "digits_seq_cnn digits_seq_cnn_small $seq digits_seq_train"; do
  set -- $s
  $wick distill --teacher fixtures/models/$1.safetensors --student fixtures/arch/$2.arch.json $3 $4 $5 $6 --epochs 1 --out "$tmp/$2.safetensors" --quiet
  $wick quantize "$tmp/$2.safetensors" --calib fixtures/data/$7.safetensors --samples 64 --out "$tmp/$2.int8.safetensors" --quiet
  cp "$tmp/$2.safetensors" $c/safetensors/
  cp "$tmp/$2.int8.safetensors" $c/int8_artifact/
  cp "$tmp/$2.int8.safetensors" $c/safetensors/
  $wick export "$tmp/$2.safetensors" --out $c/onnx/$2.onnx > /dev/null
  $wick export "$tmp/$2.int8.safetensors" --out $c/onnx/$2.qdq.onnx > /dev/null
done
# The small PyTorch exports (both exporters); the larger ones add size, not new structure.
cp fixtures/onnx/digits_dsnet.*.onnx fixtures/onnx/digits_seq_cnn.*.onnx $c/onnx/
cat > $c/manifest/two_jobs.json <<'JSON'
{"jobs": [
  {"name": "mlp", "model": "models/digits_mlp.safetensors", "recipe": "ptq-int8", "train": "d/train.safetensors", "val": "d/val.safetensors", "test": "d/test.safetensors", "out": "out/mlp", "max_accuracy_drop": 1.0},
  {"name": "resnet", "model": "models/digits_resnet.safetensors", "arch": "a.json", "recipe": "edge-int8", "train": "t", "val": "v", "test": "s", "calib": "c", "out": "o", "max_relative_drop": 0.01, "seed": 3, "max_epochs": 2, "sensitivity": true, "fallback": true}
]}
JSON
ls -la $c/*
