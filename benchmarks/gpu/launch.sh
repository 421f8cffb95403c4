#!/usr/bin/env bash
# The GPU work of issues 12-14, side by side on one GPU, in the background (setsid) so that it
# outlives one device call; collect.sh gathers what has finished:
#   - two shipped-detector candidates on FracAtlas train, the better on val is shipped (issue 12):
#     the "gpu" recipe and the "cpu" recipe's 512 px with a GPU-length schedule;
#   - the active-learning benchmark (issue 13): the body-part source model, round 0's shared scores,
#     then one process per strategy and seed, and the full-pool reference;
#   - the segmentation study (issue 14), one process per network.
# Run from the repository root with .gpu/ holding fracatlas/ (the shared data), the ImageNet
# MobileNetV2 checkpoint and whl/ (the packages the device's image lacks). Every job has a time
# budget that fits one 30-minute device lease. SMOKE=1 runs all of it tiny, to check this script on
# a CPU before spending device time (PY=$PWD/.venv/bin/python DATA=fracture_al/sample SMOKE=1 ...).
set -euo pipefail
PY=${PY:-python3}
WORK=${WORK:-/tmp/gpu}
DATA=${DATA:-.gpu/fracatlas}
if [ -n "${SMOKE:-}" ]; then
  DETECTOR_MINUTES=0.3 DETECTOR_EPOCHS=1 SOURCE_EPOCHS=1 ROUNDS=1 CANDIDATES=6 BATCH=4 SEEDS="0" \
    STRATEGIES="random cald" SEGMENTATION_MINUTES=0.1 IMAGE_SIZE=64 NETWORKS="unet vit"
else
  DETECTOR_MINUTES=17 DETECTOR_EPOCHS=40 SOURCE_EPOCHS=10 ROUNDS=6 CANDIDATES=120 BATCH=20 SEEDS="0 1 2" \
    STRATEGIES="random entropy image_entropy tta entropy_k_center cald hard_negative" SEGMENTATION_MINUTES=14 \
    IMAGE_SIZE=384 \
    NETWORKS="unet attention_unet r2_unet swin_unetr mobilenet_v2 vit"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
  mkdir -p "$WORK/torch/hub/checkpoints"
  cp .gpu/mobilenet_v2-b0353104.pth "$WORK/torch/hub/checkpoints/"
fi
# Each device call sends the working tree again, replacing it mid-run: the jobs run from a copy.
# There the folders become fracture_al.<folder> (pyproject's package-dir) by links, without a wheel;
# the copy's own directory comes first on sys.path (python -m), so the links go inside its package.
mkdir -p "$WORK/tree" "$WORK/logs"
tar --exclude=./.git --exclude='./.venv*' --exclude=./benchmarks/results -cf - . | tar -xf - -C "$WORK/tree"
cd "$WORK/tree"
for folder in detection sampling integrations worker backend; do ln -sfn "../$folder" "fracture_al/$folder"; done
export PYTHONPATH="$PWD:/tmp/site" TORCH_HOME="$WORK/torch" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
$PY -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available())"

run() { local name=$1; shift; setsid nohup "$@" > "$WORK/logs/$name.log" 2>&1 < /dev/null & }

for recipe in gpu cpu; do
  run "detector-$recipe" $PY -m benchmarks.train_fracatlas --data "$DATA" --recipe $recipe --epochs $DETECTOR_EPOCHS \
    --time-budget $DETECTOR_MINUTES --home "$WORK/detector-$recipe" --out "$WORK/detector-$recipe.json"
done

active_learning() {
  $PY -m benchmarks.few_label_finetune --stage source --recipe cpu --epochs $SOURCE_EPOCHS --data "$DATA" \
    --out "$WORK/few_label"
  local al="$PY -m benchmarks.active_learning --data $DATA --source $WORK/few_label/source_model.pt
    --out $WORK/active_learning --candidates $CANDIDATES --batch $BATCH --rounds $ROUNDS"
  $al --rounds 0 --strategies random --seeds $SEEDS --full-pool skip  # round 0's shared scores, once
  for seed in $SEEDS; do
    for strategy in $STRATEGIES; do
      $al --strategies $strategy --seeds $seed --full-pool skip > "$WORK/logs/al-$strategy-s$seed.log" 2>&1 &
    done
  done
  $al --full-pool only --seeds 0 > "$WORK/logs/al-full-pool.log" 2>&1 &
  wait
}
export -f active_learning
export PY WORK DATA SOURCE_EPOCHS CANDIDATES BATCH ROUNDS SEEDS STRATEGIES
run active-learning bash -c active_learning

for network in $NETWORKS; do
  run "segmentation-$network" nice -n 10 $PY -m benchmarks.segmentation_study --data "$DATA" --networks $network \
    --minutes $SEGMENTATION_MINUTES --epochs 80 --image-size $IMAGE_SIZE --out "$WORK/segmentation"
done
sleep 5
pgrep -fa "benchmarks\." | cut -c1-150
