"""`lungseg predict` on an archive: resumed after kills, split into parts, and on a long listing.

    python bench/archive_predict.py [--images 2000] [--large 10000]

Writes small noise X-rays (96 x 80 px PNGs: the plumbing is what is measured) and runs the real
command line in subprocesses, with results/best_unet.pth when it exists (else a tiny untrained
U-Net):

  uninterrupted  one run over --images inputs (the reference)
  resumed        the same run killed with SIGKILL 3 times at random rows, then `--resume`d to the
                 end: its folder must equal the reference byte for byte (every file)
  parts          4 runs with --part K/4 and `lungseg merge`: the merged folder must equal the reference
  ray            the same run with --ray on a Ray started on this machine (actors with one torch thread
                 each, one per core): its folder must equal the reference; its throughput against the local run
  resume done    `--resume` on the finished folder of --large inputs: what resuming costs when
                 nothing is left (target: under 5 s)
  memory         the peak RSS of a run over --images inputs and over --large inputs: a listing
                 5x longer must not need 5x the memory
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, print_table, write_results
from PIL import Image

RUN = ("import resource, sys; from lungseg.cli import main; code = main(sys.argv[1:]); "
       "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


def write_images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (96, 80), dtype=np.uint8)).save(sub / f"{i:06d}.png")


def model_path(scratch: Path) -> Path:
    trained = ROOT / "results" / "best_unet.pth"
    if trained.is_file():
        return trained
    import torch

    from lungseg.model.checkpoint import make_checkpoint, save_checkpoint
    from lungseg.model.unet import UNet

    torch.manual_seed(0)
    args = {"depth": 2, "base_width": 4}
    path = scratch / "tiny.pth"
    save_checkpoint(make_checkpoint(UNet(**args), args, {"image_size": 32, "normalize": "minmax"}, 0.5), path)
    return path


def command(model: Path, images: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-c", RUN, "predict", str(model), str(images), "--out", str(out), "--recursive",
            "--device", "cpu", "--quiet", *options]


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one command, which must succeed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(done.stderr)
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak_rss_kb"))
    return time.perf_counter() - started, peak // 1024


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def killed_and_resumed(cmd: list[str], out: Path, n: int, kills: int, seed: int = 0) -> int:
    """Run `cmd` (with --resume), SIGKILL it at `kills` random row counts, then let it finish."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = 0
    for target in sorted(np.random.default_rng(seed).integers(1, n, kills)):
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None:
            table = out / "predictions.partial.csv"
            if table.is_file() and table.read_bytes().count(b"\n") > target:
                process.send_signal(signal.SIGKILL)
                done += 1
                break
            time.sleep(0.005)
        process.wait()
    run(cmd)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--large", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = model_path(scratch)
        small, large = scratch / "small", scratch / "large"
        write_images(small, args.images)
        write_images(large, args.large)
        rows = []
        seconds, rss_small = run(command(model, small, scratch / "whole"))
        reference = files(scratch / "whole")
        rows.append({"run": f"uninterrupted, {args.images} images", "seconds": seconds, "same_as_uninterrupted": ""})
        started = time.perf_counter()
        kills = killed_and_resumed(command(model, small, scratch / "resumed", "--resume"), scratch / "resumed", args.images, 3)
        rows.append({"run": f"killed {kills} times, resumed", "seconds": time.perf_counter() - started,
                     "same_as_uninterrupted": files(scratch / "resumed") == reference})
        started = time.perf_counter()
        for k in range(1, 5):
            run(command(model, small, scratch / f"part{k}", "--part", f"{k}/4"))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        subprocess.run([sys.executable, "-m", "lungseg.cli", "merge", *(str(scratch / f"part{k}") for k in range(1, 5)),
                        "--out", str(scratch / "merged")], env=env, check=True, capture_output=True)
        rows.append({"run": "4 parts, merged", "seconds": time.perf_counter() - started,
                     "same_as_uninterrupted": files(scratch / "merged") == reference})
        ray_seconds, _ = run(command(model, small, scratch / "ray", "--ray"))
        rows.append({"run": "--ray, a local Ray (start included)", "seconds": ray_seconds,
                     "same_as_uninterrupted": files(scratch / "ray") == reference})
        seconds, rss_large = run(command(model, large, scratch / "large-out"))
        rows.append({"run": f"uninterrupted, {args.large} images", "seconds": seconds, "same_as_uninterrupted": ""})
        resume_seconds, _ = run(command(model, large, scratch / "large-out", "--resume"))
        rows.append({"run": f"--resume of the finished {args.large}", "seconds": resume_seconds, "same_as_uninterrupted": ""})
    print_table("lungseg predict on an archive (2 cores)", rows)
    memory = {"peak_rss_mb_small": rss_small, "peak_rss_mb_large": rss_large, "ratio": rss_large / rss_small,
              "ray_throughput_vs_local": rows[0]["seconds"] / ray_seconds}
    print(json.dumps(memory))
    write_results("archive_predict", rows, model=str(model.name), **memory)


if __name__ == "__main__":
    main()
