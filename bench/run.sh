#!/usr/bin/env bash
# Speed of wick against ONNX Runtime (inference) and PyTorch (training, and float inference) on
# the same fixtures, all measured in this run.
# Installs onnxruntime, onnx, numpy and torch from PyPI into bench/.venv on first use (torch's
# Linux wheel brings its CUDA libraries: several GB; only the CPU is used).
# Usage: bench/run.sh [THREADS] [ROUNDS]   (defaults 1 and 3; run with 2 threads as well for scaling)
# BENCH_MODELS="digits_seq_cnn digits_dsnet" limits the run to those teachers.
# The recurrent teachers (GRU, LSTM, the CRNN), the MobileNetV3-style net, the causal TCN, PyTorch's
# MNIST example and the vision transformer run in ONNX Runtime from PyTorch's own ONNX export
# (fixtures/onnx/); all but the vision transformer have no PyTorch column (torch_baseline.py builds
# nets of the older ops and attention only).
# Each round measures wick, then ONNX Runtime, then PyTorch; the table shows, per workload, the
# median over the rounds, so a burst of load from a neighbour on a shared machine skews one
# round, not the comparison. Training is timed in every round (the median of 2 epochs after a
# warm-up epoch, 15 for the MLP, in each tool).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-1}
rounds=${2:-3}
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c "import onnxruntime, onnx, numpy, torch" 2>/dev/null || bench/.venv/bin/pip install -q onnxruntime onnx numpy torch
cargo build --release -q
# A kernel's vector intrinsics compiled as functions of their own (a call per instruction, as
# when the function using them stopped being inlined into its `#[target_feature]` caller) run
# several times slower, and every table would measure that: refuse such a build.
if nm -C --defined-only target/release/wick | grep -E 'core_arch::x86::(avx512f|avx512bw|avx512vnni|avx512vl|avxvnni|fma|avx2|amx)::' >&2; then
  echo "bench/run.sh: the release build holds the vector intrinsics above out of line; a kernel lost its inlining" >&2
  exit 1
fi
# Which CPU the tables come from, and the instruction sets it offers.
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; ISA: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|fma|avx512f|avx512bw|avx512_vnni|avx_vnni|amx_int8' | tr '\n' ' ')"
D=fixtures/data
# Every teacher in fixtures/models/ with the data it was trained on (MODEL:DATA prefix).
for spec in digits_resnet:digits digits_mlp:digits digits_seq_cnn:digits_seq digits_dsnet:digits digits_gru:digits_rows digits_lstm:digits_rows digits_crnn:digits_seq digits_mbnet:digits digits_tcn:digits_seq digits_rectnet:digits digits_mnist_example:digits digits_vit:digits_rows; do
  m=${spec%%:*} data=${spec##*:}
  if [ -n "${BENCH_MODELS:-}" ] && [[ " $BENCH_MODELS " != *" $m "* ]]; then continue; fi
  model=fixtures/models/$m.safetensors
  wicks=() orts=() torches=()
  for ((r = 0; r < rounds; r++)); do
    # A ResNet epoch takes ~0.5 s; the others ~0.02-0.2 s, where single epochs swing by 2x on a
    # shared machine: take the median of more of them. Three at least, since the median of two is
    # the slower one.
    if [ "$m" = digits_resnet ]; then epochs=3; else epochs=10; fi
    wicks+=("$(./target/release/wick --threads "$threads" bench "$model" --train $D/${data}_train.safetensors --test $D/${data}_test.safetensors --epochs $epochs --json)")
    own_export="" torch_too=1
    case $m in digits_gru|digits_lstm|digits_crnn|digits_mbnet|digits_tcn|digits_mnist_example) own_export=1 torch_too="" ;; digits_vit) own_export=1 ;; esac
    orts+=("$(bench/.venv/bin/python bench/ort_baseline.py --model "$model" --arch fixtures/models/$m.arch.json \
          ${own_export:+--onnx fixtures/onnx/$m.legacy.onnx} \
          --data $D/${data}_test.safetensors --calib $D/${data}_train.safetensors --threads "$threads" 2>/dev/null)")
    if [ -n "$torch_too" ]; then
      torches+=("$(bench/.venv/bin/python bench/torch_baseline.py --model "$model" --arch fixtures/models/$m.arch.json \
            --train $D/${data}_train.safetensors --test $D/${data}_test.safetensors --threads "$threads" --epochs $epochs 2>/dev/null)")
    fi
  done
  WICK="$(printf '%s\n' "${wicks[@]}")" ORT="$(printf '%s\n' "${orts[@]}")" TORCH="$(printf '%s\n' "${torches[@]+"${torches[@]}"}")" M="$m" python3 - <<'PY'
import json, os, statistics
rows = lambda k: [json.loads(l) for l in os.environ[k].splitlines() if l.strip()]
ws, os_, ts = [r["runs"][0] for r in rows("WICK")], rows("ORT"), rows("TORCH")
med = statistics.median
torch = ts[0]["torch"] if ts else "not run (PyTorch's own ONNX export in ORT)"
print(f"\n{os.environ['M']}: {ws[0]['threads']} thread(s), wick fp32 kernel {ws[0]['fp32_kernel']}, int8 kernel {ws[0]['int8_kernel']} (u7: {ws[0]['int8_u7_kernel']}); onnxruntime {os_[0]['onnxruntime']} (MLAS, its own run-time ISA choice), torch {torch}; "
      f"median over {len(ws)} alternating rounds (each a median after warm-up); ratio = baseline time / wick time (>1: wick faster)")
print("| workload | wick | ONNX Runtime | ratio | PyTorch | ratio |\n|---|---|---|---|---|---|")
# wick's 7-bit-activation INT8 (int8_u7) is compared with the same ORT INT8 model (uint8).
for kind, label in (("fp32", "fp32"), ("int8", "int8"), ("int8_u7", "int8 (wick: u7 activations)")):
    ort_kind = "int8" if kind == "int8_u7" else kind
    for b, key in (("1", "batch1_ms"), ("64", "large_batch_ms")):
        w, o = med([r[kind][key] for r in ws]), med([r[ort_kind][key] for r in os_])
        t = f"{med([r[kind][key] for r in ts]):.3f} ms | {med([r[kind][key] for r in ts]) / w:.2f}" if kind == "fp32" and ts else " | "
        print(f"| {label} inference, batch {b} | {w:.3f} ms | {o:.3f} ms | {o / w:.2f} | {t} |")
for b, key in (("1", "batch1_ms"), ("64", "large_batch_ms")):
    f = med([r["fp32"][key] for r in ws])
    print(f"| wick int8 / u7 speed-up over wick fp32, batch {b} | {f / med([r['int8'][key] for r in ws]):.2f}x / {f / med([r['int8_u7'][key] for r in ws]):.2f}x | | | | |")
tw = med([r["train_epoch_s"] for r in ws])
if ts:
    tt = med([r["train_epoch_s"] for r in ts])
    print(f"| training epoch (batch 64, SGD) | {tw:.3f} s | | | {tt:.3f} s | {tt / tw:.2f} |")
else:
    print(f"| training epoch (batch 64, SGD) | {tw:.3f} s | | | | |")
print(f"| ORT int8 predictions flipped vs its fp32 | | {os_[0]['int8_flipped_vs_fp32']} of 360 | | | |")
PY
done
