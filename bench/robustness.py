"""Robustness on X-rays unlike the training set: the recipe before issue 14 (`before`), with
the site augmentations but no opacities (`site`), and today's defaults (`after`).

For each variant and split seed, a copy of the project trains on the real Kaggle-layout sample
with the documented CPU recipe (the stages as subprocesses, as `dvc repro` runs them), scores its
own test split, then scores the external development set (../shared/data/covid-cxr-sample) with
`lungseg evaluate` and flags its predictions with `lungseg predict`. Every choice the recipe makes
is made on validation; the development set only measures.

Reported per variant: the sample's test Dice, and on the development set the mean Dice, the
worst image, the images below 0.8, and how well `flag` finds the images below 0.85 Dice
(recall, and the share of images flagged); and the share of the sample's own validation images
flagged (mostly good masks: flags a user reads for nothing). --keep-scores saves the per-image
quality columns. How good the estimated Dice behind the flag is: bench/dice_estimate.py.

    python bench/robustness.py                        # seeds 1 2 3, every variant
    python bench/robustness.py --seeds 1 --jobs 1     # a quick check
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from common import (
    DEV_SET,
    REAL_SAMPLE,
    add_run_arguments,
    print_table,
    require_dev_set,
    require_real_sample,
    run_in,
    run_jobs,
    score_dev_set,
    scratch_project,
    write_results,
)

from lungseg.evaluation.scores import truth_column

RECIPE = {"train.epochs": 20, "train.low_res_epochs": 10}  # docs/accuracy.md: the CPU recipe
NO_OPACITY = {"augment.opacity_probability": 0.0}
# the recipe before issue 14: min-max stretch, the original augmentations only
BEFORE = {**RECIPE, **NO_OPACITY, "preprocess.normalize": "minmax", "augment.contrast": 0.2, "augment.gamma": 0.2,
          "augment.blur": 0.0, "augment.sharpen": 0.0, "augment.border_probability": 0.0, "augment.text_probability": 0.0}
# "site": percentile stretch and site augmentations, no opacities; "after": today's defaults
VARIANTS = {"before": BEFORE, "site": {**RECIPE, **NO_OPACITY}, "after": RECIPE}
STAGES = ("preprocess", "split", "train", "evaluate")
LOW_DICE = 0.85  # what the flag should find (issue 14)


QUALITY = ["lung_fraction", "right_lung_px", "left_lung_px", "n_components", "balance", "dice_estimate", "flag"]


def predictions(project: Path, model: str, inputs: list[str], out: str, threads: int) -> pd.DataFrame:
    """`lungseg predict` on `inputs`: the quality columns and flag per image, by id (file stem)."""
    command = [sys.executable, "-m", "lungseg.cli", "predict", model, *inputs, "--out", out, "--no-overlays", "--quiet"]
    run_in(project, command, threads)
    table = pd.read_csv(project / out / "predictions.csv", keep_default_na=False)
    return table.assign(id=table["input"].map(lambda path: Path(path).stem))[["id", *QUALITY]]


def dev_set_scores(project: Path, threads: int) -> pd.DataFrame:
    """Per image of the development set: Dice (lungseg evaluate), quality columns and flag (lungseg predict)."""
    model = str(project / "results" / "best_unet.pth")
    scores = score_dev_set(project, "dev_eval", threads)
    dice_column = truth_column(scores)
    flags = predictions(project, model, [str(DEV_SET / "image")], "dev_pred", threads)
    return scores[["id", dice_column]].rename(columns={dice_column: "dice"}).merge(flags, on="id")


def validation_flags(project: Path, threads: int) -> pd.DataFrame:
    """The quality columns and flag of the sample's own validation images: X-rays like the
    training set, mostly segmented well, so every flag there is one a user reads for nothing."""
    index = pd.read_csv(project / "data" / "processed" / "index.csv", dtype=str, keep_default_na=False)
    split = pd.read_csv(project / "data" / "split.csv", dtype=str)
    val = index[index["id"].isin(split.loc[split["split"] == "val", "id"])]
    inputs = [str(REAL_SAMPLE / name) for name in val["image_file"]]
    return predictions(project, str(project / "results" / "best_unet.pth"), inputs, "val_pred", threads)


def run_job(variant: str, seed: int, keep: Path | None, threads: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"robust-{variant}-{seed}-"))
    overrides = {**VARIANTS[variant], "data.dir": str(REAL_SAMPLE), "split.seed": seed}
    project = scratch_project(folder, overrides)
    started = time.perf_counter()
    for name in STAGES:
        run_in(project, [sys.executable, f"stages/{name}.py"], threads)
    seconds = time.perf_counter() - started
    metrics = yaml.safe_load((project / "results" / "metrics.json").read_text())["test"]
    dev, val = dev_set_scores(project, threads), validation_flags(project, threads)
    low, flagged = dev["dice"] < LOW_DICE, dev["flag"].astype(str).str.len() > 0
    row = {"variant": variant, "seed": seed, "test_dice": metrics["dice"], "test_worst": metrics["dice_min"],
           "dev_mean": dev["dice"].mean(), "dev_worst": dev["dice"].min(), "dev_below_0.8": int((dev["dice"] < 0.8).sum()),
           "dev_below_0.5": int((dev["dice"] < 0.5).sum()), "dev_low": int(low.sum()),
           "flag_recall": (flagged & low).sum() / low.sum() if low.any() else float("nan"),
           "flag_rate": flagged.mean(), "val_flag_rate": (val["flag"].str.len() > 0).mean(), "pipeline_seconds": seconds}
    if keep:
        dev.assign(variant=variant, seed=seed).to_csv(keep / f"dev_{variant}_{seed}.csv", index=False)
        val.assign(variant=variant, seed=seed).to_csv(keep / f"val_{variant}_{seed}.csv", index=False)
    shutil.rmtree(folder)
    return row


def summarise(rows: list[dict]) -> list[dict]:
    table = pd.DataFrame(rows)
    numeric = [c for c in table.columns if c not in ("variant", "seed")]
    return table.groupby("variant", sort=False)[numeric].mean().reset_index().to_dict("records")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    add_run_arguments(parser, "robustness", "write each run's per-image development-set scores here (outside git)")
    args = parser.parse_args()
    require_real_sample(), require_dev_set()
    keep = Path(args.keep_scores) if args.keep_scores else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    jobs = [(variant, seed, keep) for seed in args.seeds for variant in args.variants]
    rows = run_jobs(run_job, jobs, args.jobs)
    print_table("runs", rows)
    print_table("mean over split seeds", summary := summarise(rows))
    write_results(args.name, rows, summary=summary, variants=VARIANTS, dev_set=DEV_SET.name, low_dice=LOW_DICE)


if __name__ == "__main__":
    main()
