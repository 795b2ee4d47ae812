"""The training loop, split into steps: one batch, one epoch, one validation, the whole fit.

The loop runs a recipe it is handed (a Plan: loss, optimizer, schedule, generator, low-res copy,
built by lungseg.training.recipe); it reads no params and chooses nothing of the recipe itself.

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
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lungseg.core.errors import TrainingError
from lungseg.core.runtime import autocast, forward_in_batches
from lungseg.model.metrics import dice_per_image, iou_per_image
from lungseg.training import distributed


@dataclass
class TensorPair:
    """Images and their masks on one device; len() is the number of images.

    Args:
        images: N x 1 x H x W, float in [0, 1].
        masks: the same shape, 0/1.
    """

    images: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Plan:
    """What one training run is made of, ready to use (lungseg.training.recipe.plan builds it).

    Args:
        loss_fn: maps (logits, masks) to a scalar loss.
        optimizer: steps the model's parameters.
        scheduler: its learning rate, stepped once a step.
        generator: draws the order of the training images, epoch after epoch.
        epochs: how many passes.
        steps: optimiser steps per epoch (the same on every rank).
        batch_size: the images of one step in this process (its share of the global batch over the ranks).
        val_batch_size: images per forward pass when validating.
        low_res: the training images at low resolution for the first `low_res_epochs` epochs, or None.
        low_res_epochs: how many of the first epochs train on `low_res` (0: none).
    """

    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    epochs: int
    steps: int
    batch_size: int
    val_batch_size: int
    low_res: TensorPair | None = None
    low_res_epochs: int = 0


@dataclass
class FitResult:
    """What fit gives back.

    Args:
        history: one row per epoch.
        best_state: model weights of the epoch with the best validation Dice.
        best_epoch: that epoch's number (1-based).
        best_dice: its validation Dice.
    """

    history: pd.DataFrame
    best_state: dict
    best_epoch: int
    best_dice: float


def train_step(model, loss_fn, optimizer, images, masks, dtype) -> torch.Tensor:
    """One optimisation step.

    Args:
        model: the network being trained.
        loss_fn: maps (logits, masks) to a scalar loss.
        optimizer: steps the model's parameters.
        images: one batch, N x 1 x H x W on the model's device.
        masks: its masks, the same shape.
        dtype: autocast dtype, or None for fp32.

    Returns:
        The loss, detached and on the device.
    """
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

    The loss and the first bad step are tracked on the device and read once at the end, so no step
    waits for the GPU.

    Args:
        model: the network being trained (or its DDP wrapper); put in training mode here.
        loss_fn: maps (logits, masks) to a scalar loss.
        optimizer: steps the model's parameters.
        scheduler: the learning-rate schedule, stepped once a step.
        data: this process's training images and masks, on the model's device.
        batch_size: images per step.
        generator: draws the order of the images.
        dtype: autocast dtype, or None for fp32.
        progress: a progress bar advanced once a step, or None.
        augment: maps each batch (images, masks) to a changed copy, or None.
        steps: the number of full batches to take, wrapping around `data` when it runs out (every rank
            of a distributed run takes the same number); None: one pass over `data`.
        worker: this process's rank of a DDP run, or None. With it, the loss and the bad step returned
            are those of all ranks together (combine_epoch).

    Returns:
        The mean training loss and the first step (1-based) whose loss was not finite, or 0.
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
    """Combine one epoch's loss and bad step over the ranks, so that all ranks agree on whether to stop.

    Args:
        total: this rank's loss summed over the images it stepped on, on the device.
        seen: how many images this rank stepped on.
        first_bad: this rank's first step (1-based) whose loss was not finite, or 0.

    Returns:
        The mean loss over the images every rank stepped on, and the earliest non-finite step of any
        rank (0 if none).
    """
    sums = distributed.all_reduce_sum(torch.stack([total.double(), torch.tensor(seen, dtype=torch.double, device=total.device)]))
    never = torch.iinfo(torch.long).max
    earliest = int(distributed.all_reduce_min(torch.where(first_bad > 0, first_bad, never)))
    return float(sums[0] / sums[1]), 0 if earliest == never else earliest


def validate(model, loss_fn, data: TensorPair, batch_size: int, threshold: float, dtype,
             worker: distributed.Worker | None = None) -> dict:
    """Loss, mean Dice and mean IoU on `data` at the inference threshold.

    With `worker`, the scores are those of all ranks' shards together (the sums of validation_sums,
    added up over the ranks, then divided once).

    Args:
        model: the network to score.
        loss_fn: maps (logits, masks) to a scalar loss.
        data: the validation images and masks on the model's device; with `worker`, this rank's shard.
        batch_size: images per forward pass.
        threshold: probability above which a pixel is lung.
        dtype: autocast dtype, or None for fp32.
        worker: this process's rank of a DDP run, or None.

    Returns:
        {"val_loss", "val_dice", "val_iou"}: each a mean over the images.
    """
    sums = validation_sums(model, loss_fn, data, batch_size, threshold, dtype)
    if worker is not None:
        sums = distributed.all_reduce_sum(sums)
    loss, dice, iou, count = sums.tolist()  # the one host-device sync of the validation
    return {"val_loss": loss / count, "val_dice": dice / count, "val_iou": iou / count}


def validation_sums(model, loss_fn, data: TensorPair, batch_size: int, threshold: float, dtype) -> torch.Tensor:
    """The validation sums of `data`: [loss x images, sum of Dice, sum of IoU, images].

    Sums over shards add up to the whole set's: the loss is a mean over images of equal size
    (BCE per pixel, soft Dice per image), and Dice and IoU are per image.

    Args:
        model: the network to score.
        loss_fn: maps (logits, masks) to a scalar loss.
        data: images and masks on the model's device; may be empty (a rank holds no validation
            image when there are fewer images than ranks).
        batch_size: images per forward pass.
        threshold: probability above which a pixel is lung.
        dtype: autocast dtype, or None for fp32.

    Returns:
        The four sums, float64 on `data`'s device (all 0 when `data` is empty).
    """
    sums = torch.zeros(4, dtype=torch.double, device=data.images.device)
    if len(data):  # a rank holds no validation image when there are fewer images than ranks
        logits = forward_in_batches(model, data.images, batch_size, dtype)
        predictions = torch.sigmoid(logits) > threshold
        sums[0] = loss_fn(logits, data.masks).double() * len(data)
        sums[1] = dice_per_image(predictions, data.masks).double().sum()
        sums[2] = iou_per_image(predictions, data.masks).double().sum()
        sums[3] = len(data)
    return sums


def predicted_masks(model, images: torch.Tensor, threshold: float, batch_size: int, dtype=None) -> np.ndarray:
    """Binary masks of `model` for device-resident images.

    What the train stage chooses post-processing on, before any checkpoint exists.

    Args:
        model: the network, on the images' device.
        images: N x 1 x H x W, on the model's device.
        threshold: probability above which a pixel is lung.
        batch_size: images per forward pass.
        dtype: autocast dtype, or None for fp32.

    Returns:
        N x H x W bool masks, on the CPU.
    """
    logits = forward_in_batches(model, images, batch_size, dtype)
    return (torch.sigmoid(logits) > threshold)[:, 0].cpu().numpy()


def is_out_of_memory(problem: BaseException) -> bool:
    """Whether `problem` says the device ran out of memory.

    CUDA raises torch.OutOfMemoryError; the CPU and MPS allocators raise RuntimeErrors.

    Args:
        problem: the exception caught.

    Returns:
        True for an out-of-memory error of any of these devices.
    """
    text = str(problem).lower()
    return isinstance(problem, torch.OutOfMemoryError) or (
        isinstance(problem, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def fit(model: torch.nn.Module, train: TensorPair, val: TensorPair, plan: Plan, threshold: float,
        dtype=None, compile_model: bool = False, show_progress: bool = True, augment=None,
        worker: distributed.Worker | None = None, on_epoch: Callable[[dict, int, float], None] | None = None) -> FitResult:
    """Train for plan.epochs and keep the weights of the epoch with the best validation Dice.

    Args:
        model: the U-Net, on its device (its weights end as the last epoch's; FitResult holds the best).
        train, val: this process's training and validation images and masks, on the model's device.
        plan: the loss, optimizer, schedule, generator and sizes (lungseg.training.recipe.plan).
            The first plan.low_res_epochs epochs train on plan.low_res; the later ones, and every
            validation, on the images as given.
        threshold: probability above which a pixel is lung, for the validation Dice.
        dtype: autocast dtype, or None for fp32.
        compile_model: run the steps through torch.compile (the first epoch's `seconds` then
            include the compile time); weights are always read from `model` itself.
        show_progress: draw a progress bar.
        augment: maps each training batch (images, masks) to a changed copy, or None;
            validation always sees the images as they are.
        worker: this process's rank of a DDP run (lungseg.training.distributed), or None. The
            model then trains wrapped in DDP, and every rank returns the same history and best epoch.
        on_epoch: called as each epoch ends with its history row and the best epoch and Dice so far.

    Returns:
        The history (a row per epoch), the best epoch's weights, its number and validation Dice.

    Raises:
        TrainingError: when the loss stops being finite.
    """
    network = torch.compile(model) if compile_model else model
    evaluated = network  # validation runs without DDP: its forward passes need no other rank
    if worker is not None:
        network = distributed.wrap(network, worker)
    low_res, rows, best = plan.low_res, [], (-1.0, 0, None)
    with tqdm(total=plan.epochs * plan.steps, desc="train", unit="step", mininterval=1.0, disable=not show_progress) as progress:
        for epoch in range(1, plan.epochs + 1):
            started = time.perf_counter()
            lr = plan.optimizer.param_groups[0]["lr"]
            data = low_res if epoch <= plan.low_res_epochs else train
            if epoch == plan.low_res_epochs:
                low_res = None  # its last epoch: the copy need not outlive it
            train_loss, bad_step = train_epoch(network, plan.loss_fn, plan.optimizer, plan.scheduler, data, plan.batch_size,
                                               plan.generator, dtype, progress, augment, plan.steps if worker else None, worker)
            if bad_step:
                raise TrainingError(f"the training loss became {train_loss} (not finite) at epoch {epoch}, step {bad_step} of "
                                    f"{plan.steps}: lower train.lr (now {plan.optimizer.defaults['lr']}) or check the data for "
                                    "broken images")
            if worker is not None:
                distributed.average_buffers(model)  # so every rank validates, and rank 0 saves, the same model
            scores = validate(evaluated, plan.loss_fn, val, plan.val_batch_size, threshold, dtype, worker)
            rows.append({"epoch": epoch, "train_loss": train_loss, **scores,
                         "lr": lr, "seconds": time.perf_counter() - started})
            if scores["val_dice"] > best[0]:
                best = (scores["val_dice"], epoch, copy.deepcopy(model.state_dict()))
            progress.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", val_dice=f"{scores['val_dice']:.3f}")
            if on_epoch is not None:
                on_epoch(rows[-1], best[1], best[0])
    return FitResult(pd.DataFrame(rows), best[2], best[1], best[0])
