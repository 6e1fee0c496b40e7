#!/usr/bin/env bash
# Speed of wick against ONNX Runtime on the same fixtures, both measured in this run.
# Installs onnxruntime, onnx and numpy from PyPI into bench/.venv on first use.
# Usage: bench/run.sh [THREADS] [ROUNDS]   (defaults 1 and 3; run with 2 threads as well for scaling)
# Each round measures wick, then ONNX Runtime; the table shows, per workload, the median over
# the rounds, so a burst of load from a neighbour on a shared machine skews one round, not the
# comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-1}
rounds=${2:-3}
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q onnxruntime onnx numpy
fi
cargo build --release -q
D=fixtures/data
for m in digits_resnet digits_mlp; do
  model=fixtures/models/$m.safetensors
  wicks=() orts=()
  for ((r = 0; r < rounds; r++)); do
    epochs=0
    [ "$r" -eq 0 ] && epochs=3   # one training measurement (it takes seconds, not milliseconds)
    wicks+=("$(./target/release/wick --threads "$threads" bench "$model" --train $D/digits_train.safetensors --test $D/digits_test.safetensors --epochs $epochs --json)")
    orts+=("$(bench/.venv/bin/python bench/ort_baseline.py --model "$model" --arch fixtures/models/$m.arch.json \
          --data $D/digits_test.safetensors --calib $D/digits_train.safetensors --threads "$threads" 2>/dev/null)")
  done
  WICK="$(printf '%s\n' "${wicks[@]}")" ORT="$(printf '%s\n' "${orts[@]}")" M="$m" python3 - <<'PY'
import json, os, statistics
ws = [json.loads(l)["runs"][0] for l in os.environ["WICK"].splitlines() if l.strip()]
os_ = [json.loads(l) for l in os.environ["ORT"].splitlines() if l.strip()]
med = lambda xs: statistics.median(xs)
print(f"\n{os.environ['M']}: {ws[0]['threads']} thread(s), onnxruntime {os_[0]['onnxruntime']}; median over {len(ws)} alternating rounds "
      f"(each a median after warm-up); ratio = ORT time / wick time (>1: wick faster)")
print(f"| workload | wick | ONNX Runtime | ratio |\n|---|---|---|---|")
for kind in ("fp32", "int8"):
    for b, key in (("1", "batch1_ms"), ("64", "large_batch_ms")):
        w, o = med([r[kind][key] for r in ws]), med([r[kind][key] for r in os_])
        print(f"| {kind} inference, batch {b} | {w:.3f} ms | {o:.3f} ms | {o / w:.2f} |")
print(f"| training epoch (batch 64, SGD) | {ws[0]['train_epoch_s']:.3f} s | (PyTorch: not measured here) | |")
print(f"| ORT int8 predictions flipped vs its fp32 | | {os_[0]['int8_flipped_vs_fp32']} of 360 | |")
PY
done
