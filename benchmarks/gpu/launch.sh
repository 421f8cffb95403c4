#!/usr/bin/env bash
# The GPU benchmarks of issue 12, side by side on one GPU, in the background (setsid), so that
# they outlive one device call: the recipe ablation, two shipped-model candidates and the
# few-label fine-tuning study. Run from the repository root with the data at .gpu/fracatlas
# and the ImageNet MobileNetV2 checkpoint at .gpu/; collect.sh gathers what has finished.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH="$PWD:/tmp/site" TORCH_HOME=/tmp/torch OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
mkdir -p /tmp/torch/hub/checkpoints /tmp/gpu/logs
cp .gpu/mobilenet_v2-b0353104.pth /tmp/torch/hub/checkpoints/
DATA=.gpu/fracatlas
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available())"
run() { local name=$1; shift; setsid nohup "$@" > "/tmp/gpu/logs/$name.log" 2>&1 < /dev/null & }
for variant in base res800 multiscale anchors positives ema light_head long all; do
  run "ablation-$variant" python3 -m benchmarks.recipe_ablation --data $DATA --variant $variant \
    --epochs 5 --workers 2 --time-budget 13 --out /tmp/gpu/ablation
done
run shipped-1024 python3 -m benchmarks.train_fracatlas --data $DATA --recipe gpu --epochs 12 --time-budget 14 \
  --home /tmp/gpu/shipped-1024 --out /tmp/gpu/shipped-1024.json
sleep 5; pgrep -fc "python3 -m benchmarks"
