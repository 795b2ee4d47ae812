"""Stage evaluate: the best model on the test split (never used for any choice), at model size
and at each image's original resolution, with bootstrap intervals, per subgroup, and against a
tuned intensity-threshold baseline; and how well each image's estimated Dice followed its true
Dice (results/dice_estimate.csv, drawn by `dvc plots show`); and the review page of the test
images, worst first (results/review/index.html)."""

import numpy as np

from lungseg.core import config, paths, stage
from lungseg.core.io import atomic_path
from lungseg.data.images import set_max_pixels
from lungseg.data.processed import ids_in, index_root, load_processed, read_split
from lungseg.evaluation.baseline import baseline_scores
from lungseg.evaluation.report import EvaluationFiles, score_lines, write_evaluation, write_review
from lungseg.evaluation.scores import evaluate_set
from lungseg.inference import review
from lungseg.inference.predictor import Predictor
from lungseg.postprocessing import quality

FILES = EvaluationFiles(paths.PER_IMAGE, paths.DICE_HISTOGRAM, paths.EVALUATION_REPORT, paths.METRICS,
                        estimate_csv=paths.DICE_ESTIMATE)


def main(params: dict) -> None:
    data, infer, settings, preprocess, flags = config.load(params, "data", "infer", "evaluate", "preprocess", "quality")
    set_max_pixels(preprocess.max_pixels)  # the original masks are read for native-resolution scores
    processed, split = load_processed(paths.PROCESSED_DIR), read_split(paths.SPLIT_CSV)
    test = processed.subset(ids_in(split, "test"))
    predictor = Predictor.from_checkpoint(paths.MODEL, infer.device, infer.threshold)
    # each data folder is a subgroup of its own when there are several (the index's source column)
    subgroups = (*settings.subgroups, "source") if len(data.dirs) > 1 else settings.subgroups
    if predictor.estimator is None:
        print(quality.NO_ESTIMATOR.format(model=paths.MODEL))
    result = evaluate_set(predictor, test.images, test.masks, test.index, index_root(data.dirs), settings,
                          processed.settings["mask_threshold"], infer.batch_size, subgroups,
                          limits=quality.Limits.of(flags), lung_labels=data.lung_labels)
    result.metrics["baseline"], result.scores["baseline_dice"] = baseline_scores(processed, split, test, settings)

    with atomic_path(paths.PREDICTIONS) as tmp, open(tmp, "wb") as handle:  # the masks the visualize stage draws
        np.savez_compressed(handle, ids=np.asarray(test.index["id"], dtype=str), masks=result.masks)
    write_evaluation(result, FILES)
    with atomic_path(paths.REVIEW_DIR) as tmp:
        write_review(tmp, result, review.model_header(f"lungseg: the test split of {', '.join(data.dirs)}", paths.MODEL,
                                                      predictor.info))
    print(score_lines(result.metrics))
    print(f"threshold baseline Dice {result.metrics['baseline']['dice']:.4f}")


if __name__ == "__main__":
    stage.run(main)
