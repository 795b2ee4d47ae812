"""Time to accuracy on real X-rays: seconds of training until validation Dice reaches a target.

    python bench/time_to_accuracy.py [--target 0.95] [--seed-width 16] [--seed-seconds 240]

lungseg side: the real pipeline stages (preprocess, split, train) run as subprocesses in a
scratch copy of the project with the default params.yaml, data.dir pointed at
../shared/data/lungs-kaggle-layout-sample; the time is read from the train stage's epoch
lines (the seconds of each epoch's training and validation). Baseline, in the same run: the
seed-style loop (fp32, batch 2, DataLoader, constant lr 1e-3) on the same split, validated
with the same code after each epoch, until the target or the time cap.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from common import ROOT, print_table, real_split, require_real_sample, stage_history, write_results
from seed_style import seed_epoch, seed_loader

from lungseg.model.losses import BceDiceLoss
from lungseg.model.unet import UNet
from lungseg.training.loop import validate
from lungseg.training.recipe import tensors

PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "src"]


def run_pipeline_train(data_dir: Path, workdir: Path) -> tuple[pd.DataFrame, float, dict]:
    """Run preprocess, split and train exactly as dvc would; return the history, the train
    stage's wall time, and the params it ran with."""
    for name in PROJECT_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, workdir / name)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["data"]["dir"] = str(data_dir)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(workdir / "src")}
    wall, logs = {}, {}
    for stage in ("preprocess", "split", "train"):
        started = time.perf_counter()
        logs[stage] = subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=workdir, env=env, check=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        wall[stage] = time.perf_counter() - started
    return stage_history(workdir, logs["train"]), wall["train"], params


def seconds_to(history: pd.DataFrame, target: float) -> tuple[float | None, int | None]:
    elapsed = history["seconds"].cumsum()
    reached = history.index[history["val_dice"] >= target]
    return (float(elapsed[reached[0]]), int(history["epoch"][reached[0]])) if len(reached) else (None, None)


def seed_style_history(width: int, cap_seconds: float, target: float) -> pd.DataFrame:
    device = torch.device("cpu")
    parts = real_split()
    loader = seed_loader(*parts["train"], batch_size=2)
    val = tensors(*parts["val"], device)
    torch.manual_seed(42)
    model = UNet(depth=4, base_width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows, spent = [], 0.0
    while spent < cap_seconds:
        started = time.perf_counter()
        seed_epoch(model, optimizer, loader, device)
        scores = validate(model, BceDiceLoss(), val, 8, 0.5, None)
        spent += time.perf_counter() - started
        rows.append({"epoch": len(rows) + 1, "val_dice": scores["val_dice"], "seconds": time.perf_counter() - started})
        print(f"  seed-style epoch {len(rows)}: val Dice {scores['val_dice']:.4f} at {spent:.0f} s", flush=True)
        if scores["val_dice"] >= target:
            break
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--seed-width", type=int, default=16, help="U-Net base width of the seed-style baseline")
    parser.add_argument("--seed-seconds", type=float, default=240, help="time cap for the baseline")
    args = parser.parse_args()
    data_dir = require_real_sample()
    with tempfile.TemporaryDirectory() as scratch:
        history, train_wall, params = run_pipeline_train(data_dir, Path(scratch))
    baseline = seed_style_history(args.seed_width, args.seed_seconds, args.target)
    rows = []
    for name, table in [
        (f"lungseg train stage (defaults: base {params['model']['base_width']}, batch {params['train']['batch_size']}, "
         f"{params['train']['lr_schedule']} lr)", history),
        (f"seed-style (base {args.seed_width}, fp32, batch 2, DataLoader, constant lr)", baseline),
    ]:
        seconds, epoch = seconds_to(table, args.target)
        rows.append({"variant": name, f"seconds_to_{args.target}": seconds if seconds is not None else f"> {table['seconds'].sum():.0f}",
                     "epoch_reached": epoch or "-", "best_val_dice": float(table["val_dice"].max()),
                     "epochs_run": len(table), "training_seconds": float(table["seconds"].sum())})
    project_time, seed_time = seconds_to(history, args.target)[0], seconds_to(baseline, args.target)[0]
    speedup = seed_time / project_time if project_time and seed_time else None
    print_table(f"time to validation Dice {args.target} on the real sample (240 pairs, 128 px)", rows)
    print(f"train stage wall time (process start to exit): {train_wall:.1f} s; speed-up to target: {speedup}")
    write_results(f"time_to_accuracy_seed{args.seed_width}", rows, target=args.target, train_stage_wall_s=train_wall, speedup=speedup)


if __name__ == "__main__":
    main()
