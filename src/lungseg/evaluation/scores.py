"""Scores over a set of predictions: per image, their means with bootstrap intervals, pooled,
per subgroup, and at each image's original resolution.

`evaluate_set` is the one evaluation used by the evaluate stage (the test split) and by
`lungseg evaluate` (any other folder of image/mask pairs, for external validation). The
intervals come from lungseg.evaluation.intervals, the baseline from lungseg.evaluation.baseline,
the files from lungseg.evaluation.report.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from lungseg.core.config import EvaluateConfig, PreprocessConfig
from lungseg.core.errors import DataError
from lungseg.data.images import pixel_spacing, read_mask
from lungseg.data.integrity import warnings_of
from lungseg.data.preprocess import assemble, raise_on_errors, scan_folder
from lungseg.evaluation.intervals import mean_with_ci
from lungseg.inference.predictor import Predictor
from lungseg.model.metrics import dice_per_image, dice_pooled, hd95, iou_per_image, iou_pooled
from lungseg.postprocessing import quality

MODEL_SIZE_COLUMNS = ("dice", "iou", "hd95")
NATIVE_COLUMNS = ("dice_native", "iou_native", "hd95_native")


@dataclass
class Evaluation:
    """What evaluate_set and evaluate_folder return.

    Args:
        scores: one row per image.
        metrics: the full report (headline() picks what metrics.json holds).
        masks: predicted masks at model size (uint8 N x S x S).
        images: the model-size images scored (uint8 N x S x S), same order.
        truths: their truth masks at model size (uint8 0/1 N x S x S).
        warnings: what reading the data found (lungseg.data.integrity), for the user.
    """

    scores: pd.DataFrame
    metrics: dict
    masks: np.ndarray
    images: np.ndarray | None = None
    truths: np.ndarray | None = None
    warnings: list = field(default_factory=list)

    def histogram(self) -> pd.DataFrame:
        """The per-image Dice histogram, at native resolution when it was scored there.

        Returns:
            dice_histogram's table.
        """
        return dice_histogram(self.scores[truth_column(self.scores)].to_numpy())


def per_image_scores(ids, predictions: np.ndarray, truths: np.ndarray, spacings=None) -> pd.DataFrame:
    """Model-size scores, one row per image.

    Args:
        ids: the images' ids.
        predictions: uint8 0/1 N x S x S predicted masks.
        truths: uint8 0/1 N x S x S truth masks.
        spacings: each image's (row, column) size of a model pixel in original pixels (original height / S,
            width / S), or None.

    Returns:
        Table id, dice, iou, hd95, truth_fraction and pred_fraction; hd95 is in pixels of the original image
        with `spacings`, else in model pixels.
    """
    spacings = [(1.0, 1.0)] * len(predictions) if spacings is None else list(spacings)
    return pd.DataFrame({
        "id": list(ids),
        "dice": dice_per_image(predictions, truths),
        "iou": iou_per_image(predictions, truths),
        "hd95": [hd95(p, t, spacing) for p, t, spacing in zip(predictions, truths, spacings)],
        "truth_fraction": truths.reshape(len(truths), -1).mean(1),
        "pred_fraction": predictions.reshape(len(predictions), -1).mean(1),
    })


def quality_columns(predictor: Predictor, predictions: np.ndarray, probabilities: np.ndarray,
                    limits: quality.Limits = quality.DEFAULT_LIMITS) -> pd.DataFrame:
    """lungseg.postprocessing.quality's columns per image, as `lungseg predict` writes them.

    Here from the model-size masks.

    Args:
        predictor: the Predictor (its dice_estimate).
        predictions: uint8 N x S x S final masks.
        probabilities: float N x S x S.
        limits: when a mask is flagged.

    Returns:
        quality.COLUMNS (lung shares, balance, estimated Dice, flag), one row per image.
    """
    reports = [quality.assess(mask, predictor.dice_estimate(probability, mask), limits)
               for mask, probability in zip(predictions, probabilities)]
    return pd.DataFrame([report.columns() for report in reports], columns=list(quality.COLUMNS))


def estimate_agreement(scores: pd.DataFrame) -> dict | None:
    """How well dice_estimate followed the true Dice (at native resolution when scored there).

    Args:
        scores: per-image scores with dice_estimate.

    Returns:
        {"against", "n_images", "pearson_r", "spearman_rho", "mae", "bias"}: the Dice column compared,
        the number of images, Pearson r, Spearman rho, mean absolute error and the mean signed error
        (estimate - truth); r and rho are None when either side is constant. None without estimates.
    """
    against = truth_column(scores)
    pairs = scores[[against, "dice_estimate"]].dropna().astype(float)
    if pairs.empty:
        return None
    truth, estimate = pairs[against].to_numpy(), pairs["dice_estimate"].to_numpy()
    varies = len(pairs) > 2 and truth.std() > 0 and estimate.std() > 0
    return {"against": against, "n_images": len(pairs),
            "pearson_r": float(stats.pearsonr(estimate, truth)[0]) if varies else None,
            "spearman_rho": float(stats.spearmanr(estimate, truth)[0]) if varies else None,
            "mae": float(np.mean(np.abs(estimate - truth))), "bias": float(np.mean(estimate - truth))}


def estimate_table(scores: pd.DataFrame) -> pd.DataFrame:
    """The scatter `dvc plots show` draws.

    Args:
        scores: per-image scores with dice_estimate.

    Returns:
        Table id, dice (the true Dice, truth_column) and dice_estimate, one row per image.
    """
    return pd.DataFrame({"id": scores["id"], "dice": scores[truth_column(scores)], "dice_estimate": scores["dice_estimate"]})


def truth_column(scores: pd.DataFrame) -> str:
    """The per-image Dice that counts: at native resolution when it was scored there.

    Args:
        scores: per-image scores.

    Returns:
        "dice_native" or "dice".
    """
    return "dice_native" if "dice_native" in scores else "dice"


def native_scores(predictor: Predictor, probabilities: np.ndarray, mask_paths, mask_threshold: int,
                  show_progress: bool = True, image_paths=None, workers: int = 1,
                  lung_labels: tuple[int, ...] = ()) -> pd.DataFrame:
    """Dice, IoU and HD95 at each image's original resolution.

    The model-size probabilities are resized to the original mask's size, thresholded and post-processed
    there (Predictor.native_mask), and compared with the original mask. One image at a time per worker,
    so 3000 px masks never pile up.

    Args:
        predictor: the Predictor (its native_mask).
        probabilities: float N x S x S, in the order of `mask_paths`.
        mask_paths: each image's original truth mask.
        mask_threshold: the grey level above which a mask pixel is lung.
        show_progress: show a progress bar.
        image_paths: each image's file; with them, HD95 is also given in mm (`hd95_native_mm`) for each image
            whose file carries a pixel spacing (DICOM PixelSpacing or ImagerPixelSpacing); NaN for the others.
        workers: threads scoring images side by side (decoding, resizing and the distance queries release
            the GIL); the rows and their order are the same for any number. Run several inside
            lungseg.inference.predictor.torch_threads(1), or torch's own threads fight them for the cores.
        lung_labels: which labels of label-map masks are lung (data.lung_labels; () = every one).

    Returns:
        Table dice_native, iou_native, hd95_native, hd95_native_mm, one row per image.
    """
    image_paths = [None] * len(mask_paths) if image_paths is None else list(image_paths)
    items = list(zip(probabilities, mask_paths, image_paths))
    score = partial(_native_row, predictor, mask_threshold, lung_labels)
    progress = partial(tqdm, total=len(items), desc="native resolution", unit="image", disable=not show_progress, mininterval=1.0)
    with ThreadPoolExecutor(workers) as pool:
        rows = list(progress(pool.map(score, items)))
    return pd.DataFrame(rows, columns=[*NATIVE_COLUMNS, "hd95_native_mm"])


def _native_row(predictor: Predictor, mask_threshold: int, lung_labels: tuple[int, ...], item: tuple) -> dict:
    """native_scores' row for one (probability, mask path, image path or None)."""
    probability, path, image_path = item
    truth = read_mask(path, mask_threshold, lung_labels)
    prediction = predictor.native_mask(probability, truth.shape)
    spacing = pixel_spacing(image_path) if image_path is not None else None
    return {"dice_native": float(dice_per_image(prediction[None], truth[None])[0]),
            "iou_native": float(iou_per_image(prediction[None], truth[None])[0]),
            "hd95_native": hd95(prediction, truth),
            "hd95_native_mm": hd95(prediction, truth, spacing) if spacing else np.nan}


def with_intervals(scores: pd.DataFrame, columns, config: EvaluateConfig, suffix: str = "") -> dict:
    """Means with intervals, by BCa bootstrap (mean_with_ci).

    Args:
        scores: per-image scores.
        columns: the columns to summarise.
        config: the params section evaluate (bootstrap_samples, confidence, bootstrap_seed).
        suffix: taken off each column's name in the keys (e.g. "_native").

    Returns:
        {name: mean, name_ci_low, name_ci_high} for each column.
    """
    out = {}
    for column in columns:
        name = column.removesuffix(suffix) if suffix else column
        stats = mean_with_ci(scores[column].to_numpy(), config.bootstrap_samples, config.confidence, config.bootstrap_seed)
        out |= {name: stats["mean"], f"{name}_ci_low": stats["ci_low"], f"{name}_ci_high": stats["ci_high"]}
    return out


def summary(scores: pd.DataFrame, predictions: np.ndarray, truths: np.ndarray, config: EvaluateConfig) -> dict:
    """Model-size metrics.

    Args:
        scores: per-image scores (MODEL_SIZE_COLUMNS).
        predictions: uint8 0/1 N x S x S predicted masks.
        truths: uint8 0/1 N x S x S truth masks.
        config: the params section evaluate (the intervals).

    Returns:
        Means over images with intervals (each image counts once), pooled values (each pixel counts once),
        the spread (dice_min, dice_std) and n_images.
    """
    return {
        **with_intervals(scores, MODEL_SIZE_COLUMNS, config),
        "dice_pooled": dice_pooled(predictions, truths),
        "iou_pooled": iou_pooled(predictions, truths),
        "dice_min": float(scores["dice"].min()),
        "dice_std": float(scores["dice"].std(ddof=0)),
        "n_images": len(scores),
    }


def native_summary(scores: pd.DataFrame, config: EvaluateConfig) -> dict:
    """Native-resolution metrics.

    Args:
        scores: per-image scores with the native columns (native_scores).
        config: the params section evaluate (the intervals).

    Returns:
        Means with intervals, the spread and n_images; and HD95 in mm over the images whose files give a
        pixel spacing (with how many those are, n_images_with_spacing), when any do.
    """
    out = {
        **with_intervals(scores, NATIVE_COLUMNS, config, suffix="_native"),
        "dice_min": float(scores["dice_native"].min()),
        "dice_std": float(scores["dice_native"].std(ddof=0)),
        "n_images": len(scores),
    }
    with_spacing = scores.dropna(subset=["hd95_native_mm"]) if "hd95_native_mm" in scores else scores.iloc[:0]
    if len(with_spacing):
        out |= with_intervals(with_spacing.rename(columns={"hd95_native_mm": "hd95_mm"}), ("hd95_mm",), config)
        out["n_images_with_spacing"] = len(with_spacing)
    return out


NOT_GIVEN = "(not given)"  # the subgroup of images whose metadata lacks the column's value


def subgroup_means(scores: pd.DataFrame, metadata: pd.DataFrame, columns, config: EvaluateConfig | None = None) -> dict:
    """Scores per subgroup of images.

    Args:
        scores: per-image scores with id.
        metadata: a table with id and the metadata columns.
        columns: the metadata columns to group by.
        config: the params section evaluate (the intervals); None: the defaults.

    Returns:
        {column: {value: {"n_images", "dice", "iou", ... and, when native scores exist, the native Dice
        with its interval and HD95}}} for each metadata column that is filled in; images without the value
        form the group NOT_GIVEN.
    """
    config = config or EvaluateConfig()
    table = scores.merge(metadata, on="id", how="left", suffixes=("", "_meta"))
    result = {}
    for column in columns:
        if column not in table.columns:
            continue
        values = table[column].fillna("").astype(str)
        if not (values.str.len() > 0).any():
            continue
        # rows without the value (e.g. from a data folder with no MetaData.csv) get a named group
        values = values.mask(values == "", NOT_GIVEN)
        result[column] = {value: _group_scores(group, config) for value, group in table.groupby(values)}
    return result


def _group_scores(group: pd.DataFrame, config: EvaluateConfig) -> dict:
    out = {"n_images": len(group), "dice": float(group["dice"].mean()), "iou": float(group["iou"].mean())}
    if "dice_native" in group.columns:
        out |= with_intervals(group, ("dice_native",), config)
        out["hd95_native"] = float(group["hd95_native"].mean())
    return out


def dice_histogram(dice: np.ndarray, max_bins: int = 10) -> pd.DataFrame:
    """Counts of per-image Dice in bins of a round width (0.002, 0.005, 0.01, 0.025, ...).

    The width follows the spread of the scores: numpy's 'auto' rule picks the number of bins, so close
    scores get fine bins and one outlier does not make dozens of empty bars.

    Args:
        dice: per-image Dice.
        max_bins: the most bins.

    Returns:
        Table dice_bin (labels such as "0.95-0.96", which sort as text in order, for DVC's bar plot) and
        images (the counts).
    """
    dice = np.clip(np.asarray(dice, dtype=float), 0.0, 1.0)
    low, high = float(dice.min()), float(dice.max())
    bins = min(max(len(np.histogram_bin_edges(dice, bins="auto")) - 1, 1), max_bins)
    width = _round_width(max(high - low, 0.01) / bins)
    start = min(np.floor(low / width + 1e-9) * width, 1.0 - width)
    count = max(int(np.ceil(round((high - start) / width, 9))), 1)
    edges = np.minimum(np.round(start + width * np.arange(count + 1), 9), 1.0)
    counts, _ = np.histogram(dice, bins=edges)
    decimals = next(d for d in range(2, 10) if abs(round(width, d) - width) < 1e-12)
    labels = [f"{a:.{decimals}f}-{b:.{decimals}f}" for a, b in zip(edges[:-1], edges[1:])]
    return pd.DataFrame({"dice_bin": labels, "images": counts})


def _round_width(raw: float) -> float:
    """The smallest of 1, 2, 2.5 and 5 times a power of ten that is at least `raw`."""
    power = 10.0 ** np.floor(np.log10(raw))
    return next(round(m * power, 12) for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))


def evaluate_set(predictor: Predictor, images: np.ndarray, masks: np.ndarray, index: pd.DataFrame,
                 data_dir: str | Path | None, config: EvaluateConfig, mask_threshold: int, batch_size: int = 32,
                 subgroups=(), show_progress: bool = True, workers: int = 1,
                 limits: quality.Limits = quality.DEFAULT_LIMITS, lung_labels: tuple[int, ...] = ()) -> Evaluation:
    """Score `predictor` on a preprocessed set.

    With a `data_dir` and `config.native`, also at each image's original resolution, by `workers` threads
    (native_scores). Each image's estimated Dice and flag (limits) are scored against its true Dice
    (estimate_agreement).

    Args:
        predictor: the model.
        images: uint8 N x S x S, at model size.
        masks: their truth masks, uint8 0/1 N x S x S.
        index: a row per image: id, height, width, and image_file and mask_file relative to `data_dir`
            (and the subgroups' metadata columns).
        data_dir: where the original files lie, or None (no native-resolution scores).
        config: the params section evaluate.
        mask_threshold: the grey level above which an original mask pixel is lung.
        batch_size: images per forward pass.
        subgroups: metadata columns to score subgroups by.
        show_progress: show a progress bar for the native scores.
        workers: threads for the native-resolution scores (see native_scores).
        limits: when a mask is flagged.
        lung_labels: which labels of label-map masks are lung (data.lung_labels; () = every one).

    Returns:
        The per-image scores, the metrics and the masks.
    """
    size = images.shape[-1]
    probabilities = predictor.probabilities(images, batch_size)
    predictions = predictor.to_masks(probabilities)
    spacings = zip(index["height"] / size, index["width"] / size)
    scores = per_image_scores(index["id"], predictions, masks, spacings)
    scores = pd.concat([scores, quality_columns(predictor, predictions, probabilities, limits)], axis=1)
    metrics = {"postprocess": predictor.postprocess, "test": summary(scores, predictions, masks, config)}
    if data_dir is not None and config.native:
        mask_paths = [Path(data_dir) / name for name in index["mask_file"]]
        image_paths = [Path(data_dir) / name for name in index["image_file"]]
        native = native_scores(predictor, probabilities, mask_paths, mask_threshold, show_progress, image_paths, workers,
                               lung_labels)
        scores = pd.concat([scores, native], axis=1)
        metrics["test_native"] = native_summary(scores, config)
    metrics["subgroups"] = subgroup_means(scores, index, subgroups, config)
    metrics["dice_estimate"] = estimate_agreement(scores)
    metrics["flagged"] = int((scores["flag"].astype(str).str.len() > 0).sum())
    return Evaluation(scores, metrics, predictions, images, masks)


def evaluate_folder(predictor: Predictor, data_dir: str | Path, config: EvaluateConfig, batch_size: int = 32,
                    subgroups=(), show_progress: bool = True, workers: int = 1,
                    limits: quality.Limits = quality.DEFAULT_LIMITS, lung_labels: tuple[int, ...] = ()) -> Evaluation:
    """External validation: score `predictor` on every image/mask pair under `data_dir`, like the test split.

    Any layout lungseg reads; the pairs are prepared exactly as the model's training data was.
    The folder is checked as `lungseg check` checks it: errors raise one DataError naming every
    file before anything is scored; warnings come back in Evaluation.warnings. A pair whose truth
    mask holds no lung is not scored (its Dice would say nothing about the model) but listed in
    the report (metrics["excluded"]["empty_truth"]).

    Args:
        predictor: the model (its preprocess settings prepare the images).
        data_dir: the folder of image/mask pairs.
        config: the params section evaluate.
        batch_size: images per forward pass.
        subgroups: metadata columns to score subgroups by.
        show_progress: show a progress bar for the native scores.
        workers: threads for the native-resolution scores (see native_scores); same scores for any number.
        limits: when a mask is flagged.
        lung_labels: which labels of label-map masks are lung (data.lung_labels; () = every one).

    Returns:
        The evaluation, with the data's warnings.

    Raises:
        DataError: for a folder with errors (naming every file) or whose every truth mask is empty.
    """
    settings = PreprocessConfig(**predictor.preprocess, metadata_columns=tuple(subgroups))
    scan = scan_folder(data_dir, settings, lung_labels)
    raise_on_errors(scan)
    images, masks, index = assemble(scan, settings)
    empty = masks.reshape(len(masks), -1).max(axis=1) == 0
    if empty.all():
        raise DataError(f"{data_dir}: every truth mask is empty after reading; nothing to score")
    result = evaluate_set(predictor, images[~empty], masks[~empty], index[~empty].reset_index(drop=True), data_dir,
                          config, settings.mask_threshold, batch_size, subgroups, show_progress, workers, limits,
                          lung_labels)
    result.warnings = warnings_of(scan.findings)
    result.metrics["excluded"] = {"empty_truth": list(index.loc[empty, "mask_file"])}
    return result
