"""Do the site augmentations (issue 14) help on X-rays from other hospitals? A choice made on
validation and on the external development set, never on a test split.

    python bench/site_augment_choice.py [--epochs 20] [--low-res-epochs 10] [--seeds 1 2 3] [--variants off today site opacity]
        [--name NAME]   # bench/results/NAME.json (default site_augment_choice)

The real pipeline stages (preprocess, split, train) run as subprocesses in a scratch copy of
the project, with data.dir pointed at ../shared/data/lungs-kaggle-layout-sample and the
documented CPU recipe (default params, train.epochs=20, train.low_res_epochs=10), once per split seed. Each variant changes only the augment
section; the train stage's own validation Dice (the split's val part) is read from its report,
then `lungseg evaluate` scores its model on ../shared/data/covid-cxr-sample (other hospitals,
COVID-19 X-rays): mean Dice at 128 px, worst image, and the number of images below 0.8.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import (
    DEV_SET,
    print_table,
    require_dev_set,
    require_real_sample,
    run_in,
    score_dev_set,
    scratch_project,
    set_params,
    write_results,
)

# the augment keys each variant sets; everything else stays as params.yaml has it
SITE = {"contrast": 0.4, "gamma": 0.4, "blur": 1.0, "sharpen": 1.0, "border_probability": 0.3,
        "text_probability": 0.3}
VARIANTS = {
    "off": {"enabled": False},
    "today": {"enabled": True, "contrast": 0.2, "gamma": 0.2, "blur": 0.0, "sharpen": 0.0,
              "border_probability": 0.0, "text_probability": 0.0},
    "site": {"enabled": True, **SITE},
    "opacity": {"enabled": True, **SITE, "opacity_probability": 0.3},  # and a dense opacity in a lung
}
GOOD_DICE = 0.8


def prepare(workdir: Path, epochs: int, low_res_epochs: int, seed: int) -> dict:
    """Copy the project into workdir, point it at the real sample, run preprocess and split once;
    the params changes every variant shares."""
    changes = {"data.dir": str(require_real_sample()), "train.epochs": epochs, "train.low_res_epochs": low_res_epochs,
               "split.seed": seed}
    scratch_project(workdir, changes)
    for stage in ("preprocess", "split"):
        run_in(workdir, [sys.executable, f"stages/{stage}.py"])
    return changes


def score_variant(name: str, changes: dict, workdir: Path, seed: int) -> dict:
    """Train with the variant's augment keys; its validation Dice and its scores on the dev set."""
    set_params(workdir, {**changes, **{f"augment.{key}": value for key, value in VARIANTS[name].items()}})
    started = time.perf_counter()
    run_in(workdir, [sys.executable, "stages/train.py"])
    seconds = time.perf_counter() - started
    report = json.loads((workdir / "results" / "training_report.json").read_text())
    dev = score_dev_set(workdir, f"dev_{name}")["dice"]  # at 128 px (robustness.py scores at native size)
    return {"variant": name, "seed": seed, "val_dice": report["val_dice_postprocessed"], "postprocess": report["postprocess"],
            "dev_dice_mean": float(dev.mean()), "dev_dice_worst": float(dev.min()),
            f"dev_below_{GOOD_DICE}": int((dev < GOOD_DICE).sum()), "dev_images": len(dev),
            "best_epoch": report["best_epoch"], "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="train.epochs (20: the documented CPU recipe)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--low-res-epochs", type=int, default=10, help="train.low_res_epochs (10: the CPU recipe)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42], help="split seeds, one run of each variant per seed")
    parser.add_argument("--name", default="site_augment_choice")
    args = parser.parse_args()
    require_dev_set()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="site_augment_") as scratch:
            workdir = Path(scratch)
            changes = prepare(workdir, args.epochs, args.low_res_epochs, seed)
            for name in args.variants:
                rows.append(score_variant(name, changes, workdir, seed))
                print(f"seed {seed} {name}: val {rows[-1]['val_dice']:.4f}  dev {rows[-1]['dev_dice_mean']:.4f}", flush=True)
    numeric = [key for key in rows[0] if key not in ("variant", "seed", "postprocess")]
    summary = pd.DataFrame(rows).groupby("variant", sort=False)[numeric].mean().reset_index().to_dict("records")
    write_results(args.name, rows, summary=summary, variants={v: VARIANTS[v] for v in args.variants},
                  epochs=args.epochs, low_res_epochs=args.low_res_epochs, dev_set=str(DEV_SET.name))
    print_table(f"augmentation variants, {args.epochs} epochs (val: the split's val part; dev: covid-cxr-sample)", rows)
    print_table(f"mean over split seeds {args.seeds}", summary)


if __name__ == "__main__":
    main()
