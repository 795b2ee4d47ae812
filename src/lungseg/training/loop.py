"""The training loop, split into steps: one batch, one epoch, one validation, the whole fit.

The data sits on the device as tensors for the whole run (a 128 px set is a few MB), so no
image is decoded or copied inside the loop. Losses are summed on the device and read once per
epoch, so the loop never waits for the GPU between steps.

Given a `worker` (lungseg.training.distributed), the same loop trains one rank of a DistributedDataParallel
run: its data are that rank's shards, and the epoch's loss and the validation scores are
combined over the ranks. Without one (the default) nothing of that runs: no DDP wrapper, no
collectives, and the results are those of the one-process loop.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lungseg.core.config import TrainConfig
from lungseg.core.errors import TrainingError
from lungseg.core.runtime import autocast, forward_in_batches
from lungseg.model.losses import BceDiceLoss
from lungseg.model.metrics import dice_per_image, iou_per_image
from lungseg.training import distributed


@dataclass
class TensorPair:
    """Images (N x 1 x H x W, float in [0, 1]) and masks (same shape, 0/1) on one device."""

    images: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class FitResult:
    history: pd.DataFrame  # one row per epoch
    best_state: dict  # model weights of the epoch with the best validation Dice
    best_epoch: int
    best_dice: float


def train_step(model, loss_fn, optimizer, images, masks, dtype) -> torch.Tensor:
    """One optimisation step; returns the (detached, on-device) loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device, dtype):
        loss = loss_fn(model(images), masks)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_epoch(model, loss_fn, optimizer, scheduler, data: TensorPair, batch_size: int, generator: torch.Generator,
                dtype, progress=None, augment=None, steps: int | None = None,
                worker: distributed.Worker | None = None) -> tuple[float, int]:
    """One pass over `data` in a seeded random order, each batch through `augment` if given.

    `steps`, if given, is the number of full batches to take, wrapping around `data` when it runs
    out (every rank of a distributed run takes the same number). With `worker`, the loss and the
    bad step returned are those of all ranks together.

    Returns the mean training loss and the first step (1-based) whose loss was not finite, or 0.
    Both are tracked on the device and read once at the end, so no step waits for the GPU.
    """
    model.train()
    device = data.images.device
    order = torch.randperm(len(data), generator=generator)
    if steps is not None:
        order = distributed.wrap_around(order, steps * batch_size)
    order = order.to(device)
    total, first_bad = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
    for step, start in enumerate(range(0, len(order), batch_size), start=1):
        batch = order[start : start + batch_size]
        images, masks = data.images[batch], data.masks[batch]
        if augment is not None:
            images, masks = augment(images, masks)
        loss = train_step(model, loss_fn, optimizer, images, masks, dtype)
        total += loss * len(batch)
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
        scheduler.step()
        if progress is not None:
            progress.update(1)
    if worker is None:
        return float(total) / len(order), int(first_bad)  # the one host-device sync of the epoch
    return combine_epoch(total, len(order), first_bad)


def combine_epoch(total: torch.Tensor, seen: int, first_bad: torch.Tensor) -> tuple[float, int]:
    """Mean loss over the images every rank stepped on, and the earliest non-finite step of any
    rank (0 if none), so that all ranks agree on whether to stop."""
    sums = distributed.all_reduce_sum(torch.stack([total.double(), torch.tensor(seen, dtype=torch.double, device=total.device)]))
    never = torch.iinfo(torch.long).max
    earliest = int(distributed.all_reduce_min(torch.where(first_bad > 0, first_bad, never)))
    return float(sums[0] / sums[1]), 0 if earliest == never else earliest


def validate(model, loss_fn, data: TensorPair, batch_size: int, threshold: float, dtype,
             worker: distributed.Worker | None = None) -> dict:
    """Loss, mean Dice and mean IoU on `data` at the inference threshold; with `worker`, `data` is
    this rank's shard and the scores are those of all ranks' shards together (the sums of
    validation_sums, added up over the ranks, then divided once)."""
    sums = validation_sums(model, loss_fn, data, batch_size, threshold, dtype)
    if worker is not None:
        sums = distributed.all_reduce_sum(sums)
    loss, dice, iou, count = sums.tolist()  # the one host-device sync of the validation
    return {"val_loss": loss / count, "val_dice": dice / count, "val_iou": iou / count}


def validation_sums(model, loss_fn, data: TensorPair, batch_size: int, threshold: float, dtype) -> torch.Tensor:
    """[loss x images, sum of Dice, sum of IoU, images] on `data` (float64, on its device).
    Sums over shards add up to the whole set's: the loss is a mean over images of equal size
    (BCE per pixel, soft Dice per image), and Dice and IoU are per image."""
    sums = torch.zeros(4, dtype=torch.double, device=data.images.device)
    if len(data):  # a rank holds no validation image when there are fewer images than ranks
        logits = forward_in_batches(model, data.images, batch_size, dtype)
        predictions = torch.sigmoid(logits) > threshold
        sums[0] = loss_fn(logits, data.masks).double() * len(data)
        sums[1] = dice_per_image(predictions, data.masks).double().sum()
        sums[2] = iou_per_image(predictions, data.masks).double().sum()
        sums[3] = len(data)
    return sums


def downsampled(data: TensorPair, size: int) -> TensorPair:
    """`data` at size x size px: images area-averaged, masks area-averaged then cut at 0.5 (so
    they stay 0/1). With one channel, NCHW and channels_last are the same memory layout."""
    images = F.interpolate(data.images, size=(size, size), mode="area")
    masks = (F.interpolate(data.masks, size=(size, size), mode="area") > 0.5).to(data.masks.dtype)
    return TensorPair(images, masks)


def make_scheduler(optimizer, schedule: str, total_steps: int):
    """Per-step learning-rate schedule. 'cosine' decays from lr to 0 over the run: large steps
    early for speed, small ones late so the last epochs settle instead of bouncing around."""
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0))))


def predicted_masks(model, images: torch.Tensor, threshold: float, batch_size: int, dtype=None) -> np.ndarray:
    """Binary masks (N x H x W, bool, on the CPU) of `model` for device-resident N x 1 x H x W
    images: what the train stage chooses post-processing on, before any checkpoint exists."""
    logits = forward_in_batches(model, images, batch_size, dtype)
    return (torch.sigmoid(logits) > threshold)[:, 0].cpu().numpy()


def is_out_of_memory(problem: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; the CPU and MPS allocators raise RuntimeErrors."""
    text = str(problem).lower()
    return isinstance(problem, torch.OutOfMemoryError) or (
        isinstance(problem, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def out_of_memory_advice(device: torch.device, batch_size: int, base_width: int) -> str:
    return (f"ran out of {device.type} memory while training: lower train.batch_size (now {batch_size}) "
            f"or model.base_width (now {base_width}), or train on a device with more memory (train.device)")


def fit(model: torch.nn.Module, train: TensorPair, val: TensorPair, config: TrainConfig, threshold: float,
        dtype=None, compile_model: bool = False, show_progress: bool = True, augment=None,
        worker: distributed.Worker | None = None, on_epoch: Callable[[dict, int, float], None] | None = None) -> FitResult:
    """Train for config.epochs and keep the weights of the epoch with the best validation Dice.

    The first config.low_res_epochs epochs train on `train` shrunk to config.low_res_size px
    (progressive resizing: the U-Net is fully convolutional, and a 64 px step costs about half a
    128 px one on CPU); the later epochs, and every validation, use the images as given.

    `augment`, if given, maps each training batch (images, masks) to a changed copy
    (lungseg.training.augment.Augmenter); validation always sees the images as they are.

    With `compile_model`, steps run through torch.compile (the first epoch then includes the
    compile time, which the history's `seconds` column shows); weights are always read from
    `model` itself, so checkpoints look the same either way.

    With `worker`, this process is one rank of a distributed run (lungseg.training.distributed): `train`
    and `val` are its shards, config.batch_size is the global batch, and the model trains
    wrapped in DDP (its BatchNorms become SyncBatchNorm on CUDA, in place). Every rank returns
    the same history and best epoch.

    `on_epoch(row, best_epoch, best_dice)`, if given, is called as each epoch ends with its
    history row and the best epoch so far (lungseg.training.tracking.EpochLog writes them to disk).
    """
    if worker is not None:
        model = distributed.sync_batchnorm(model, worker)
    network = torch.compile(model) if compile_model else model
    evaluated = network  # validation runs without DDP: its forward passes need no other rank
    batch_size, steps = config.batch_size, -(-len(train) // config.batch_size)
    if worker is not None:
        network = distributed.wrap(network, worker)
        batch_size = distributed.local_batch_size(config.batch_size, worker.world)
        steps = distributed.steps_per_epoch(distributed.sum_over_ranks(len(train), worker.device), config.batch_size)
    # one order per rank, each from its own seed; rank 0 of a run (or the only process) uses train.seed itself
    generator = torch.Generator().manual_seed(config.seed + (worker.rank if worker else 0))
    loss_fn = BceDiceLoss(config.bce_weight, config.dice_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = make_scheduler(optimizer, config.lr_schedule, config.epochs * steps)
    low_res = downsampled(train, config.low_res_size) if config.low_res_epochs else train
    rows, best = [], (-1.0, 0, None)
    with tqdm(total=config.epochs * steps, desc="train", unit="step", mininterval=1.0, disable=not show_progress) as progress:
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            data = low_res if epoch <= config.low_res_epochs else train
            if epoch == config.low_res_epochs:
                low_res = None  # its last epoch: the copy need not outlive it
            train_loss, bad_step = train_epoch(network, loss_fn, optimizer, scheduler, data, batch_size, generator, dtype, progress,
                                               augment, steps if worker else None, worker)
            if bad_step:
                raise TrainingError(f"the training loss became {train_loss} (not finite) at epoch {epoch}, step {bad_step} of {steps}: "
                                    f"lower train.lr (now {config.lr}) or check the data for broken images")
            if worker is not None:
                distributed.average_buffers(model)  # so every rank validates, and rank 0 saves, the same model
            scores = validate(evaluated, loss_fn, val, config.batch_size, threshold, dtype, worker)
            rows.append({"epoch": epoch, "train_loss": train_loss, **scores,
                         "lr": lr, "seconds": time.perf_counter() - started})
            if scores["val_dice"] > best[0]:
                best = (scores["val_dice"], epoch, copy.deepcopy(model.state_dict()))
            progress.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", val_dice=f"{scores['val_dice']:.3f}")
            if on_epoch is not None:
                on_epoch(rows[-1], best[1], best[0])
    return FitResult(pd.DataFrame(rows), best[2], best[1], best[0])
