"""Stage train: fit the U-Net on the train split, keep the best epoch by validation Dice.

The recipe itself is lungseg.training.recipe.train_model; this script reads params, starts the
processes, and writes the outputs. With train.nproc > 1 the stage re-executes itself under
torchrun, one process per GPU (or CPU processes on a machine without one); started by torchrun
directly it trains as one rank of a multi-machine run. How the work is shared, and the
commands: src/lungseg/training/distributed.py.
"""

from lungseg.core import config, paths, stage
from lungseg.core.io import write_json
from lungseg.core.runtime import resolve_device
from lungseg.data.processed import load_processed, read_split
from lungseg.model.checkpoint import make_checkpoint, save_checkpoint, training_data
from lungseg.training import distributed
from lungseg.training.recipe import Trained, train_model
from lungseg.training.tracking import EpochLog


def main(params: dict) -> None:
    data, model_config, train_config, augment, infer, quality = config.load(
        params, "data", "model", "train", "augment", "infer", "quality")
    device = resolve_device(train_config.device)
    if train_config.nproc > 1 and not distributed.launched():
        distributed.check_launch(train_config.nproc, train_config.batch_size, device)  # before any process starts
        distributed.relaunch(train_config.nproc, __file__)  # never returns: this process becomes torchrun
    worker = distributed.setup(device) if distributed.launched() else None
    try:
        processed, split = load_processed(paths.PROCESSED_DIR), read_split(paths.SPLIT_CSV)
        rank_0 = worker is None or worker.rank == 0
        # rank 0 records each epoch as it ends (dvclive files, one printed line per epoch)
        epoch_log = EpochLog(paths.LIVE_DIR, train_config.epochs) if rank_0 else None
        trained = train_model(processed, split, model_config, train_config, augment, infer,
                              worker.device if worker else device, worker, on_epoch=epoch_log, quality_config=quality)
        if rank_0:  # rank 0 writes the outputs
            save_outputs(trained, processed.settings, infer.threshold, training_data(data.dirs, processed.index))
    finally:
        distributed.cleanup()


def save_outputs(trained: Trained, preprocessing: dict, threshold: float, trained_on: dict) -> None:
    """Write the checkpoint (with what it was trained on) and the training report (the per-epoch
    metrics are already on disk: EpochLog wrote them as each epoch ended)."""
    chosen, scores = trained.postprocess, trained.postprocess_scores
    estimator = trained.dice_estimator.to_dict() if trained.dice_estimator else None
    checkpoint = make_checkpoint(trained.model, trained.model_args, preprocessing, threshold, chosen, estimator,
                                 epoch=trained.best_epoch, val_dice=trained.best_dice, training_data=trained_on)
    save_checkpoint(checkpoint, paths.MODEL)
    write_json({"epochs": len(trained.history), "best_epoch": trained.best_epoch, "val_dice": trained.best_dice,
                "postprocess": chosen, "val_dice_postprocessed": scores[chosen],
                "val_dice_by_postprocess": scores,
                "dice_estimate_calibration": trained.dice_estimator.calibration if trained.dice_estimator else None},
               paths.TRAINING_REPORT)
    print(f"best epoch {trained.best_epoch}: val Dice {trained.best_dice:.4f}; post-processing '{chosen}' "
          f"(val Dice {scores[chosen]:.4f}) -> {paths.MODEL}")


if __name__ == "__main__":
    stage.run(main)
