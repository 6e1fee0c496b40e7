#!/usr/bin/env bash
# Runs each fuzz target (or those named) for SECONDS (default 600) on its corpus, seeded by
# seed.sh when empty. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# A crash, a hang past 10 s or an allocation past 2 GiB stops the target and leaves the input
# in fuzz/artifacts/<target>/; the last line of each log gives the executions and coverage.
#   fuzz/run.sh 600                      # every target, ten minutes each
#   fuzz/run.sh 60 recipe manifest       # two targets, a minute each
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors architecture recipe manifest int8_artifact onnx)
[ -d corpus/recipe ] || ./seed.sh
mkdir -p logs
for t in "${targets[@]}"; do
  echo "== $t: $seconds s"
  dict=(); [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- "${dict[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"logs/$t.log" 2>&1 || { echo "$t: FAILED, see fuzz/logs/$t.log"; tail -30 "logs/$t.log"; exit 1; }
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "logs/$t.log" | tr '\n' ' '
  tail -1 "logs/$t.log" | grep -v '^stat' || true
  echo
done
