#!/usr/bin/env bash
# Wait up to $1 seconds for launch.sh's background jobs to finish (printing each log's last line),
# then copy what exists to $OUT: the results (JSON, logs, plots) and, once trained, each detector
# candidate's weights in half precision, split into parts under the device tool's file limit.
set -uo pipefail
WORK=${WORK:-/tmp/gpu}
PY=${PY:-python3}
deadline=$((SECONDS + ${1:-540}))
while [ $SECONDS -lt $deadline ] && pgrep -f "benchmarks\." > /dev/null; do
  sleep 30
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  for f in "$WORK"/logs/*.log; do
    printf '%s: ' "$(basename "$f")"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -1 | cut -c1-160
  done
done
cd "$WORK" || exit 1
find . \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.png' -o -name '*.md' -o -name '*.txt' \) \
  -not -path './tree/*' -not -path './torch/*' -not -path '*/data/*' -not -name 'labelled.json' \
  -not -path '*/source/train.json' -not -path '*/source/val.json' -not -path '*/source/test.json' \
  | tar czf "$WORK/results.tgz" -T -
split -b 15M "$WORK/results.tgz" "$OUT/results.tgz.part-"  # the device tool returns files of at most 16 MiB
for candidate in detector-gpu detector-cpu; do
  model=$(ls $candidate/models/versions/*/model.pt 2>/dev/null | tail -1)
  [ -n "$model" ] || continue
  $PY -c "
import sys, torch
saved = torch.load(sys.argv[1], map_location='cpu', weights_only=True)
saved['model'] = {k: v.half() if v.is_floating_point() else v for k, v in saved['model'].items()}
torch.save(saved, sys.argv[2])" "$model" "$WORK/$candidate-fp16.pt" \
    && split -b 15M "$WORK/$candidate-fp16.pt" "$OUT/$candidate-fp16.pt.part-"
done
ls -la "$OUT"; pgrep -fa "benchmarks\." | cut -c1-120 || echo "all finished"
