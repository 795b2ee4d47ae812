"""Stage visualize: montages (X-ray | truth | prediction | overlay | errors), predicted mask PNGs, curves."""

import numpy as np
import pandas as pd

from lungseg.core import config, paths, stage
from lungseg.core.io import atomic_path
from lungseg.data.processed import load_processed
from lungseg.evaluation import pictures
from lungseg.evaluation.pictures import montage_rows
from lungseg.inference.overlay import save_mask_png
from lungseg.training.tracking import read_history


def main(params: dict) -> None:
    settings = config.load(params, "visualize")
    saved = np.load(paths.PREDICTIONS)
    predictions = dict(zip(saved["ids"].tolist(), saved["masks"]))
    scores = pd.read_csv(paths.PER_IMAGE, dtype={"id": str}, keep_default_na=False)
    test = load_processed(paths.PROCESSED_DIR).subset(scores["id"])

    predicted = np.stack([predictions[image_id] for image_id in scores["id"]])  # in the order of scores, as test is
    rows = montage_rows(scores, test.images, test.masks, predicted, settings.n_examples)
    with atomic_path(paths.MONTAGE_DIR) as tmp:
        tmp.mkdir()
        pictures.save_montage(rows, tmp / "montage.png", settings.dpi, settings.overlay_alpha)
        for row in rows:
            pictures.save_montage([row], tmp / f"{row['name']}.png", settings.dpi, settings.overlay_alpha)
    with atomic_path(paths.PREDS_DIR) as tmp:
        tmp.mkdir()
        for image_id, mask in predictions.items():
            save_mask_png(mask, tmp / f"{image_id}.png")
    history = read_history(paths.LIVE_DIR)
    pictures.save_loss_curves(history, paths.LOSS_CURVES, settings.dpi)
    pictures.save_dice_curves(history, paths.DICE_CURVES, settings.dpi)
    print(f"wrote {len(rows)} montage rows to {paths.MONTAGE_DIR}, {len(predictions)} masks to {paths.PREDS_DIR}, curves to {paths.RESULTS}")


if __name__ == "__main__":
    stage.run(main)
