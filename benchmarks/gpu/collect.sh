#!/usr/bin/env bash
# Wait up to $1 seconds for the background benchmarks to finish, then copy what exists to $OUT.
set -uo pipefail
deadline=$((SECONDS + ${1:-540}))
while [ $SECONDS -lt $deadline ] && pgrep -f "python3 -m benchmarks" > /dev/null; do
  sleep 20
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  for f in /tmp/gpu/logs/*.log; do printf '%s: ' "$(basename $f)"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -1 | cut -c1-150; done
done
cd /tmp/gpu
tar czf "$OUT/results.tgz" --exclude='*.pt' --exclude='runs' --exclude='*/images' logs ablation few_label/*.json \
  shipped-*.json shipped-*/models/versions/*/metrics.json shipped-*/models/versions/*/config.json \
  shipped-*/models/versions/*/history.json shipped-*/models/versions/*/plots 2>/dev/null
for candidate in shipped-1024; do
  model=$(ls $candidate/models/versions/*/model.pt 2>/dev/null | tail -1) || true
  [ -n "$model" ] && python3 -c "
import torch, sys
saved = torch.load(sys.argv[1], map_location='cpu', weights_only=True)
saved['model'] = {k: v.half() if v.is_floating_point() else v for k, v in saved['model'].items()}
torch.save(saved, sys.argv[2])" "$model" "/tmp/gpu/$candidate-fp16.pt" && split -b 15M "/tmp/gpu/$candidate-fp16.pt" "$OUT/$candidate-fp16.pt.part-"
done
ls -la $OUT; pgrep -fa "python3 -m benchmarks" | cut -c1-120 || echo "all finished"
