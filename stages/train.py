"""Stage train: fit the U-Net on the train split, keep the best epoch by validation Dice."""

import torch

from lungseg import config, paths, stage
from lungseg.checkpoint import make_checkpoint, save_checkpoint
from lungseg.data.preprocess import load_processed
from lungseg.data.split import ids_in, read_split
from lungseg.engine import TensorPair, TrainingError, fit, is_out_of_memory, out_of_memory_advice
from lungseg.io import write_csv, write_json
from lungseg.model import UNet
from lungseg.runtime import (autocast_dtype, configure, images_to_tensor, masks_to_tensor, memory_format,
                             prepare_model, resolve_device, should_compile)


def tensors(data, device, layout) -> TensorPair:
    return TensorPair(images_to_tensor(data.images, device, layout), masks_to_tensor(data.masks, device, layout))


def check_size_fits_depth(image_size: int, depth: int) -> None:
    if image_size % 2**depth:
        raise config.ParamsError(f"model.depth={depth} needs an image size divisible by {2**depth}, "
                                 f"but the preprocessed images are {image_size} px (preprocess.image_size)")


def main(params: dict) -> None:
    model_config, train_config, infer = config.load(params, "model", "train", "infer")
    device = resolve_device(train_config.device)
    configure(device)
    dtype = autocast_dtype(device, train_config.precision)
    layout = memory_format(device, dtype)
    processed, split = load_processed(paths.PROCESSED_DIR), read_split(paths.SPLIT_CSV)
    check_size_fits_depth(processed.settings["image_size"], model_config.depth)
    train_set = tensors(processed.subset(ids_in(split, "train")), device, layout)
    val_set = tensors(processed.subset(ids_in(split, "val")), device, layout)
    print(f"training on {len(train_set)} images, validating on {len(val_set)}, device {device}, precision {dtype or torch.float32}")

    torch.manual_seed(train_config.seed)  # the initial weights depend on it
    model_args = {"in_channels": 1, "out_channels": 1, "depth": model_config.depth, "base_width": model_config.base_width}
    model = prepare_model(UNet(**model_args), device, layout)
    try:
        result = fit(model, train_set, val_set, train_config, infer.threshold, dtype, should_compile(device, train_config.compile))
    except (torch.OutOfMemoryError, RuntimeError) as problem:
        if not is_out_of_memory(problem):
            raise
        raise TrainingError(out_of_memory_advice(device, train_config.batch_size, model_config.base_width)) from problem

    model.load_state_dict(result.best_state)
    checkpoint = make_checkpoint(model, model_args, processed.settings, infer.threshold,
                                 epoch=result.best_epoch, val_dice=result.best_dice)
    save_checkpoint(checkpoint, paths.MODEL)
    write_csv(result.history, paths.HISTORY)
    write_json({"best_epoch": result.best_epoch, "val_dice": result.best_dice}, paths.TRAIN_METRICS)
    print(f"best epoch {result.best_epoch}: val Dice {result.best_dice:.4f} -> {paths.MODEL}")


if __name__ == "__main__":
    stage.run(main)
