"""Distributed training: how the work is split, and real 2-process runs (gloo, CPU) of the train
stage compared with a one-process run of the same params."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import yaml

from lungseg.core import config
from lungseg.core.config import PreprocessConfig, TrainConfig
from lungseg.core.errors import ParamsError, TrainingError
from lungseg.core.io import write_csv
from lungseg.data.preprocess import preparation
from lungseg.data.processed import save_processed
from lungseg.data.synthetic import make_phantom
from lungseg.model.checkpoint import build_model, load_checkpoint
from lungseg.model.losses import BceDiceLoss
from lungseg.model.unet import UNet
from lungseg.training import distributed
from lungseg.training.loop import fit, validate, validation_sums
from lungseg.training.recipe import plan, tensors
from lungseg.training.tracking import read_history

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
PARTS = {"train": 32, "val": 8, "test": 8}
PARAMS = {
    "data": {"dir": "unused"},  # the train stage reads data/processed, never data.dir
    "model": {"depth": 2, "base_width": 4},
    # lr 0.01: the loss falls by about 0.12 in 3 epochs, enough for the curves to tell runs apart
    "train": {"epochs": 3, "batch_size": 4, "lr": 0.01, "device": "cpu", "precision": "fp32", "compile": "never"},
    "augment": {"enabled": False},
}


# --------------------------------------------------------------------------- splitting the work

def fit_with(model, train, val, config, threshold=0.5, worker=None, **options):
    """loop.fit with the train stage's recipe for `config` (lungseg.training.recipe.plan)."""
    return fit(model, train, val, plan(model, train, config, worker), threshold, worker=worker, **options)



@pytest.mark.parametrize("items", [list(range(11)), np.arange(11), torch.arange(11)], ids=["list", "array", "tensor"])
def test_shards_cover_every_item_once_and_differ_in_size_by_at_most_one(items):
    for world in (1, 2, 3, 4):
        shards = [distributed.shard(items, rank, world) for rank in range(world)]
        assert sorted(int(i) for s in shards for i in s) == list(range(11))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [int(i) for i in distributed.shard(items, 1, 3)] == [1, 4, 7, 10]  # strided: every source mixed in


@pytest.mark.parametrize("n_items", [1, 7, 32, 33])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_rank_takes_the_one_process_step_count_and_sees_its_whole_shard(n_items, world):
    batch_size = 4 * world
    steps = distributed.steps_per_epoch(n_items, batch_size)
    assert steps == len(range(0, n_items, batch_size))  # what one process takes
    local = distributed.local_batch_size(batch_size, world)
    for rank in range(min(world, n_items)):  # a rank needs at least one training image
        shard_size = len(distributed.shard(range(n_items), rank, world))
        order = distributed.wrap_around(torch.randperm(shard_size), steps * local)
        assert len(order) == steps * local  # full local batches, the same number on every rank
        assert set(order.tolist()) == set(range(shard_size))  # nothing of the shard left out


def test_wrap_around_repeats_the_order_from_its_start():
    assert distributed.wrap_around(torch.tensor([3, 1, 2]), 7).tolist() == [3, 1, 2, 3, 1, 2, 3]
    assert distributed.wrap_around(torch.tensor([3, 1, 2]), 2).tolist() == [3, 1]
    with pytest.raises(ValueError, match="no training images"):
        distributed.wrap_around(torch.tensor([], dtype=torch.long), 4)


def test_a_batch_size_not_divisible_by_the_processes_names_both():
    assert distributed.local_batch_size(8, 4) == 2
    with pytest.raises(ParamsError, match=r"train\.batch_size=6 must be divisible by the number of training processes \(4"):
        distributed.local_batch_size(6, 4)


def test_nproc_must_be_at_least_one():
    with pytest.raises(ParamsError, match=r"train\.nproc=0: must be >= 1"):
        config.load({"train": {"nproc": 0}}, "train")
    assert config.load({"train": {}}, "train").nproc == 1


def test_only_cuda_and_cpu_can_train_distributed():
    distributed.check_launch(2, 4, torch.device("cpu"))
    with pytest.raises(ParamsError, match="mps"):
        distributed.check_launch(2, 4, torch.device("mps"))


# --------------------------------------------------------------------------- one rank, in this process


def phantoms(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic chest X-ray phantoms at SIZE px: uint8 images and 0/1 masks."""
    rng = np.random.default_rng(seed)
    pairs = [make_phantom(rng, SIZE, SIZE, ("PhantomA", "PhantomB")[i % 2]) for i in range(n)]
    return np.stack([image for image, _ in pairs]), np.stack([(mask > 0).astype(np.uint8) for _, mask in pairs])


@pytest.fixture
def single_rank_group(tmp_path):
    """A gloo process group of one rank, in this process (a distributed run of world size 1)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield distributed.Worker(0, 1, 0, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_a_one_rank_distributed_fit_repeats_the_one_process_fit(single_rank_group):
    """The DDP path with one rank must be the plain loop: same order, steps, losses and scores
    (24 images in batches of 4, so no batch is padded)."""
    images, masks = phantoms(30)
    train, val = tensors(images[:24], masks[:24]), tensors(images[24:], masks[24:])
    settings = TrainConfig(epochs=2, batch_size=4, seed=3)
    results = []
    for worker in (None, single_rank_group):
        torch.manual_seed(0)
        results.append(fit_with(UNet(depth=2, base_width=4), train, val, settings, 0.5, show_progress=False, worker=worker))
    plain, ranked = (r.history[["train_loss", "val_loss", "val_dice", "val_iou"]].to_numpy() for r in results)
    np.testing.assert_allclose(ranked, plain, rtol=1e-5)
    assert results[0].best_epoch == results[1].best_epoch


def test_a_non_finite_loss_on_a_rank_stops_the_run_naming_the_epoch_and_step(single_rank_group):
    images, masks = phantoms(12)
    broken = tensors(images[:8], masks[:8])
    broken.images[:] = float("nan")
    torch.manual_seed(0)
    with pytest.raises(TrainingError, match=r"epoch 1, step 1 of 2"):
        fit_with(UNet(depth=2, base_width=4), broken, tensors(images[8:], masks[8:]), TrainConfig(epochs=2, batch_size=4), 0.5,
            show_progress=False, worker=single_rank_group)


def test_validation_over_shards_adds_up_to_validation_of_the_whole(single_rank_group):
    """Sums over shards, divided once, give the whole set's means (the loss is a mean over
    equal-size images), and a rank with no validation image adds nothing."""
    images, masks = phantoms(6, seed=1)
    torch.manual_seed(0)
    model, loss_fn = UNet(depth=2, base_width=4), BceDiceLoss()
    whole = validate(model, loss_fn, tensors(images, masks), 4, 0.5, None)
    sharded = validate(model, loss_fn, tensors(images, masks), 4, 0.5, None, single_rank_group)
    assert sharded == pytest.approx(whole, rel=1e-5)
    halves = [validation_sums(model, loss_fn, tensors(images[part], masks[part]), 4, 0.5, None) for part in (slice(0, 4), slice(4, 6))]
    total = (halves[0] + halves[1]).tolist()
    assert [total[0] / total[3], total[1] / total[3], total[2] / total[3]] == pytest.approx(
        [whole["val_loss"], whole["val_dice"], whole["val_iou"]], rel=1e-5)
    assert validation_sums(model, loss_fn, tensors(images[:0], masks[:0]), 4, 0.5, None).tolist() == [0, 0, 0, 0]


# --------------------------------------------------------------------------- real runs of the train stage


def make_project(root: Path, **train) -> Path:
    """A project folder holding just what the train stage reads: params.yaml, data/processed, data/split.csv."""
    root.mkdir(parents=True)
    images, masks = phantoms(sum(PARTS.values()))
    ids = [f"p{i:02d}" for i in range(len(images))]
    index = pd.DataFrame({"id": ids, "image_file": [f"{i}.png" for i in ids], "mask_file": [f"{i}.png" for i in ids],
                          "height": SIZE, "width": SIZE})
    save_processed(images, masks, index, preparation(PreprocessConfig(image_size=SIZE)), root / "data" / "processed")
    write_csv(pd.DataFrame({"id": ids, "split": [part for part, n in PARTS.items() for _ in range(n)]}), root / "data" / "split.csv")
    params = {section: dict(values) for section, values in PARAMS.items()}
    params["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def train_stage(project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "stages" / "train.py")], check=False, cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[Path, subprocess.CompletedProcess]]:
    """The same params trained by one process and by two (torchrun, gloo), each in its own project."""
    out = {}
    for nproc in (1, 2):
        project = make_project(tmp_path_factory.mktemp(f"nproc{nproc}") / "project", nproc=nproc)
        out[nproc] = (project, train_stage(project))
    return out


@pytest.mark.slow
def test_two_processes_run_through_and_rank_0_alone_writes_the_outputs(runs):
    project, done = runs[2]
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (project / "results").iterdir()) == ["best_unet.pth", "live", "training_report.json"]
    assert done.stdout.count("best epoch") == 1  # one writer: rank 0
    assert "in 2 processes" in done.stdout
    history = read_history(project / "results" / "live")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert done.stdout.count("epoch 3/3") == 1  # one line per epoch, from rank 0 only
    build_model(load_checkpoint(project / "results" / "best_unet.pth"))  # a whole, loadable checkpoint


@pytest.mark.slow
def test_two_process_loss_curve_matches_the_one_process_curve(runs):
    """Same params, same global batch of 4, same learning rate and steps: the train-loss curves
    agree. Not exactly: each rank draws its batches from its own half of the images (so other
    images meet in a batch), and on CPU BatchNorm normalises by each rank's 2 images, not all 4.
    Measured with train.seed 42, 0 and 1: gaps of at most 0.0081 per epoch, on losses falling
    from 0.59-0.70 to 0.47-0.57. The tolerance, 0.025, leaves 3x margin, while a one-process
    run with twice the learning rate ends 0.07-0.09 away (0.05-0.07 at epoch 2): an error in
    the steps per epoch or the learning rate fails it. (With Adam, a gradient scaled by a
    constant changes nothing, so summing instead of averaging gradients could not show here.)"""
    one, two = (read_history(runs[n][0] / "results" / "live") for n in (1, 2))
    gap = (one["train_loss"] - two["train_loss"]).abs()
    assert gap.max() < 0.025, f"per-epoch train-loss gap {gap.round(4).tolist()}"
    assert (two["lr"] == one["lr"]).all()  # the schedule does not depend on the number of processes
    assert two["train_loss"].iloc[-1] < two["train_loss"].iloc[0] - 0.08  # and it really trained


@pytest.mark.slow
def test_validation_scores_of_two_ranks_are_those_of_the_saved_model_on_the_whole_set(runs):
    """Each rank scored half of the validation set; summed over ranks, the best epoch's scores
    equal the saved checkpoint's scores on the whole set, so the reduction is exact and every
    rank validated the model rank 0 saved (BatchNorm statistics averaged first)."""
    project, _ = runs[2]
    history = read_history(project / "results" / "live").set_index("epoch")
    checkpoint = load_checkpoint(project / "results" / "best_unet.pth")
    val_images = np.load(project / "data" / "processed" / "images.npy")[PARTS["train"] : PARTS["train"] + PARTS["val"]]
    val_masks = np.load(project / "data" / "processed" / "masks.npy")[PARTS["train"] : PARTS["train"] + PARTS["val"]]
    scores = validate(build_model(checkpoint), BceDiceLoss(), tensors(val_images, val_masks), 4, 0.5, None)
    best = history.loc[checkpoint["info"]["epoch"]]
    assert scores["val_dice"] == pytest.approx(best["val_dice"], abs=1e-6)
    assert scores["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_a_batch_not_divisible_by_nproc_stops_before_any_process_starts(tmp_path):
    project = make_project(tmp_path / "project", nproc=2, batch_size=5)
    done = train_stage(project)
    assert done.returncode == 2
    assert "train.batch_size=5 must be divisible by the number of training processes (2" in done.stderr
    assert not (project / "results").exists()
