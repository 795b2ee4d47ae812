"""Shared helpers for the benchmark scripts: machine facts, tables, JSON, the real sample.

Benchmarks are scripts, not tests: each prints a table and writes bench/results/<name>.json.
Speed benchmarks measure lungseg against a baseline in the same run, on the same machine; the
choice benchmarks (robustness, *_choice) compare variants trained in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from lungseg.core.config import PreprocessConfig
from lungseg.data.preprocess import preprocess_folder
from lungseg.data.split import split_ids
from lungseg.training.tracking import read_history

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REAL_SAMPLE = ROOT.parent / "shared" / "data" / "lungs-kaggle-layout-sample"
DEV_SET = ROOT.parent / "shared" / "data" / "covid-cxr-sample"  # the external development set
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "src")  # what the stage scripts need to run


def scratch_project(folder: Path, changes: dict | None = None) -> Path:
    """A copy of the project's code and params in `folder`, with `changes` set (set_params)."""
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    set_params(folder, changes or {})
    return folder


def set_params(folder: Path, changes: dict) -> None:
    """Write folder/params.yaml: the project's own params with `changes` ('section.key' -> value)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".", 1)
        params[section][key] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_in(folder: Path, command: list[str], threads: int | None = None) -> str:
    """Run `command` in a scratch project as dvc runs a stage (PYTHONPATH: its src) with torch on
    `threads` cores (None: all); its stdout. A failure raises with the end of its output."""
    env = {**os.environ, "PYTHONPATH": str(folder / "src")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed in {folder}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def score_dev_set(folder: Path, out: str, threads: int | None = None) -> pd.DataFrame:
    """`lungseg evaluate` of a scratch project's model on the development set, into folder/out:
    its per_image.csv (ids as text; `dice` at 128 px, `dice_native` at each image's own size)."""
    run_in(folder, [sys.executable, "-m", "lungseg.cli", "evaluate", "--model", "results/best_unet.pth", "--data",
                    str(require_dev_set()), "--out", out, "--quiet"], threads)
    return pd.read_csv(folder / out / "per_image.csv", dtype={"id": str})


def require_dev_set() -> Path:
    if not DEV_SET.is_dir():
        sys.exit(f"the development set {DEV_SET} is missing: it sits in shared/data beside the project checkout")
    return DEV_SET


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count(),
            "cpu": _cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def print_table(title: str, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_format(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_results(name: str, rows: list[dict], quiet: bool = False, **extra) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "date": time.strftime("%Y-%m-%d"), "machine": machine(), **extra, "rows": rows}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    if not quiet:
        print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def require_real_sample() -> Path:
    if not REAL_SAMPLE.is_dir():
        sys.exit(f"the real sample {REAL_SAMPLE} is missing: it sits in shared/data beside the project checkout")
    return REAL_SAMPLE


def real_split(image_size: int = 128, seed: int = 42) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """uint8 (images, masks) of the real sample per part, split exactly as the pipeline's defaults do."""
    images, masks, index = preprocess_folder(require_real_sample(), PreprocessConfig(image_size=image_size))
    split = split_ids(index, (0.8, 0.1, 0.1), seed, "county")["split"].to_numpy()
    return {part: (images[split == part], masks[split == part]) for part in ("train", "val", "test")}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+ .*  ([\d.]+) s  \(best", re.MULTILINE)


def stage_history(project: Path, stdout: str) -> pd.DataFrame:
    """The train stage's per-epoch history (results/live) with each epoch's seconds, which only
    its log lines carry: they differ from run to run, so no file that git tracks holds them."""
    history = read_history(project / "results" / "live")
    seconds = {int(match[1]): float(match[2]) for match in EPOCH_LINE.finditer(stdout)}
    return history.assign(seconds=history["epoch"].map(seconds))


def add_run_arguments(parser, name: str, keep_help: str) -> None:
    """--seeds, --jobs, --keep-scores and --name: the options of the benchmarks that train one
    copy of the project per split seed (run_jobs runs them)."""
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--keep-scores", help=keep_help)
    parser.add_argument("--name", default=name)


def run_jobs(run, jobs: list[tuple], count: int) -> list:
    """run(*job, threads) for every job, `count` at a time, each with its share of the cores as
    torch threads; the results in job order."""
    threads = max(1, (os.cpu_count() or 1) // count)
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda job: run(*job, threads), jobs))
