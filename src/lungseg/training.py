"""The training recipe, in one place: preprocessed arrays and configs in, a trained U-Net out.

The train stage, the benchmarks and the tests all call `train_model`, so they train exactly
the same way: the same runtime choices (device, precision, memory layout, compile), the same
seeding, the same augmentation, the same sharding under DDP, and the same post-processing
choice on validation. Writing files is left to the caller (stages/train.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from lungseg import distributed, postprocess
from lungseg.augment import Augmenter
from lungseg.config import low_res_problems
from lungseg.data.preprocess import ProcessedSet
from lungseg.data.split import ids_in
from lungseg.engine import TensorPair, TrainingError, fit, is_out_of_memory, out_of_memory_advice, predicted_masks
from lungseg.errors import ParamsError
from lungseg.model import UNet
from lungseg.runtime import (
    autocast_dtype,
    configure,
    images_to_tensor,
    masks_to_tensor,
    memory_format,
    prepare_model,
    should_compile,
)


@dataclass
class Trained:
    """What training gives back; the stage writes it to the checkpoint and the training report."""

    model: torch.nn.Module  # holding the weights of the best epoch
    model_args: dict  # UNet(**model_args) rebuilds the architecture (the checkpoint stores them)
    history: pd.DataFrame  # one row per epoch (engine.fit)
    best_epoch: int
    best_dice: float  # validation Dice of best_epoch, before post-processing
    postprocess: str | None  # the option chosen on validation (lungseg.postprocess); None on ranks other than 0
    postprocess_scores: dict[str, float]  # mean validation Dice of every option; empty on ranks other than 0


class Runtime(NamedTuple):
    """How tensors run on one device, as the train stage runs them."""

    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    layout: torch.memory_format
    compile: bool  # whether fit runs the model through torch.compile


def runtime_for(device: torch.device, train_config) -> Runtime:
    """The runtime choices for training on `device` (train.precision, train.compile), with the
    process-wide speed switches (cuDNN benchmark, TF32) set."""
    configure(device)
    dtype = autocast_dtype(device, train_config.precision)
    return Runtime(device, dtype, memory_format(device, dtype), should_compile(device, train_config.compile))


CPU = torch.device("cpu")


def tensors(images: np.ndarray, masks: np.ndarray, device: torch.device = CPU,
            layout: torch.memory_format = torch.contiguous_format) -> TensorPair:
    """uint8 images (N x H x W, 0..255) and 0/1 masks -> a TensorPair of N x 1 x H x W floats on `device`."""
    return TensorPair(images_to_tensor(images, device, layout), masks_to_tensor(masks, device, layout))


def new_model(model_config, seed: int, runtime: Runtime) -> tuple[torch.nn.Module, dict]:
    """A freshly initialised U-Net on the runtime's device and layout, and its constructor arguments.
    The initial weights depend only on `seed`, so every rank of a DDP run starts the same."""
    torch.manual_seed(seed)
    model_args = {"in_channels": 1, "out_channels": 1, "depth": model_config.depth, "base_width": model_config.base_width}
    return prepare_model(UNet(**model_args), runtime.device, runtime.layout), model_args


def choose_postprocessing(model, val_set: TensorPair, threshold: float, batch_size: int, dtype) -> tuple[str, dict]:
    """The post-processing option with the best validation Dice for `model`, and every option's
    score (validation only: the test set never steers a choice)."""
    masks = predicted_masks(model, val_set.images, threshold, batch_size, dtype)
    return postprocess.choose(masks, val_set.masks[:, 0].cpu().numpy())


def train_model(processed: ProcessedSet, split: pd.DataFrame, model_config, train_config, augment_config, infer_config,
                device: torch.device, worker: distributed.Worker | None = None,
                on_epoch: Callable[[dict, int, float], None] | None = None, verbose: bool = True) -> Trained:
    """Train a U-Net on the 'train' rows of `split`, keep the epoch with the best validation Dice,
    and choose its post-processing on the 'val' rows.

    Args:
        processed: the preprocessed arrays and their index (lungseg.data.preprocess).
        split: table id -> split ('train', 'val', 'test'); ids may repeat (each row is one image).
        model_config, train_config, augment_config, infer_config: the params sections model,
            train, augment and infer (infer_config.threshold turns probabilities into masks).
        device: where to train; with a `worker`, the worker's device.
        worker: this process's place in a DDP run (lungseg.distributed), or None for one process.
            Each rank trains on its shards; rank 0 alone chooses the post-processing, on the
            whole validation set.
        on_epoch: called as each epoch ends with (history row, best epoch, best Dice) (e.g.
            lungseg.tracking.EpochLog); pass it on rank 0 only.
        verbose: print one line about the data and device (rank 0), and a progress bar when
            stdout is a terminal.
    Raises ParamsError for a train.low_res_size these images or this depth cannot use, and
    TrainingError with advice when the device runs out of memory or the loss diverges.
    """
    check_low_res(train_config, processed.images.shape[-1], model_config.depth)
    runtime = runtime_for(device, train_config)
    rank, world = (worker.rank, worker.world) if worker else (0, 1)
    if worker:  # checked before any data reaches the device
        distributed.local_batch_size(train_config.batch_size, world)
    train_ids, val_ids = ids_in(split, "train"), ids_in(split, "val")
    train_set = shard_tensors(processed, train_ids, rank, world, runtime)
    val_set = shard_tensors(processed, val_ids, rank, world, runtime)
    if verbose and rank == 0:
        shared = f" in {world} processes (each holds 1/{world} of the images)" if worker else ""
        print(f"training on {len(train_ids)} images, validating on {len(val_ids)}{shared}, device {device}, "
              f"precision {runtime.dtype or torch.float32}")

    model, model_args = new_model(model_config, train_config.seed, runtime)
    # each rank draws its own augmentations; rank 0 (or the only process) uses train.seed itself
    augmenter = Augmenter(augment_config, train_config.seed + rank, device) if augment_config.enabled else None
    try:
        result = fit(model, train_set, val_set, train_config, infer_config.threshold, runtime.dtype, runtime.compile,
                     show_progress=verbose and rank == 0 and sys.stdout.isatty(), augment=augmenter, worker=worker,
                     on_epoch=on_epoch)
    except (torch.OutOfMemoryError, RuntimeError) as problem:
        if not is_out_of_memory(problem):
            raise
        raise TrainingError(out_of_memory_advice(device, train_config.batch_size, model_config.base_width)) from problem
    model.load_state_dict(result.best_state)
    chosen, scores = None, {}
    if rank == 0:
        if worker:  # each rank validated on its shard; the choice is made on the whole set
            val_set = shard_tensors(processed, val_ids, 0, 1, runtime)
        chosen, scores = choose_postprocessing(model, val_set, infer_config.threshold, train_config.batch_size, runtime.dtype)
    return Trained(model, model_args, result.history, result.best_epoch, result.best_dice, chosen, scores)


def check_low_res(train_config, image_size: int, depth: int) -> None:
    """Refuse a train.low_res_size the U-Net cannot train at on these images (the rule check_params
    applies to params.yaml, here on the arrays actually given)."""
    if problems := low_res_problems(train_config, image_size, depth):
        raise ParamsError(problems[0])


def shard_tensors(processed: ProcessedSet, ids: list[str], rank: int, world: int, runtime: Runtime) -> TensorPair:
    """Rank `rank`'s shard of the images `ids`, on the device (all of them when world is 1)."""
    part = processed.subset(distributed.shard(ids, rank, world))
    return tensors(part.images, part.masks, runtime.device, runtime.layout)
