"""Stage train: fit the U-Net on the train split, keep the best epoch by validation Dice.

With train.nproc > 1 the stage re-executes itself under torchrun, one process per GPU (or CPU
processes on a machine without one); started by torchrun directly it trains as one rank of a
multi-machine run. How the work is shared, and the commands: src/lungseg/distributed.py.
"""

import sys

import torch

from lungseg import config, distributed, paths, postprocess, stage
from lungseg.augment import Augmenter
from lungseg.checkpoint import make_checkpoint, save_checkpoint
from lungseg.data.preprocess import load_processed
from lungseg.data.split import ids_in, read_split
from lungseg.engine import (
    TensorPair,
    TrainingError,
    fit,
    is_out_of_memory,
    out_of_memory_advice,
    predicted_masks,
)
from lungseg.io import write_json
from lungseg.model import UNet
from lungseg.runtime import (
    autocast_dtype,
    configure,
    images_to_tensor,
    masks_to_tensor,
    memory_format,
    prepare_model,
    resolve_device,
    should_compile,
)
from lungseg.tracking import EpochLog


def tensors(data, device, layout) -> TensorPair:
    return TensorPair(images_to_tensor(data.images, device, layout), masks_to_tensor(data.masks, device, layout))


def check_size_fits_depth(image_size: int, depth: int) -> None:
    if image_size % 2**depth:
        raise config.ParamsError(f"model.depth={depth} needs an image size divisible by {2**depth}, "
                                 f"but the preprocessed images are {image_size} px (preprocess.image_size)")


def choose_postprocessing(model, val_set: TensorPair, threshold: float, batch_size: int, dtype) -> tuple[str, dict]:
    """Try each post-processing option on the validation masks of the best model (never on test)."""
    masks = predicted_masks(model, val_set.images, threshold, batch_size, dtype)
    return postprocess.choose(masks, val_set.masks[:, 0].cpu().numpy())


def main(params: dict) -> None:
    model_config, train_config, augment, infer = config.load(params, "model", "train", "augment", "infer")
    device = resolve_device(train_config.device)
    if train_config.nproc > 1 and not distributed.launched():
        distributed.check_launch(train_config.nproc, train_config.batch_size, device)  # before any process starts
        distributed.relaunch(train_config.nproc, __file__)  # never returns: this process becomes torchrun
    worker = distributed.setup(device) if distributed.launched() else None
    try:
        train(model_config, train_config, augment, infer, worker.device if worker else device, worker)
    finally:
        distributed.cleanup()


def train(model_config, train_config, augment, infer, device, worker) -> None:
    """Train on `device`; with a `worker`, as one rank of a distributed run, on its shards of the data."""
    configure(device)
    dtype = autocast_dtype(device, train_config.precision)
    layout = memory_format(device, dtype)
    processed, split = load_processed(paths.PROCESSED_DIR), read_split(paths.SPLIT_CSV)
    check_size_fits_depth(processed.settings["image_size"], model_config.depth)
    if worker:  # checked before any data reaches the device
        distributed.local_batch_size(train_config.batch_size, worker.world)
    train_ids, val_ids = ids_in(split, "train"), ids_in(split, "val")
    rank, world = (worker.rank, worker.world) if worker else (0, 1)
    train_set = tensors(processed.subset(distributed.shard(train_ids, rank, world)), device, layout)
    val_set = tensors(processed.subset(distributed.shard(val_ids, rank, world)), device, layout)
    if rank == 0:
        shared = f" in {world} processes (each holds 1/{world} of the images)" if worker else ""
        print(f"training on {len(train_ids)} images, validating on {len(val_ids)}{shared}, device {device}, "
              f"precision {dtype or torch.float32}")

    torch.manual_seed(train_config.seed)  # the initial weights depend on it (the same on every rank)
    model_args = {"in_channels": 1, "out_channels": 1, "depth": model_config.depth, "base_width": model_config.base_width}
    model = prepare_model(UNet(**model_args), device, layout)
    # each rank draws its own augmentations; rank 0 (or the only process) uses train.seed itself
    augmenter = Augmenter(augment, train_config.seed + rank, device) if augment.enabled else None
    # rank 0 records each epoch as it ends; the bar only on a terminal (a log file gets the epoch lines)
    epoch_log = EpochLog(paths.LIVE_DIR, train_config.epochs) if rank == 0 else None
    try:
        result = fit(model, train_set, val_set, train_config, infer.threshold, dtype,
                     should_compile(device, train_config.compile), show_progress=rank == 0 and sys.stdout.isatty(),
                     augment=augmenter, worker=worker, on_epoch=epoch_log)
    except (torch.OutOfMemoryError, RuntimeError) as problem:
        if not is_out_of_memory(problem):
            raise
        raise TrainingError(out_of_memory_advice(device, train_config.batch_size, model_config.base_width)) from problem
    if rank != 0:
        return  # rank 0 writes the outputs
    model.load_state_dict(result.best_state)
    if worker:  # post-processing is chosen on the whole validation set
        val_set = tensors(processed.subset(val_ids), device, layout)
    save_outputs(model, model_args, processed.settings, infer.threshold, result, val_set, train_config.batch_size, dtype)


def save_outputs(model, model_args: dict, preprocessing: dict, threshold: float, result, val_set: TensorPair,
                 batch_size: int, dtype) -> None:
    """Choose post-processing on validation, then write the checkpoint and the training report
    (the per-epoch metrics are already on disk: EpochLog wrote them as each epoch ended)."""
    chosen, option_scores = choose_postprocessing(model, val_set, threshold, batch_size, dtype)
    checkpoint = make_checkpoint(model, model_args, preprocessing, threshold, chosen,
                                 epoch=result.best_epoch, val_dice=result.best_dice)
    save_checkpoint(checkpoint, paths.MODEL)
    write_json({"epochs": len(result.history), "best_epoch": result.best_epoch, "val_dice": result.best_dice,
                "postprocess": chosen, "val_dice_postprocessed": option_scores[chosen],
                "val_dice_by_postprocess": option_scores}, paths.TRAINING_REPORT)
    print(f"best epoch {result.best_epoch}: val Dice {result.best_dice:.4f}; post-processing '{chosen}' "
          f"(val Dice {option_scores[chosen]:.4f}) -> {paths.MODEL}")


if __name__ == "__main__":
    stage.run(main)
