"""Stage evaluate: Dice and IoU of the best model on the test split, against a threshold baseline."""

import numpy as np

from lungseg import config, paths, stage
from lungseg.baseline import fit_threshold, threshold_masks
from lungseg.data.preprocess import load_processed
from lungseg.data.split import ids_in, read_split
from lungseg.evaluate import per_image_scores, subgroup_means, summary
from lungseg.inference import Predictor
from lungseg.io import atomic_path, write_csv, write_json


def baseline_predictions(processed, split, test, steps: int) -> tuple[float, np.ndarray]:
    """Tune the intensity threshold on train + val, apply it to test."""
    seen = processed.subset(ids_in(split, "train") + ids_in(split, "val"))
    threshold = fit_threshold(seen.images, seen.masks, steps)
    return threshold, threshold_masks(test.images, threshold)


def main(params: dict) -> None:
    infer, evaluation = config.load(params, "infer", "evaluate")
    processed, split = load_processed(paths.PROCESSED_DIR), read_split(paths.SPLIT_CSV)
    test = processed.subset(ids_in(split, "test"))
    predictor = Predictor.from_checkpoint(paths.MODEL, infer.device, infer.threshold)
    predictions = predictor.masks(test.images, infer.batch_size)
    scores = per_image_scores(test.index["id"], predictions, test.masks)

    threshold, baseline = baseline_predictions(processed, split, test, evaluation.baseline_steps)
    baseline_scores = per_image_scores(test.index["id"], baseline, test.masks)
    scores["baseline_dice"] = baseline_scores["dice"]

    metrics = {
        "test": summary(scores, predictions, test.masks),
        "baseline": {"threshold": threshold, **summary(baseline_scores, baseline, test.masks)},
        "subgroups": subgroup_means(scores, test.index, evaluation.subgroups),
    }
    with atomic_path(paths.PREDICTIONS) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, ids=np.asarray(test.index["id"], dtype=str), masks=predictions)
    write_csv(scores, paths.PER_IMAGE)
    write_json(metrics, paths.METRICS)
    print(f"test Dice {metrics['test']['dice']:.4f}, IoU {metrics['test']['iou']:.4f} "
          f"(threshold baseline Dice {metrics['baseline']['dice']:.4f}) on {len(scores)} images")


if __name__ == "__main__":
    stage.run(main)
