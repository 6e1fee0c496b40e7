#!/usr/bin/env bash
# Speed of wick against ONNX Runtime on the same fixtures, both measured in this run.
# Installs onnxruntime, onnx and numpy from PyPI into bench/.venv on first use.
# Usage: bench/run.sh [THREADS]   (default 1; run with 2 as well for scaling)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-1}
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q onnxruntime onnx numpy
fi
cargo build --release -q
D=fixtures/data
for m in digits_resnet digits_mlp; do
  model=fixtures/models/$m.safetensors
  wick=$(./target/release/wick --threads "$threads" bench "$model" --train $D/digits_train.safetensors --test $D/digits_test.safetensors --epochs 3 --json)
  ort=$(bench/.venv/bin/python bench/ort_baseline.py --model "$model" --arch fixtures/models/$m.arch.json \
        --data $D/digits_test.safetensors --calib $D/digits_train.safetensors --threads "$threads")
  WICK="$wick" ORT="$ort" M="$m" python3 - <<'PY'
import json, os
w = json.loads(os.environ["WICK"])["runs"][0]; o = json.loads(os.environ["ORT"])
print(f"\n{os.environ['M']}: {w['threads']} thread(s), onnxruntime {o['onnxruntime']}; medians after warm-up; ratio = ORT time / wick time (>1: wick faster)")
print(f"| workload | wick | ONNX Runtime | ratio |\n|---|---|---|---|")
for kind in ("fp32", "int8"):
    for b, key in (("1", "batch1_ms"), ("64", "large_batch_ms")):
        print(f"| {kind} inference, batch {b} | {w[kind][key]:.3f} ms | {o[kind][key]:.3f} ms | {o[kind][key] / w[kind][key]:.2f} |")
print(f"| training epoch (batch 64, SGD) | {w['train_epoch_s']:.3f} s | (PyTorch: not measured here) | |")
print(f"| ORT int8 predictions flipped vs its fp32 | | {o['int8_flipped_vs_fp32']} of 360 | |")
PY
done
