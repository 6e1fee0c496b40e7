#!/usr/bin/env bash
# Whether what `wick export` writes runs in ONNX Runtime as wick runs it: for every teacher in
# fixtures/models/, the float teacher as a plain ONNX graph and its INT8 artifact (`wick
# quantize`, min-max calibration on the training split) as a QDQ graph, each run by ONNX
# Runtime on the test split and compared row by row with wick's own execution (the float
# runtime; the integer runtime). ONNX has no integer GRU or LSTM, so a recurrent teacher's
# artifact keeps its recurrent node float here (the third field of its spec, `--exclude`).
# Uses bench/.venv (see bench/run.sh).
# Usage: bench/onnx_parity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c "import onnxruntime, onnx, numpy" 2>/dev/null || bench/.venv/bin/pip install -q onnxruntime onnx numpy
cargo build --release -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
W=./target/release/wick
D=fixtures/data
echo "| model | graph | opset | ONNX Runtime accuracy | wick accuracy | same class | max logit difference |"
echo "|---|---|---|---|---|---|---|"
for spec in digits_mlp:digits digits_resnet:digits digits_seq_cnn:digits_seq digits_dsnet:digits digits_gru:digits_rows:gru digits_lstm:digits_rows:lstm; do
  IFS=: read -r m data float_node <<< "$spec"
  $W quantize fixtures/models/$m.safetensors --calib $D/${data}_train.safetensors ${float_node:+--exclude $float_node} --out "$tmp/$m.int8.safetensors" > /dev/null 2>&1
  for kind in float int8; do
    if [ $kind = float ]; then model=fixtures/models/$m.safetensors; graph="float"; else model=$tmp/$m.int8.safetensors; graph="QDQ (INT8${float_node:+, $float_node float})"; fi
    $W export "$model" --format onnx --out "$tmp/$m.$kind.onnx" > /dev/null
    $W eval "$model" --data $D/${data}_test.safetensors --predictions "$tmp/$m.$kind.pred.safetensors" --quiet > /dev/null
    bench/.venv/bin/python bench/onnx_parity.py --onnx "$tmp/$m.$kind.onnx" --data $D/${data}_test.safetensors --wick "$tmp/$m.$kind.pred.safetensors" --label "$m | $graph"
  done
done
echo
echo "ONNX Runtime $(bench/.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)'), one thread, CPU execution provider."
