#!/usr/bin/env bash
# Everything lungseg measures on a GPU machine, in one run (device time is scarce).
# Needs: torch with CUDA, numpy, pandas, scipy, pillow, pyyaml, tqdm (no dvc), and the
# preprocessed real sample in .carry/ (made beside the real sample with
#   python bench/recipe_ablation.py --save-processed .carry/real_processed
# plus .carry/real_x3, that set tiled 3x, standing in for the full 704-image set; .carry/ is
# git-ignored and never committed). Results land in bench/results/*.json and in $OUT.
# A dry run on CPU with tiny settings: DEVICE=cpu SEEDS=1 VARIANTS=plain EPOCHS=1 JOBS=1 STAGE_EPOCHS=1 THROUGHPUT=0 bash bench/gpu_check.sh
set -u
export PYTHONPATH="$PWD/src:$PWD/bench" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_out}"; mkdir -p "$OUT"
DEVICE="${DEVICE:-cuda}"; SEEDS="${SEEDS:-1 2 3 4 5}"; VARIANTS="${VARIANTS:-plain recipe recipe_no_augment recipe_no_postprocess recipe_40_epochs recipe_base16}"
EPOCHS="${EPOCHS:-0}"; JOBS="${JOBS:-10}"; STAGE_EPOCHS="${STAGE_EPOCHS:-20}"; THROUGHPUT="${THROUGHPUT:-1}"
step() { echo; echo "=== $1 ($(date +%T))"; }

step "machine"
nvidia-smi -L 2>/dev/null; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

step "recipe ablation on the real sample: variants x split seeds, $JOBS jobs sharing the device"
timeout 240 python3 bench/recipe_ablation.py --processed .carry/real_processed --device "$DEVICE" --jobs "$JOBS" \
    --seeds $SEEDS --variants $VARIANTS --epochs "$EPOCHS" --name recipe_ablation_gpu 2>&1 | grep -v Warning
cp bench/results/recipe_ablation_gpu.json "$OUT"/ 2>/dev/null

step "the real train stage at full-data size (720 images, 576 for training), recipe params, default device settings"
rm -rf data/processed data/split.csv && mkdir -p data && cp -r .carry/real_x3 data/processed
cp params.yaml /tmp/params.yaml.orig && sed -i "s/^  epochs: .*/  epochs: $STAGE_EPOCHS/" params.yaml
python3 stages/split.py && /usr/bin/time -v timeout 130 python3 stages/train.py 2> "$OUT/train_stage_stderr.txt"
grep -E "Elapsed|Maximum resident" "$OUT/train_stage_stderr.txt"
cp results/history.csv "$OUT/train_stage_history.csv" 2>/dev/null; cp results/train_metrics.json "$OUT/train_stage_metrics.json" 2>/dev/null
cat "$OUT/train_stage_metrics.json" 2>/dev/null; echo
cp /tmp/params.yaml.orig params.yaml

if [ "$THROUGHPUT" = 1 ]; then
  step "training throughput at base 64 (issue 3 target: >= 4500 images/s on an H100)"
  timeout 90 python3 bench/train_throughput.py --widths 64 --seconds 2 --name train_throughput_gpu 2>&1 | tail -n 10
  cp bench/results/train_throughput_gpu.json "$OUT"/ 2>/dev/null
fi
step "done"
