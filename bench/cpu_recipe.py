"""The CPU recipe at full-data size: today's recipe against the new one, over split seeds.

    python bench/cpu_recipe.py                          # both recipes, split seeds 1 2 3 (~35 min on 2 quiet cores)
    python bench/cpu_recipe.py --seeds 1 --recipes new --try short train.epochs=16,train.low_res_epochs=8

Everything runs through the real stages, as subprocesses of a scratch copy of the project
(dvc.yaml, params.yaml, stages/, src/), with data.dir pointed at the real sample
(../shared/data/lungs-kaggle-layout-sample): preprocess once, then for each split seed the
split stage (split.seed = seed), then the train rows of data/split.csv repeated --tile times
(3: 576 training images, the size of the full 704-image set's training part, as
bench/recipe_ablation.py --tile does; validation and test stay the sample's own 24 + 24
images, so their Dice sees no copy of a training image), then per recipe the train and
evaluate stages with params.yaml set to the recipe. Recorded per run: the train stage's wall
time from start to exit and its CPU seconds (user + system: less inflated than wall time when
other work shares the cores), the seconds of each epoch (its log lines), the best validation
Dice and the test Dice (results/metrics.json, at native resolution). Recipes alternate within
each seed, so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from common import REAL_SAMPLE, print_table, scratch_project, set_params, stage_history, write_results
from recipe_ablation import tiled_train

from lungseg.core.io import write_csv

# today's documented CPU recipe (docs/accuracy.md) and the new one; every other key is params.yaml's
RECIPES = {
    "today": {"train.epochs": 20},
    "new": {"train.epochs": 20, "train.low_res_epochs": 10, "train.low_res_size": 64},
}


def parse_changes(text: str) -> dict:
    """'train.epochs=16,train.lr=0.002' -> {'train.epochs': 16, 'train.lr': 0.002} (values read as YAML)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        sys.exit(f"--try: expected KEY=VALUE[,KEY=VALUE...], got {text!r}")
    return {key: yaml.safe_load(value) for key, value in pairs}


def run_stage(workdir: Path, stage: str) -> tuple[str, float, float]:
    """Run stages/<stage>.py as dvc would; (stdout, wall seconds, CPU seconds of the process)."""
    env = {**os.environ, "PYTHONPATH": str(workdir / "src")}
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"stage {stage} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.stdout, wall, cpu


def run_recipe(workdir: Path, data_dir: Path, seed: int, tile: int, recipe: str, changes: dict) -> dict:
    """Split with `seed`, tile the train rows, train and evaluate with `changes`; one result row."""
    set_params(workdir, {"data.dir": str(data_dir), "split.seed": seed, **changes})
    run_stage(workdir, "split")
    split_csv = workdir / "data" / "split.csv"
    write_csv(tiled_train(pd.read_csv(split_csv, dtype={"id": str}), tile), split_csv)
    log, wall, cpu = run_stage(workdir, "train")
    history = stage_history(workdir, log)
    run_stage(workdir, "evaluate")
    test = json.loads((workdir / "results" / "metrics.json").read_text())["test"]
    report = json.loads((workdir / "results" / "training_report.json").read_text())
    return {"recipe": recipe, "seed": seed, "train_images": int((pd.read_csv(split_csv)["split"] == "train").sum()),
            "train_wall_s": wall, "train_cpu_s": cpu, "epochs": len(history),
            "epoch_s_min": float(history["seconds"].min()), "epoch_s_max": float(history["seconds"].max()),
            "epoch_s": [round(float(s), 2) for s in history["seconds"]],
            "best_epoch": report["best_epoch"], "val_dice": report["val_dice"], "test_dice": test["dice"],
            "test_dice_128px": test["dice_128px"], "test_worst": test["dice_min"], "postprocess": report["postprocess"]}


def summarise(rows: list[dict], baseline: str) -> list[dict]:
    """Per recipe: means over seeds, and the paired ratio and Dice difference against `baseline`."""
    table = pd.DataFrame(rows)
    base = table.loc[table["recipe"] == baseline, ["seed", "train_wall_s", "train_cpu_s", "test_dice"]]
    out = []
    for name, group in table.groupby("recipe", sort=False):
        paired = group.merge(base, on="seed", suffixes=("", "_base"))
        out.append({"recipe": name, "seeds": len(group), "train_wall_s": group["train_wall_s"].mean(),
                    "train_cpu_s": group["train_cpu_s"].mean(), "val_dice": group["val_dice"].mean(),
                    "test_dice": group["test_dice"].mean(),
                    "wall_ratio": (paired["train_wall_s"] / paired["train_wall_s_base"]).mean() if len(paired) else float("nan"),
                    "cpu_ratio": (paired["train_cpu_s"] / paired["train_cpu_s_base"]).mean() if len(paired) else float("nan"),
                    "test_dice_diff": (paired["test_dice"] - paired["test_dice_base"]).mean() if len(paired) else float("nan")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="split seeds")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help=f"which to run, of {list(RECIPES)} and --try names")
    parser.add_argument("--try", dest="tries", nargs=2, action="append", default=[], metavar=("NAME", "KEY=VALUE,..."),
                        help="an extra recipe to run too (exploration; choose on validation Dice, never on test)")
    parser.add_argument("--tile", type=int, default=3, help="repeat the training images this many times")
    parser.add_argument("--name", default="cpu_recipe")
    args = parser.parse_args()
    if not REAL_SAMPLE.is_dir():
        print(f"skipped: the real sample {REAL_SAMPLE} is missing (it sits in shared/data beside the project checkout)")
        return
    recipes = {**{name: RECIPES[name] for name in args.recipes if name in RECIPES},
               **{name: parse_changes(changes) for name, changes in args.tries}}
    baseline = "today" if "today" in recipes else next(iter(recipes))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        scratch_project(workdir)
        set_params(workdir, {"data.dir": str(REAL_SAMPLE)})
        run_stage(workdir, "preprocess")
        for seed in args.seeds:
            for name, changes in recipes.items():
                rows.append(run_recipe(workdir, REAL_SAMPLE, seed, args.tile, name, changes))
                row = rows[-1]
                print(f"seed {seed} {name}: train stage {row['train_wall_s']:.0f} s wall, {row['train_cpu_s']:.0f} s CPU, "
                      f"val Dice {row['val_dice']:.4f}, test Dice {row['test_dice']:.4f}", flush=True)
                # written after every run, so a run cut short still leaves what it finished
                write_results(args.name, rows, quiet=True, recipes=recipes, baseline=baseline, tile=args.tile,
                              summary=summarise(rows, baseline), complete=len(rows) == len(args.seeds) * len(recipes))
    print_table("runs", [{k: v for k, v in row.items() if k != "epoch_s"} for row in rows])
    print_table(f"per recipe (means over split seeds; ratios and Dice difference paired against '{baseline}')",
                summarise(rows, baseline))
    print(f"\nwrote bench/results/{args.name}.json")


if __name__ == "__main__":
    main()
