#!/usr/bin/env bash
# wick's FP32 sentence embeddings of the real all-MiniLM-L6-v2 against PyTorch's (the fixture
# reference of sentence-transformers' pipeline): cosine per sentence, the largest difference,
# and the time `wick eval` took. (The token ids are checked by the test suite, on the same
# tokenizer.json.) The model (90 MB) is not in the repository; the test suite checks the
# same code on fixtures/text/tiny_bert.
# Usage: bench/minilm_exactness.sh [MODEL_DIR] [SENTENCES] [REFERENCE]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-../shared/fixtures/models/all-MiniLM-L6-v2}
sentences=${2:-../shared/fixtures/data/sentences.txt}
reference=${3:-../shared/fixtures/reference/minilm_sentence_embeddings.safetensors}
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c "import numpy, safetensors" 2>/dev/null || bench/.venv/bin/pip install -q numpy safetensors
cargo build --release -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s.%N)
./target/release/wick --threads 1 eval "$model" --data "$sentences" --predictions "$tmp/e.safetensors" --quiet 2>/dev/null
end=$(date +%s.%N)
bench/.venv/bin/python - "$tmp/e.safetensors" "$reference" "$(echo "$end - $start" | bc)" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
got, ref = load_file(sys.argv[1])["embeddings"], load_file(sys.argv[2])["embeddings"]
cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
print(f"{len(cos)} sentences: cosine to PyTorch min {cos.min():.9f}, mean {cos.mean():.9f}; max |difference| {np.abs(got - ref).max():.2e}; wick eval took {float(sys.argv[3]):.2f} s (1 thread, load included)")
PY
