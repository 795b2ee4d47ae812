"""Which intensity normalisation (preprocess.normalize) should be the default? Measured, never on a test split.

For each method and split seed, the real pipeline stages (preprocess, split, train) run as
subprocesses in a temporary copy of the project with the CPU recipe (default params, train.epochs
20: docs/accuracy.md), on the real sample; then `lungseg evaluate` scores the trained model on the
external development set (../shared/data/covid-cxr-sample: X-rays from other hospitals, some with
burned-in labels). Reported per run: the validation Dice the train stage chose its epoch and
post-processing by, and the development set's mean, worst and number of images below 0.8 Dice
(native resolution). The test split is never looked at.

    python bench/normalize_choice.py                                # 4 methods x seed 42, 20 epochs
    python bench/normalize_choice.py --seeds 42 1 --epochs 10       # a quicker look, more seeds
    python bench/normalize_choice.py --jobs 2 --threads 1           # two runs at once, one core each
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
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
    write_results,
)

METHODS = ["minmax", "percentile", "equalize", "clahe"]
GOOD = 0.8  # a development image below this Dice counts as a failure


def train_and_score(method: str, seed: int, epochs: int, threads: int, data: Path) -> dict:
    """One run, in a temporary project folder: the pipeline's preprocess, split and train stages
    with this normalisation and split seed (torch on `threads` cores), then `lungseg evaluate` on
    the development set. Returns the row for the table."""
    with tempfile.TemporaryDirectory(prefix="normalize_choice_") as folder:
        return _train_and_score(method, seed, epochs, threads, data, Path(folder))


def _train_and_score(method: str, seed: int, epochs: int, threads: int, data: Path, workdir: Path) -> dict:
    scratch_project(workdir, {"data.dir": str(data), "preprocess.normalize": method, "split.seed": seed,
                              "train.epochs": epochs})
    started = time.perf_counter()
    for stage in ("preprocess", "split", "train"):
        run_in(workdir, [sys.executable, f"stages/{stage}.py"], threads)
    train_seconds = time.perf_counter() - started
    report = json.loads((workdir / "results" / "training_report.json").read_text())
    scores = score_dev_set(workdir, "dev", threads)
    dice = scores["dice_native"]
    return {"method": method, "seed": seed, "epochs": epochs, "val_dice": report["val_dice_postprocessed"],
            "best_epoch": report["best_epoch"], "postprocess": report["postprocess"],
            "dev_mean": float(dice.mean()), "dev_worst": float(dice.min()), f"dev_below_{GOOD}": int((dice < GOOD).sum()),
            "dev_mean_128px": float(scores["dice"].mean()), "worst_image": str(scores.loc[dice.idxmin(), "id"]),
            "seconds": train_seconds}


def summarise(rows: list[dict]) -> list[dict]:
    """Per method, averaged over the seeds run."""
    table = pd.DataFrame(rows)
    out = []
    for method, group in table.groupby("method", sort=False):
        out.append({"method": method, "seeds": len(group), "val_dice": group["val_dice"].mean(),
                    "dev_mean": group["dev_mean"].mean(), "dev_worst": group["dev_worst"].mean(),
                    f"dev_below_{GOOD}": group[f"dev_below_{GOOD}"].mean()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=["minmax", "percentile", "equalize", "clahe", "none"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42], help="split seeds (the pipeline's default is 42)")
    parser.add_argument("--epochs", type=int, default=20, help="train.epochs (the CPU recipe: 20)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each its own processes)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--name", default="normalize_choice")
    args = parser.parse_args()
    data = require_real_sample()
    require_dev_set()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    runs = [(m, s) for s in args.seeds for m in args.methods]  # seeds outside: the first results cover every method
    rows, started = [], time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:  # threads only wait: the work is in the stage processes
        futures = [pool.submit(train_and_score, m, s, args.epochs, threads, data) for m, s in runs]
        for done in as_completed(futures):
            rows.append(done.result())
            print(f"{rows[-1]['method']} seed {rows[-1]['seed']}: val Dice {rows[-1]['val_dice']:.4f}, "
                  f"dev mean {rows[-1]['dev_mean']:.4f} worst {rows[-1]['dev_worst']:.4f}", flush=True)
            rows.sort(key=lambda row: runs.index((row["method"], row["seed"])))
            # after every run, so a run cut short still leaves what it finished
            write_results(args.name, rows, summary=summarise(rows), dev_set=str(DEV_SET.name), data=str(data.name),
                          epochs=args.epochs, threads=threads, jobs=args.jobs, wall_seconds=time.perf_counter() - started,
                          complete=len(rows) == len(runs), quiet=True)
    print_table("runs (dev = external development set, Dice at native resolution)", rows)
    print_table("per method (mean over seeds)", summarise(rows))


if __name__ == "__main__":
    main()
