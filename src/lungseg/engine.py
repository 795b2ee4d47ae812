"""The training loop, split into steps: one batch, one epoch, one validation, the whole fit.

The data sits on the device as tensors for the whole run (a 128 px set is a few MB), so no
image is decoded or copied inside the loop. Losses are summed on the device and read once per
epoch, so the loop never waits for the GPU between steps.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from lungseg.config import TrainConfig
from lungseg.errors import TrainingError
from lungseg.losses import BceDiceLoss
from lungseg.metrics import dice_per_image, iou_per_image
from lungseg.runtime import autocast, forward_in_batches


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
                dtype, progress=None) -> tuple[float, int]:
    """One pass over `data` in a seeded random order.

    Returns the mean training loss and the first step (1-based) whose loss was not finite, or 0.
    Both are tracked on the device and read once at the end, so no step waits for the GPU.
    """
    model.train()
    device = data.images.device
    order = torch.randperm(len(data), generator=generator).to(device)
    total, first_bad = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
    for step, start in enumerate(range(0, len(data), batch_size), start=1):
        batch = order[start : start + batch_size]
        loss = train_step(model, loss_fn, optimizer, data.images[batch], data.masks[batch], dtype)
        total += loss * len(batch)
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
        scheduler.step()
        if progress is not None:
            progress.update(1)
    return float(total) / len(data), int(first_bad)  # the one host-device sync of the epoch


def validate(model, loss_fn, data: TensorPair, batch_size: int, threshold: float, dtype) -> dict:
    """Loss, mean Dice and mean IoU on `data` at the inference threshold."""
    logits = forward_in_batches(model, data.images, batch_size, dtype)
    predictions = torch.sigmoid(logits) > threshold
    return {
        "val_loss": float(loss_fn(logits, data.masks)),
        "val_dice": float(dice_per_image(predictions, data.masks).mean()),
        "val_iou": float(iou_per_image(predictions, data.masks).mean()),
    }


def make_scheduler(optimizer, schedule: str, total_steps: int):
    """Per-step learning-rate schedule. 'cosine' decays from lr to 0 over the run: large steps
    early for speed, small ones late so the last epochs settle instead of bouncing around."""
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0))))


def is_out_of_memory(problem: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; the CPU and MPS allocators raise RuntimeErrors."""
    text = str(problem).lower()
    return isinstance(problem, torch.OutOfMemoryError) or (
        isinstance(problem, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def out_of_memory_advice(device: torch.device, batch_size: int, base_width: int) -> str:
    return (f"ran out of {device.type} memory while training: lower train.batch_size (now {batch_size}) "
            f"or model.base_width (now {base_width}), or train on a device with more memory (train.device)")


def fit(model: torch.nn.Module, train: TensorPair, val: TensorPair, config: TrainConfig, threshold: float,
        dtype=None, compile_model: bool = False, show_progress: bool = True) -> FitResult:
    """Train for config.epochs and keep the weights of the epoch with the best validation Dice.

    With `compile_model`, steps run through torch.compile (the first epoch then includes the
    compile time, which the history's `seconds` column shows); weights are always read from
    `model` itself, so checkpoints look the same either way.
    """
    network = torch.compile(model) if compile_model else model
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = BceDiceLoss(config.bce_weight, config.dice_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = -(-len(train) // config.batch_size)
    scheduler = make_scheduler(optimizer, config.lr_schedule, config.epochs * steps)
    rows, best = [], (-1.0, 0, None)
    with tqdm(total=config.epochs * steps, desc="train", unit="step", mininterval=1.0, disable=not show_progress) as progress:
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_loss, bad_step = train_epoch(network, loss_fn, optimizer, scheduler, train, config.batch_size, generator, dtype, progress)
            if bad_step:
                raise TrainingError(f"the training loss became {train_loss} (not finite) at epoch {epoch}, step {bad_step} of {steps}: "
                                    f"lower train.lr (now {config.lr}) or check the data for broken images")
            scores = validate(network, loss_fn, val, config.batch_size, threshold, dtype)
            rows.append({"epoch": epoch, "train_loss": train_loss, **scores,
                         "lr": lr, "seconds": time.perf_counter() - started})
            if scores["val_dice"] > best[0]:
                best = (scores["val_dice"], epoch, copy.deepcopy(model.state_dict()))
            progress.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", val_dice=f"{scores['val_dice']:.3f}")
    return FitResult(pd.DataFrame(rows), best[2], best[1], best[0])
