#!/usr/bin/env bash
# Second GPU run: which larger-batch recipe keeps the accuracy on a GPU, and how long the real
# train stage takes with it at full-data size without torch.compile (its ~30 s compile, measured
# by gpu_check.sh and ddp_check.py, is half the minute such a run should take).
# Same inputs as bench/gpu_check.sh (.carry/ made beside the real sample, never committed).
set -u
export PYTHONPATH="$PWD/src:$PWD/bench" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_out}"; mkdir -p "$OUT"
DEVICE="${DEVICE:-cuda}"; SEEDS="${SEEDS:-1 2 3 4 5}"; EPOCHS="${EPOCHS:-0}"; JOBS="${JOBS:-15}"
step() { echo; echo "=== $1 ($(date +%T))"; }

step "GPU recipe candidates x 5 split seeds on the real sample"
timeout 80 python3 bench/recipe_ablation.py --processed .carry/real_processed --device "$DEVICE" --jobs "$JOBS" --seeds $SEEDS \
    --variants gpu_b8_w16_e30 gpu_b16_w16_e40 gpu_b32_w32_e60 --epochs "$EPOCHS" --name recipe_ablation_gpu_batches 2>&1 \
    | grep -v -e Warning -e "done:"
cp bench/results/recipe_ablation_gpu_batches.json "$OUT"/ 2>/dev/null

rm -rf data/processed data/split.csv && mkdir -p data && cp -r .carry/real_x3 data/processed && python3 stages/split.py
cp params.yaml /tmp/params.yaml.orig
for compile in never; do
  step "train stage, 576 images, batch 16, base 16, 40 epochs, compile $compile"
  sed -e "s/^  epochs: .*/  epochs: ${STAGE_EPOCHS:-40}/" -e "s/^  batch_size: 2 .*/  batch_size: 16/" -e "s/^  base_width: .*/  base_width: 16/" \
      -e "s/^  compile: .*/  compile: $compile/" /tmp/params.yaml.orig > params.yaml
  /usr/bin/time -f "wall %e s, max RSS %M KB" timeout 70 python3 stages/train.py 2>&1 | grep -v "^train" | tail -n 3
  cp results/history.csv "$OUT/gpu_stage_history_compile_$compile.csv" 2>/dev/null
done
cp /tmp/params.yaml.orig params.yaml
step "done"
