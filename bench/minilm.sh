#!/usr/bin/env bash
# all-MiniLM-L6-v2 (the real model from ../shared/fixtures/, too large for the repository; the
# test suite runs the same code on fixtures/text/tiny_bert): wick's FP32 sentence embeddings
# against PyTorch's reference (cosine per sentence, largest difference), and the latency of
# wick's FP32 and INT8 (`wick quantize`, per-token inputs, calibrated on other text:
# fixtures/text/wordnet_val.txt) at
# batch 1 and 32 (embedding only: loading and compiling excluded) next to ONNX Runtime's FP32
# and dynamic INT8 (per-channel weights) of the same model, measured in this run
# (bench/minilm_ort.py), with each INT8's fidelity to its FP32.
# Usage: bench/minilm.sh [THREADS] [MODEL_DIR] [SENTENCES] [REFERENCE]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-1}
model=${2:-../shared/fixtures/models/all-MiniLM-L6-v2}
sentences=${3:-../shared/fixtures/data/sentences.txt}
reference=${4:-../shared/fixtures/reference/minilm_sentence_embeddings.safetensors}
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c "import numpy, safetensors, onnxruntime, onnx, torch, transformers, tokenizers" 2>/dev/null \
  || bench/.venv/bin/pip install -q numpy safetensors onnxruntime onnx torch transformers tokenizers
cargo build --release -q
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $threads thread(s)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
W="./target/release/wick --threads $threads"
$W eval "$model" --data "$sentences" --predictions "$tmp/e.safetensors" --quiet > /dev/null 2>&1
b1=$($W eval "$model" --data "$sentences" --batch-size 1 --json --quiet 2>/dev/null)
b32=$($W eval "$model" --data "$sentences" --batch-size 32 --json --quiet 2>/dev/null)
$W quantize "$model" --calib fixtures/text/wordnet_val.txt --out "$tmp/q.safetensors" --quiet 2>/dev/null | head -1
q1=$($W eval "$tmp/q.safetensors" --teacher "$model" --data "$sentences" --batch-size 1 --json --quiet 2>/dev/null)
q32=$($W eval "$tmp/q.safetensors" --teacher "$model" --data "$sentences" --batch-size 32 --json --quiet 2>/dev/null)
ort=$(bench/.venv/bin/python bench/minilm_ort.py "$model" "$sentences" "$threads" 2>/dev/null)
B1="$b1" B32="$b32" Q1="$q1" Q32="$q32" ORT="$ort" bench/.venv/bin/python - "$tmp/e.safetensors" "$reference" <<'PY'
import json, os, sys
import numpy as np
from safetensors.numpy import load_file
got, ref = load_file(sys.argv[1])["embeddings"], load_file(sys.argv[2])["embeddings"]
cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
print(f"wick FP32 vs PyTorch, {len(cos)} sentences: cosine min {cos.min():.9f}, mean {cos.mean():.9f}; max |difference| {np.abs(got - ref).max():.2e}")
b1, b32, o = json.loads(os.environ["B1"]), json.loads(os.environ["B32"]), json.loads(os.environ["ORT"])
q1, q32 = json.loads(os.environ["Q1"]), json.loads(os.environ["Q32"])
n = b1["sentences"]
w1, w32 = 1000 * b1["embed_seconds"] / n, 1000 * b32["embed_seconds"] / -(-n // 32)
i1, i32 = 1000 * q1["embed_seconds"] / n, 1000 * q32["embed_seconds"] / -(-n // 32)
f, q = o["fp32"], o["int8_dynamic_per_channel"]
print(f"onnxruntime {o['onnxruntime']}; ratio = ORT time / wick time (>1: wick faster)")
print("| workload | wick FP32 | ORT FP32 | ratio | ORT INT8 (dynamic, per-channel) | ratio |\n|---|---|---|---|---|---|")
print(f"| batch 1, ms per sentence | {w1:.2f} | {f['batch1_ms_per_sentence']:.2f} | {f['batch1_ms_per_sentence'] / w1:.2f} | {q['batch1_ms_per_sentence']:.2f} | {q['batch1_ms_per_sentence'] / w1:.2f} |")
print(f"| batch 32, ms per batch | {w32:.1f} | {f['batch32_ms_per_batch']:.1f} | {f['batch32_ms_per_batch'] / w32:.2f} | {q['batch32_ms_per_batch']:.1f} | {q['batch32_ms_per_batch'] / w32:.2f} |")
fq = q["fidelity_to_fp32"]
print("| workload | wick INT8 | ORT INT8 (dynamic, per-channel) | ratio |\n|---|---|---|---|")
print(f"| batch 1, ms per sentence | {i1:.2f} | {q['batch1_ms_per_sentence']:.2f} | {q['batch1_ms_per_sentence'] / i1:.2f} |")
print(f"| batch 32, ms per batch | {i32:.1f} | {q['batch32_ms_per_batch']:.1f} | {q['batch32_ms_per_batch'] / i32:.2f} |")
fw = q1["fidelity"]
print(f"wick INT8 fidelity to its FP32: cosine mean {fw['cosine_mean']:.4f}, min {fw['cosine_min']:.4f}, nearest-neighbour agreement {fw['nn_agreement']:.3f}")
print(f"ORT INT8 fidelity to its FP32: cosine mean {fq['cosine_mean']:.4f}, min {fq['cosine_min']:.4f}, nearest-neighbour agreement {fq['nn_agreement']:.3f}")
PY
