"""How well each mask's dice_estimate follows its true Dice, and how often the flag fires.

For each split seed, a copy of the project trains on the real Kaggle-layout sample twice: with
the documented CPU recipe (`recipe`) and for one epoch (`weak`, a poor model whose estimates must
still follow its poorer masks). Each model's Dice estimate is calibrated by its own train stage
on its validation images. Then, with the stages and commands a user runs:

  test   the sample's own test split (the evaluate stage; labelled like the training set)
  dev    the external development set ../shared/data/covid-cxr-sample (`lungseg evaluate`);
         its masks include the lung behind the heart and in the posterior angles, which the
         training masks leave out, so even a good mask scores about 0.86: judge it by rank and
         by its clear failures (Dice < 0.75)
  val    the sample's own validation images (`lungseg predict`): mostly good masks, so every
         flag there is one a user reads for nothing

Reported per model and seed: Pearson r, Spearman rho and the mean absolute error between the
estimate and the true Dice at native resolution, flag rates, the recall of the development set's
clear failures and the share of its good masks (>= 0.85) flagged. `tta7_rho` is the floor the
estimate has to beat: the plain mean Dice of 7 test-time views against the base mask (gamma 0.7
and 1.4, contrast 0.7, zoom 0.9 and 1.1, two 6 % shifts). Then the flag's limit quality.min_dice
is swept over the recorded estimates (`limits`), with the default synthetic run's test split
(results/per_image.csv, when present) beside them. Last, `lungseg calibrate` fits each model's
estimate on one half of the development set and it is scored on the other half, both ways round
(`site_half_*`), beside the train stage's own calibration on the same halves (`own_half_*`):
what labelling a few X-rays of one's own site buys.

    python bench/dice_estimate.py                    # seeds 1 2 3, ~8 min on 2 cores
    python bench/dice_estimate.py --seeds 1 --jobs 1 # a quick check
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from common import (
    DEV_SET,
    REAL_SAMPLE,
    ROOT,
    add_run_arguments,
    print_table,
    require_dev_set,
    require_real_sample,
    run_in,
    run_jobs,
    scratch_project,
    write_results,
)
from scipy import stats

from lungseg.core.config import PreprocessConfig
from lungseg.data.preprocess import preprocess_folder
from lungseg.inference.formats import load_predictor
from lungseg.inference.predictor import torch_threads
from lungseg.model.metrics import dice_per_image

RECIPES = {"recipe": {"train.epochs": 20, "train.low_res_epochs": 10},  # docs/accuracy.md: the CPU recipe
           "weak": {"train.epochs": 1, "train.low_res_epochs": 0}}
STAGES = ("preprocess", "split", "train", "evaluate")
FAILED, GOOD = 0.75, 0.85  # the development set's clear failures and good masks
LIMITS = (0.88, 0.89, 0.90, 0.91, 0.92, 0.925, 0.93, 0.94, 0.95)
HARD = ("no lung found", "one lung only", "3+ components")  # the rules that flag whatever the estimate


# --------------------------------------------------------------------------- the floor: 7 test-time views


def _view(images: torch.Tensor, gamma=1.0, contrast=1.0, zoom=1.0, shift=(0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """One view of N x 1 x S x S images in [0, 1], and the affine map (theta) that made it."""
    x = images.clamp_min(1e-6) ** gamma
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    theta = torch.tensor([[1 / zoom, 0, shift[0]], [0, 1 / zoom, shift[1]]], dtype=torch.float32).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False), theta


def _back(probabilities: torch.Tensor, theta: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """View probabilities mapped back onto the base image, and where they are defined."""
    inverse = torch.linalg.inv(torch.cat([theta, torch.tensor([[[0, 0, 1.0]]]).expand(len(theta), 1, 3)], 1))[:, :2]
    grid = F.affine_grid(inverse, list(probabilities.shape), align_corners=False)
    back = F.grid_sample(probabilities, grid, align_corners=False)[:, 0].numpy()
    seen = F.grid_sample(torch.ones_like(probabilities), grid, align_corners=False)[:, 0].numpy() > 0.99
    return back, seen


TTA_VIEWS = ({"gamma": 0.7}, {"gamma": 1.4}, {"contrast": 0.7}, {"zoom": 0.9}, {"zoom": 1.1},
             {"shift": (0.12, 0.0)}, {"shift": (0.0, 0.12)})  # 0.12 grid units: 6 % of the side


def tta_agreement(model_path: Path, folder: Path) -> pd.DataFrame:
    """Per image of `folder` (by id): the mean Dice of the 7 views' masks against the base mask."""
    predictor = load_predictor(model_path, "cpu")
    images, _, index = preprocess_folder(folder, PreprocessConfig(**predictor.preprocess))
    base = predictor.masks(images).astype(bool)
    tensor = torch.from_numpy(images).float()[:, None] / 255
    agreement = []
    for settings in TTA_VIEWS:
        view, theta = _view(tensor, **settings)
        uint8 = (view[:, 0] * 255).round().to(torch.uint8).numpy()
        back, seen = _back(torch.from_numpy(predictor.probabilities(uint8))[:, None], theta)
        agreement.append(dice_per_image((back > predictor.threshold) & seen, base & seen))
    return pd.DataFrame({"id": index["id"].astype(str), "tta7": np.mean(agreement, axis=0)})


# --------------------------------------------------------------------------- calibrating on the site's own images


def halves(folder: Path, scratch: Path) -> list[Path]:
    """The development set split in two plain-layout folders (alternate pairs by name), as links."""
    names = sorted(path.name for path in (folder / "image").iterdir())
    parts = [scratch / f"half{k}" for k in (0, 1)]
    for k, name in enumerate(names):
        for kind in ("image", "mask"):
            target = parts[k % 2] / kind / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(folder / kind / name)
    return parts


def site_calibration(project: Path, threads: int) -> dict:
    """`lungseg calibrate` on one half of the development set, scored on the other half (both
    ways round), against the train stage's own calibration scored on the same halves: what
    labelling 21 X-rays of a site buys."""
    scores = {"own": [], "site": []}
    parts = halves(DEV_SET, project / "halves")
    for k, (fit, held_out) in enumerate((parts, parts[::-1])):
        run_in(project, [sys.executable, "-m", "lungseg.cli", "calibrate", "results/best_unet.pth", "--data", str(fit),
                         "--out", f"site{k}"], threads)
        for name, model in (("own", "results/best_unet.pth"), ("site", f"site{k}/best_unet.pth")):
            run_in(project, [sys.executable, "-m", "lungseg.cli", "evaluate", "--model", model, "--data", str(held_out),
                             "--out", f"held_out_{name}{k}", "--quiet", "--workers", str(threads)], threads)
            scores[name].append(scored(read_scores(project / f"held_out_{name}{k}" / "per_image.csv")))
    row = {}
    for name, tables in scores.items():
        table = pd.concat(tables)
        row |= {f"{name}_half_mae": float(np.mean(np.abs(table["estimate"] - table["dice"]))),
                f"{name}_half_rho": float(np.mean([stats.spearmanr(t["estimate"], t["dice"])[0] for t in tables]))}
    return row


# --------------------------------------------------------------------------- one trained model


def predictions(project: Path, inputs: list[str], out: str, threads: int) -> pd.DataFrame:
    """`lungseg predict` on `inputs`: dice_estimate and flag per image."""
    command = [sys.executable, "-m", "lungseg.cli", "predict", "results/best_unet.pth", *inputs, "--out", out,
               "--no-overlays", "--quiet"]
    run_in(project, command, threads)
    return pd.read_csv(project / out / "predictions.csv", keep_default_na=False)


def validation_inputs(project: Path) -> list[str]:
    index = pd.read_csv(project / "data" / "processed" / "index.csv", dtype=str, keep_default_na=False)
    split = pd.read_csv(project / "data" / "split.csv", dtype=str)
    return [str(REAL_SAMPLE / name) for name in index.loc[index["id"].isin(split.loc[split["split"] == "val", "id"]), "image_file"]]


def read_scores(path: Path) -> pd.DataFrame:
    """A per_image.csv with ids and flags as text (an empty flag stays "")."""
    table = pd.read_csv(path, dtype={"id": str})
    return table.assign(flag=table["flag"].astype(object).where(table["flag"].notna(), "").astype(str))


def scored(table: pd.DataFrame) -> pd.DataFrame:
    """id, true Dice (native), estimate and the flag's hard reasons from a per_image.csv."""
    flag = table["flag"]
    return pd.DataFrame({"id": table["id"].astype(str), "dice": table["dice_native"], "estimate": table["dice_estimate"],
                         "hard": flag.map(lambda text: any(reason in text for reason in HARD)), "flagged": flag != ""})


def agreement(table: pd.DataFrame, prefix: str) -> dict:
    truth, estimate = table["dice"].to_numpy(float), table["estimate"].to_numpy(float)
    return {f"{prefix}_r": stats.pearsonr(estimate, truth)[0], f"{prefix}_rho": stats.spearmanr(estimate, truth)[0],
            f"{prefix}_mae": float(np.mean(np.abs(estimate - truth))), f"{prefix}_flag": float(table["flagged"].mean())}


def run_job(kind: str, seed: int, keep: Path | None, threads: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"estimate-{kind}-{seed}-"))
    project = scratch_project(folder, {**RECIPES[kind], "data.dir": str(REAL_SAMPLE), "split.seed": seed})
    started = time.perf_counter()
    for name in STAGES:
        run_in(project, [sys.executable, f"stages/{name}.py"], threads)
    seconds = time.perf_counter() - started
    run_in(project, [sys.executable, "-m", "lungseg.cli", "evaluate", "--model", "results/best_unet.pth", "--data",
                     str(DEV_SET), "--out", "dev", "--quiet", "--workers", str(threads)], threads)
    test = scored(read_scores(project / "results" / "per_image.csv"))
    dev = scored(read_scores(project / "dev" / "per_image.csv"))
    val = predictions(project, validation_inputs(project), "val", threads)
    with torch_threads(threads):
        dev = dev.merge(tta_agreement(project / "results" / "best_unet.pth", DEV_SET), on="id")
    site = site_calibration(project, threads)
    failed, good = dev["dice"] < FAILED, dev["dice"] >= GOOD
    row = {"model": kind, "seed": seed, "test_dice": test["dice"].mean(), **agreement(test, "test"),
           "dev_dice": dev["dice"].mean(), **agreement(dev, "dev"),
           "tta7_rho": stats.spearmanr(dev["tta7"], dev["dice"])[0],
           "dev_failed": int(failed.sum()), "dev_caught": int((failed & dev["flagged"]).sum()),
           "dev_good_flagged": float(dev.loc[good, "flagged"].mean()) if good.any() else float("nan"),
           "val_flag": float((val["flag"] != "").mean()), **site, "pipeline_seconds": seconds}
    if keep:
        for name, table in (("test", test), ("dev", dev)):
            table.assign(model=kind, seed=seed).to_csv(keep / f"{name}_{kind}_{seed}.csv", index=False)
        val.assign(model=kind, seed=seed).to_csv(keep / f"val_{kind}_{seed}.csv", index=False)
    shutil.rmtree(folder)
    return row


# --------------------------------------------------------------------------- the flag's limit


def flag_rates(keep: Path, limit: float) -> dict:
    """The flag at `limit` recomputed from the kept estimates (hard reasons kept as they were)."""
    row = {"min_dice": limit}
    for kind in RECIPES:
        dev = pd.concat([pd.read_csv(path) for path in keep.glob(f"dev_{kind}_*.csv")])
        test = pd.concat([pd.read_csv(path) for path in keep.glob(f"test_{kind}_*.csv")])
        val = pd.concat([pd.read_csv(path, keep_default_na=False) for path in keep.glob(f"val_{kind}_*.csv")])
        flags = {name: table["hard"] | (table["estimate"] < limit) for name, table in (("dev", dev), ("test", test))}
        val_flags = val["flag"].str.contains("|".join(HARD)) | (val["dice_estimate"].astype(float) < limit)
        failed, good = dev["dice"] < FAILED, dev["dice"] >= GOOD
        row |= {f"{kind}_dev_recall": float(flags["dev"][failed].mean()) if failed.any() else float("nan"),
                f"{kind}_dev_good_flagged": float(flags["dev"][good].mean()), f"{kind}_test_flag": float(flags["test"].mean()),
                f"{kind}_val_flag": float(val_flags.mean())}
    synthetic = ROOT / "results" / "per_image.csv"
    if synthetic.is_file():
        table = scored(read_scores(synthetic))
        row["synthetic_test_flag"] = float((table["hard"] | (table["estimate"] < limit)).mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    add_run_arguments(parser, "dice_estimate", "keep the per-image estimates here (outside git; default: a temporary folder)")
    args = parser.parse_args()
    require_real_sample(), require_dev_set()
    keep = Path(args.keep_scores or tempfile.mkdtemp(prefix="estimate-scores-"))
    keep.mkdir(parents=True, exist_ok=True)
    jobs = [(kind, seed, keep) for seed in args.seeds for kind in args.models]
    rows = run_jobs(run_job, jobs, args.jobs)
    table = pd.DataFrame(rows)
    summary = table.drop(columns="seed").groupby("model", sort=False).mean().reset_index()
    pooled = table.groupby("model", sort=False)[["dev_failed", "dev_caught"]].sum()
    summary["dev_recall"] = summary["model"].map(pooled["dev_caught"] / pooled["dev_failed"])
    limits = [flag_rates(keep, limit) for limit in LIMITS] if set(args.models) == set(RECIPES) else []
    print_table("runs", rows)
    print_table("mean over split seeds (dev_recall: pooled over the seeds)", summary.to_dict("records"))
    if limits:
        print_table("the flag at other limits (quality.min_dice)", limits)
    if not args.keep_scores:
        shutil.rmtree(keep)
    write_results(args.name, rows, summary=summary.to_dict("records"), limits=limits, dev_set=DEV_SET.name,
                  failed_below=FAILED, good_from=GOOD)


if __name__ == "__main__":
    main()
