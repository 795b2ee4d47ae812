"""Distributed training check: the real train stage with one plain process, under torchrun with
one process (DDP over NCCL on CUDA, gloo on CPU), and with train.nproc=2 where there are two
GPUs (or on CPU). Time per epoch, loss and validation Dice of each, side by side.

    PYTHONPATH=src python bench/ddp_check.py [--images 640] [--size 128] [--width 16] [--epochs 4] [--batch 32]

Each run is `stages/train.py` in a scratch project holding synthetic phantoms (data/processed
and data/split.csv written directly: no dvc, no preprocess stage). Times come from the stage's
the train stage's epoch lines: the first epoch (which includes torch.compile on CUDA) apart, then the
median of the others. Needs only torch, numpy, pandas, pyyaml, tqdm, scipy and pillow.

With one GPU, NCCL cannot run two ranks on it, so the 2-rank code path of CUDA (SyncBatchNorm,
torch.compile and DDP together) runs instead as two ranks sharing the GPU over gloo: the train
stage's recipe (lungseg.training.recipe.train_model), called directly (`--shared-gpu`, started here under torchrun). Its times say nothing about
speed; it shows that the path runs and that both ranks end with the same history.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from common import ROOT, print_table, stage_history, write_results

from lungseg.core.config import AugmentConfig, InferConfig, ModelConfig, PreprocessConfig, TrainConfig
from lungseg.core.io import write_csv, write_json
from lungseg.data.preprocess import preparation
from lungseg.data.processed import ProcessedSet, save_processed
from lungseg.data.synthetic import make_phantom
from lungseg.training import distributed
from lungseg.training.recipe import train_model

STAGE = ROOT / "stages" / "train.py"


def phantoms(n_images: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The same `n_images` phantoms in every process: uint8 images, 0/1 masks."""
    rng = np.random.default_rng(0)
    pairs = [make_phantom(rng, size, size, ("PhantomA", "PhantomB")[i % 2]) for i in range(n_images)]
    return np.stack([p[0] for p in pairs]), np.stack([(p[1] > 0).astype(np.uint8) for p in pairs])


def phantom_set(images: np.ndarray, masks: np.ndarray) -> tuple[ProcessedSet, pd.DataFrame]:
    """The phantoms as the preprocess and split stages would leave them: 80% train, 20% validation."""
    ids = [f"p{i:04d}" for i in range(len(images))]
    size = images.shape[-1]
    index = pd.DataFrame({"id": ids, "image_file": ids, "mask_file": ids, "height": size, "width": size})
    n_train = int(0.8 * len(images))
    split = pd.DataFrame({"id": ids, "split": ["train"] * n_train + ["val"] * (len(images) - n_train)})
    return ProcessedSet(images, masks, index, {"image_size": size}), split


def make_project(root: Path, n_images: int, size: int, params: dict) -> Path:
    """Phantoms at `size` px, 80% train and 20% validation, and a params.yaml."""
    processed, split = phantom_set(*phantoms(n_images, size))
    save_processed(processed.images, processed.masks, processed.index, preparation(PreprocessConfig(image_size=size)), root / "data" / "processed")
    write_csv(split, root / "data" / "split.csv")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def set_nproc(project: Path, nproc: int) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["nproc"] = nproc
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(project: Path, label: str, command: list[str], processes: int, backend: str) -> dict:
    results = project / "results"
    shutil.rmtree(results, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    done = subprocess.run(command, check=False, cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        return {"run": label, "processes": processes, "backend": backend, "status": f"failed ({done.returncode})"}
    history = stage_history(project, done.stdout)
    later = history["seconds"].iloc[1:] if len(history) > 1 else history["seconds"]
    return {"run": label, "processes": processes, "backend": backend, "status": "ok",
            "first_epoch_s": float(history["seconds"].iloc[0]), "epoch_s": float(later.median()), "wall_s": wall,
            "train_loss_last": float(history["train_loss"].iloc[-1]), "best_val_dice": float(history["val_dice"].max()),
            "checkpoints": len(list(results.glob("*.pth")))}


def shared_gpu_rank(args) -> None:
    """One of two ranks on one GPU over gloo: SyncBatchNorm, compile and DDP as train.nproc=2 uses them,
    through the train stage's own recipe (lungseg.training.recipe.train_model)."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    worker = distributed.Worker(rank, world, 0, torch.device("cuda", 0))
    images, masks = phantoms(args.images, args.size)
    processed, split = phantom_set(images, masks)
    trained = train_model(processed, split, ModelConfig(depth=4, base_width=args.width),
                          TrainConfig(epochs=args.epochs, batch_size=args.batch, compile=args.compile),
                          AugmentConfig(enabled=False), InferConfig(threshold=0.5), worker.device, worker, verbose=False)
    sync_batchnorms = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in trained.model.modules())
    write_json({"history": trained.history.to_dict("list"), "sync_batchnorms": sync_batchnorms}, Path(args.shared_gpu) / f"rank{rank}.json")
    dist.destroy_process_group()


def shared_gpu_check(args, torchrun: list[str]) -> dict:
    label = "2 ranks sharing 1 GPU (gloo, fit)"
    with tempfile.TemporaryDirectory(prefix="ddp_shared_") as out:
        command = [*torchrun, "--nproc-per-node=2", str(Path(__file__).resolve()), "--shared-gpu", out,
                   *(f"--{k}={getattr(args, k)}" for k in ("images", "size", "width", "epochs", "batch", "compile"))]
        started = time.perf_counter()
        done = subprocess.run(command, check=False, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stdout[-4000:], done.stderr[-6000:], sep="\n", file=sys.stderr)
            return {"run": label, "processes": 2, "backend": "gloo", "status": f"failed ({done.returncode})"}
        ranks = [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in (0, 1)]
    history = pd.DataFrame(ranks[0]["history"])
    same = ranks[0]["history"]["val_dice"] == ranks[1]["history"]["val_dice"]
    return {"run": label, "processes": 2, "backend": "gloo", "status": "ok" if same else "ranks differ",
            "first_epoch_s": float(history["seconds"].iloc[0]), "epoch_s": float(history["seconds"].iloc[1:].median()),
            "wall_s": wall, "train_loss_last": float(history["train_loss"].iloc[-1]),
            "best_val_dice": float(history["val_dice"].max()), "sync_batchnorms": int(ranks[0]["sync_batchnorms"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="model.base_width")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="train.batch_size, the global batch (even, for 2 processes)")
    parser.add_argument("--compile", default="auto", choices=["auto", "always", "never"], help="as train.compile")
    parser.add_argument("--name", default="ddp_check", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--shared-gpu", metavar="FOLDER", help=argparse.SUPPRESS)  # internal: one rank of the shared-GPU check
    args = parser.parse_args()
    if args.shared_gpu:
        shared_gpu_rank(args)
        return
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    params = {"data": {"dir": "unused"}, "model": {"depth": 4, "base_width": args.width},
              "train": {"epochs": args.epochs, "batch_size": args.batch, "compile": args.compile, "nproc": 1}}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddp_check_") as scratch:
        project = make_project(Path(scratch), args.images, args.size, params)
        rows.append(run(project, "python stages/train.py", [sys.executable, str(STAGE)], 1, "none"))
        rows.append(run(project, "torchrun, 1 process (DDP)", [*torchrun, "--nproc-per-node=1", str(STAGE)], 1, backend))
        if not cuda or torch.cuda.device_count() >= 2:
            set_nproc(project, 2)
            rows.append(run(project, "train.nproc=2", [sys.executable, str(STAGE)], 2, backend))
        else:
            print("one GPU: train.nproc=2 needs two; running the 2-rank CUDA path on the one GPU over gloo instead")
            rows.append(shared_gpu_check(args, torchrun))
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    print_table(f"train stage, {args.images} phantoms at {args.size} px, base width {args.width}, global batch {args.batch}, "
                f"{args.epochs} epochs, on {device}", rows)
    settings = {k: v for k, v in vars(args).items() if k != "shared_gpu"}
    write_results(args.name, rows, settings=settings, gpus=torch.cuda.device_count())


if __name__ == "__main__":
    main()
