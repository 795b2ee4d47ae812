"""The training recipe, in one place: preprocessed arrays and configs in, a trained U-Net out,
with its post-processing chosen and its Dice estimate (lungseg.postprocessing.quality) fitted on validation.

Read top to bottom: `plan` builds what a run is made of (loss, optimizer, learning-rate schedule,
the low-resolution copy, the generator that orders the images), `train_model` puts the data on
the device, hands the plan to the loop (lungseg.training.loop, which reads no params), then
chooses the post-processing and calibrates the estimate on validation.

The train stage, the benchmarks and the tests all call `train_model`, so they train exactly
the same way: the same runtime choices (device, precision, memory layout, compile), the same
seeding, the same augmentation, the same sharding under DDP, and the same post-processing
choice on validation. Writing files is left to the caller (stages/train.py).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lungseg.core.config import AugmentConfig, InferConfig, ModelConfig, QualityConfig, TrainConfig, low_res_problems
from lungseg.core.errors import DataError, ParamsError, TrainingError
from lungseg.core.runtime import (
    autocast_dtype,
    configure,
    forward_in_batches,
    images_to_tensor,
    masks_to_tensor,
    memory_format,
    prepare_model,
    should_compile,
)
from lungseg.data.processed import ProcessedSet, ids_in
from lungseg.model.checkpoint import build_model
from lungseg.model.losses import BceDiceLoss
from lungseg.model.metrics import dice_per_image
from lungseg.model.unet import UNet
from lungseg.postprocessing import postprocess
from lungseg.postprocessing.quality import DiceEstimator, ShapeModel, measures
from lungseg.training import distributed
from lungseg.training.augment import Augmenter
from lungseg.training.loop import Plan, TensorPair, fit, is_out_of_memory, predicted_masks


@dataclass
class Trained:
    """What training gives back; the stage writes it to the checkpoint and the training report.

    Args:
        model: holding the weights of the best epoch.
        model_args: UNet(**model_args) rebuilds the architecture (the checkpoint stores them).
        history: one row per epoch (lungseg.training.loop.fit).
        best_epoch: the epoch with the best validation Dice.
        best_dice: validation Dice of best_epoch, before post-processing.
        postprocess: the option chosen on validation (lungseg.postprocessing.postprocess); None on ranks other than 0.
        postprocess_scores: mean validation Dice of every option; empty on ranks other than 0.
        dice_estimator: fitted on validation (calibrate); None on other ranks, or with nothing to fit on.
    """

    model: torch.nn.Module
    model_args: dict
    history: pd.DataFrame
    best_epoch: int
    best_dice: float
    postprocess: str | None
    postprocess_scores: dict[str, float]
    dice_estimator: DiceEstimator | None = None


class Runtime(NamedTuple):
    """How tensors run on one device, as the train stage runs them.

    Args:
        device: where the model and the data live.
        dtype: autocast dtype, None for fp32.
        layout: the memory format of the model and the images.
        compile: whether fit runs the model through torch.compile.
    """

    device: torch.device
    dtype: torch.dtype | None
    layout: torch.memory_format
    compile: bool


def runtime_for(device: torch.device, train_config: TrainConfig) -> Runtime:
    """The runtime choices for training on `device`, with the process-wide speed switches (cuDNN benchmark, TF32) set.

    Args:
        device: where to train.
        train_config: the params section train (precision, compile).

    Returns:
        The device, autocast dtype, memory layout and compile choice.
    """
    configure(device)
    dtype = autocast_dtype(device, train_config.precision)
    return Runtime(device, dtype, memory_format(device, dtype), should_compile(device, train_config.compile))


CPU = torch.device("cpu")


def tensors(images: np.ndarray, masks: np.ndarray, device: torch.device = CPU,
            layout: torch.memory_format = torch.contiguous_format) -> TensorPair:
    """Preprocessed arrays as tensors for training.

    Args:
        images: uint8 N x H x W, 0..255.
        masks: 0/1, the same shape.
        device: where the tensors go (default: the CPU).
        layout: their memory format.

    Returns:
        A TensorPair of N x 1 x H x W floats on `device`.
    """
    return TensorPair(images_to_tensor(images, device, layout), masks_to_tensor(masks, device, layout))


def new_model(model_config: ModelConfig, seed: int, runtime: Runtime) -> tuple[torch.nn.Module, dict]:
    """A freshly initialised U-Net on the runtime's device and layout.

    The initial weights depend only on `seed`, so every rank of a DDP run starts the same.

    Args:
        model_config: the params section model (depth, base_width).
        seed: seeds torch's global generator before the weights are drawn.
        runtime: the device and memory layout.

    Returns:
        The model and its constructor arguments (UNet(**model_args) rebuilds it).
    """
    torch.manual_seed(seed)
    model_args = {"in_channels": 1, "out_channels": 1, "depth": model_config.depth, "base_width": model_config.base_width}
    return prepare_model(UNet(**model_args), runtime.device, runtime.layout), model_args


def plan(model: torch.nn.Module, train: TensorPair, config: TrainConfig, worker: distributed.Worker | None = None) -> Plan:
    """The recipe of one run, ready for the loop: the loss, Adam, the learning-rate schedule, the
    generator that orders the training images, the batch and step counts, the low-res copy.

    Args:
        model: the U-Net to train, on its device; under DDP its BatchNorms become SyncBatchNorm
            here (on CUDA, in place), before the optimizer takes its parameters.
        train: this process's training images and masks.
        config: the params section train.
        worker: this process's rank of a DDP run, or None. config.batch_size is then the global
            batch, split over the ranks, and every rank takes the same number of steps.

    Returns:
        The Plan lungseg.training.loop.fit runs.

    Raises:
        ParamsError: when config.batch_size cannot be split over the ranks.
    """
    batch_size = distributed.local_batch_size(config.batch_size, worker.world) if worker else config.batch_size
    if worker:
        distributed.sync_batchnorm(model, worker)  # in place (the U-Net is no BatchNorm itself): fit trains this module
        steps = distributed.steps_per_epoch(distributed.sum_over_ranks(len(train), worker.device), config.batch_size)
    else:
        steps = -(-len(train) // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    return Plan(loss_fn=BceDiceLoss(config.bce_weight, config.dice_weight), optimizer=optimizer,
                scheduler=make_scheduler(optimizer, config.lr_schedule, config.epochs * steps),
                generator=torch.Generator().manual_seed(rank_seed(config, worker)),
                epochs=config.epochs, steps=steps, batch_size=batch_size, val_batch_size=config.batch_size,
                low_res=downsampled(train, config.low_res_size) if config.low_res_epochs else None,
                low_res_epochs=config.low_res_epochs)


def rank_seed(config: TrainConfig, worker: distributed.Worker | None) -> int:
    """The seed of this process's random draws (image order, augmentations).

    Args:
        config: the params section train.
        worker: this process's rank of a DDP run, or None.

    Returns:
        train.seed on rank 0 or the only process, train.seed + rank on the others, so that each rank
        draws its own.
    """
    return config.seed + (worker.rank if worker else 0)


def downsampled(data: TensorPair, size: int) -> TensorPair:
    """`data` at size x size px, for the low-resolution epochs.

    Images are area-averaged, masks area-averaged then cut at 0.5 (so they stay 0/1). With one
    channel, NCHW and channels_last are the same memory layout.

    Args:
        data: images and masks, N x 1 x H x W.
        size: the side of the copy in pixels (train.low_res_size).

    Returns:
        The copy, on `data`'s device.
    """
    images = F.interpolate(data.images, size=(size, size), mode="area")
    masks = (F.interpolate(data.masks, size=(size, size), mode="area") > 0.5).to(data.masks.dtype)
    return TensorPair(images, masks)


def make_scheduler(optimizer, schedule: str, total_steps: int):
    """Per-step learning-rate schedule.

    'cosine' decays from lr to 0 over the run: large steps early for speed, small ones late so the
    last epochs settle instead of bouncing around.

    Args:
        optimizer: the optimizer whose learning rate it scales.
        schedule: train.lr_schedule: 'constant' or 'cosine'.
        total_steps: optimiser steps of the whole run (epochs x steps per epoch).

    Returns:
        The scheduler, to step once per optimiser step.
    """
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0))))


def out_of_memory_advice(device: torch.device, batch_size: int, base_width: int) -> str:
    """The message of the TrainingError raised when training runs out of device memory.

    Args:
        device: the device that ran out.
        batch_size: train.batch_size.
        base_width: model.base_width.

    Returns:
        One line naming the settings to lower.
    """
    return (f"ran out of {device.type} memory while training: lower train.batch_size (now {batch_size}) "
            f"or model.base_width (now {base_width}), or train on a device with more memory (train.device)")


def choose_postprocessing(model, val_set: TensorPair, threshold: float, batch_size: int, dtype) -> tuple[str, dict]:
    """The post-processing option with the best validation Dice for `model`, and every option's score.

    Validation only: the test set never steers a choice.

    Args:
        model: the trained network, on the device of `val_set`.
        val_set: the validation images and masks.
        threshold: probability above which a pixel is lung (infer.threshold).
        batch_size: images per forward pass.
        dtype: autocast dtype, or None for fp32.

    Returns:
        The chosen option (lungseg.postprocessing.postprocess) and {option: mean validation Dice}.
    """
    masks = predicted_masks(model, val_set.images, threshold, batch_size, dtype)
    return postprocess.choose(masks, val_set.masks[:, 0].cpu().numpy())


# Chosen on validation and the external development set over 3 split seeds (BENCHMARKS.md,
# "Dice estimate"): strong enough to spread the Dice from ~0.98 down to failures, mild enough
# that most degraded images look like X-rays from elsewhere rather than noise.
DEGRADE = AugmentConfig(probability=1.0, rotate_degrees=10, scale=0.15, shift=0.08, brightness=0.15, contrast=0.5,
                        gamma=0.5, noise=0.03, blur=1.5, sharpen=1.0, border_probability=0.4, border_width=0.15,
                        text_probability=0.4, text_count=3, text_size=0.12, opacity_probability=0.7, opacity_size=0.35)


def degraded_views(images: torch.Tensor, masks: torch.Tensor, draws: int, seed: int):
    """The clean pair, then `draws` degraded copies of it (DEGRADE).

    Args:
        images: N x 1 x S x S in [0, 1].
        masks: the same shape, {0, 1}, on the same device.
        draws: how many degraded copies.
        seed: seeds the degradations.

    Yields:
        (images, masks) tensors of N x 1 x S x S in [0, 1] / {0, 1} on their device, the clean pair first.
    """
    yield images, masks
    augmenter = Augmenter(DEGRADE, seed, images.device)
    for _ in range(draws):
        yield augmenter(images, masks)


def calibrate(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, train_masks: np.ndarray, threshold: float,
              postprocess_option: str, batch_size: int, dtype=None, draws: int = 8, seed: int = 0) -> DiceEstimator | None:
    """A DiceEstimator for `model` (lungseg.postprocessing.quality), fitted on masks of known Dice.

    Fitted as CheXmask calibrated its quality estimate: on masks of known Dice over a wide range of
    quality. Validation masks are mostly good, so the validation images are also seen `draws` more
    times, each degraded the way other hospitals' X-rays differ (DEGRADE); the truth follows the
    geometry, and opacities leave it as it is (an opaque lung is still lung). The test set is never
    seen here.

    Args:
        model: the trained network.
        images: the validation images (N x 1 x S x S tensor on the model's device).
        masks: their masks, the same shape and device.
        train_masks: the training masks (uint8 N x S x S), for the shape model.
        threshold: how the model's probabilities become masks (as the checkpoint says).
        postprocess_option: the post-processing applied to those masks (as the checkpoint says).
        batch_size: images per forward pass.
        dtype: autocast dtype of the forward passes, or None for fp32.
        draws: degraded copies of each image (quality.calibration_draws).
        seed: seed of the degraded copies (train.seed).

    Returns:
        The fitted estimator, or None without validation or training masks (nothing to fit on).
    """
    if len(images) == 0 or len(train_masks) == 0:
        return None
    shapes = ShapeModel.fit(train_masks)
    values, dice = [], []
    with torch.no_grad():
        for seen, truth in degraded_views(images, masks, draws, seed):
            probabilities = torch.sigmoid(forward_in_batches(model, seen, batch_size, dtype))[:, 0].cpu().numpy()
            predicted = postprocess.apply(probabilities > threshold, postprocess_option)
            truth = truth[:, 0].cpu().numpy().astype(np.uint8)
            dice.append(dice_per_image(predicted, truth))
            values += [measures(p, m, threshold, shapes) for p, m in zip(probabilities, predicted)]
    calibration = {"images": int(len(images)), "draws": int(draws), "seed": int(seed)}
    return DiceEstimator.fit(np.stack(values), np.concatenate(dice), shapes, calibration)


def recalibrate(checkpoint: dict, images: np.ndarray, masks: np.ndarray, draws: int = 8, seed: int = 0,
                source: str = "") -> dict:
    """A copy of `checkpoint` whose Dice estimate is fitted on other labelled images (on the CPU).

    For a model saved before estimates existed, or to make the estimate speak of masks drawn as at
    your site.

    Args:
        checkpoint: as lungseg.model.checkpoint.load_checkpoint returns it (not changed).
        images: uint8 N x S x S, prepared with the checkpoint's own preprocessing.
        masks: their masks, uint8 N x S x S; they also make the shape model.
        draws: degraded copies of each image (calibrate).
        seed: seed of the degraded copies.
        source: a name for the images, recorded with the calibration.

    Returns:
        The checkpoint with its "dice_estimator" replaced by the new one.

    Raises:
        CheckpointError: the checkpoint describes a model lungseg cannot build.
        DataError: there are no images.
    """
    if len(images) == 0:
        raise DataError(f"no labelled images to calibrate on{f' in {source}' if source else ''}")
    model = build_model(checkpoint).eval()
    cpu = torch.device("cpu")
    estimator = calibrate(model, images_to_tensor(images, cpu), masks_to_tensor(masks, cpu), masks,
                          float(checkpoint["threshold"]), checkpoint.get("postprocess", "none"), 32, None, draws, seed)
    estimator.calibration["data"] = source
    return {**checkpoint, "dice_estimator": estimator.to_dict()}


def train_model(processed: ProcessedSet, split: pd.DataFrame, model_config: ModelConfig, train_config: TrainConfig,
                augment_config: AugmentConfig, infer_config: InferConfig,
                device: torch.device, worker: distributed.Worker | None = None,
                on_epoch: Callable[[dict, int, float], None] | None = None, verbose: bool = True,
                quality_config: QualityConfig | None = None) -> Trained:
    """Train a U-Net on the 'train' rows of `split`, keep the epoch with the best validation Dice,
    choose its post-processing on the 'val' rows, and fit its Dice estimate there.

    Args:
        processed: the preprocessed arrays and their index (lungseg.data.preprocess).
        split: table id -> split ('train', 'val', 'test'); ids may repeat (each row is one image).
        model_config, train_config, augment_config, infer_config: the params sections model,
            train, augment and infer (infer_config.threshold turns probabilities into masks).
        device: where to train; with a `worker`, the worker's device.
        worker: this process's place in a DDP run (lungseg.training.distributed), or None for one process.
            Each rank trains on its shards; rank 0 alone chooses the post-processing, on the
            whole validation set.
        on_epoch: called as each epoch ends with (history row, best epoch, best Dice) (e.g.
            lungseg.training.tracking.EpochLog); pass it on rank 0 only.
        verbose: print one line about the data and device (rank 0), and a progress bar when
            stdout is a terminal.
        quality_config: the params section quality (how the Dice estimate is calibrated);
            None: its defaults.

    Returns:
        The model with the best epoch's weights, its history, the post-processing chosen and the
        Dice estimate fitted (those two on rank 0 only).

    Raises:
        ParamsError: for a train.low_res_size these images or this depth cannot use.
        TrainingError: with advice when the device runs out of memory or the loss diverges.
    """
    check_low_res(train_config, processed.images.shape[-1], model_config.depth)
    runtime = runtime_for(device, train_config)
    rank, world = (worker.rank, worker.world) if worker else (0, 1)
    train_ids, val_ids = ids_in(split, "train"), ids_in(split, "val")
    train_set = shard_tensors(processed, train_ids, rank, world, runtime)
    val_set = shard_tensors(processed, val_ids, rank, world, runtime)
    if verbose and rank == 0:
        shared = f" in {world} processes (each holds 1/{world} of the images)" if worker else ""
        print(f"training on {len(train_ids)} images, validating on {len(val_ids)}{shared}, device {device}, "
              f"precision {runtime.dtype or torch.float32}")

    model, model_args = new_model(model_config, train_config.seed, runtime)
    augmenter = Augmenter(augment_config, rank_seed(train_config, worker), device) if augment_config.enabled else None
    try:
        result = fit(model, train_set, val_set, plan(model, train_set, train_config, worker), infer_config.threshold,
                     runtime.dtype, runtime.compile, show_progress=verbose and rank == 0 and sys.stdout.isatty(),
                     augment=augmenter, worker=worker, on_epoch=on_epoch)
    except (torch.OutOfMemoryError, RuntimeError) as problem:
        if not is_out_of_memory(problem):
            raise
        raise TrainingError(out_of_memory_advice(device, train_config.batch_size, model_config.base_width)) from problem
    model.load_state_dict(result.best_state)
    chosen, scores, estimator = None, {}, None
    if rank == 0:
        if worker:  # each rank validated on its shard; the choice is made on the whole set
            val_set = shard_tensors(processed, val_ids, 0, 1, runtime)
        chosen, scores = choose_postprocessing(model, val_set, infer_config.threshold, train_config.batch_size, runtime.dtype)
        quality = quality_config or QualityConfig()
        estimator = calibrate(model, val_set.images, val_set.masks, processed.subset(train_ids).masks, infer_config.threshold,
                              chosen, train_config.batch_size, runtime.dtype, quality.calibration_draws, train_config.seed)
    return Trained(model, model_args, result.history, result.best_epoch, result.best_dice, chosen, scores, estimator)


def check_low_res(train_config: TrainConfig, image_size: int, depth: int) -> None:
    """Refuse a train.low_res_size the U-Net cannot train at on these images.

    The rule lungseg.core.config applies to params.yaml (low_res_problems), here on the arrays actually given.

    Args:
        train_config: the params section train.
        image_size: the side of the preprocessed images in pixels.
        depth: model.depth.

    Raises:
        ParamsError: naming the first problem found.
    """
    if problems := low_res_problems(train_config, image_size, depth):
        raise ParamsError(problems[0])


def shard_tensors(processed: ProcessedSet, ids: list[str], rank: int, world: int, runtime: Runtime) -> TensorPair:
    """Rank `rank`'s shard of the images `ids`, on the device (all of them when world is 1).

    Args:
        processed: the preprocessed arrays and their index.
        ids: the ids of the images to shard.
        rank: this process's rank.
        world: the number of processes.
        runtime: the device and memory layout of the tensors.

    Returns:
        The shard's images and masks.
    """
    part = processed.subset(distributed.shard(ids, rank, world))
    return tensors(part.images, part.masks, runtime.device, runtime.layout)
