"""What an evaluation writes: the per-image table, the histogram, the full report, the few
headline numbers users compare, and the estimated-against-true Dice. The evaluate stage and
`lungseg evaluate` both write through `write_evaluation`, so their files are alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lungseg.core.io import atomic_path, write_csv, write_json
from lungseg.evaluation import pictures
from lungseg.evaluation.scores import Evaluation, estimate_table, truth_column
from lungseg.inference import review

ERRORS = "errors"  # the review page's false positive / false negative pictures
REVIEW_NAMES = (review.PAGE, review.THUMBNAILS, review.VIEWS, ERRORS)  # what write_review adds to a folder


@dataclass(frozen=True)
class EvaluationFiles:
    """Where an evaluation's files go.

    Args:
        per_image: per_image.csv, a row per image.
        histogram: dice_histogram.csv.
        report: evaluation_report.json, everything.
        metrics: metrics.json, the headline numbers.
        estimate_csv: the estimated and true Dice per image as a table (the stage's, drawn by
            `dvc plots show`), or None.
        estimate_png: the same drawn as a scatter, or None.
    """

    per_image: Path
    histogram: Path
    report: Path
    metrics: Path
    estimate_csv: Path | None = None
    estimate_png: Path | None = None


def write_evaluation(result: Evaluation, files: EvaluationFiles, dpi: int = 100, min_dice: float | None = None) -> None:
    """Write `result` into `files`, each file atomically.

    Args:
        result: what lungseg.evaluation.scores.evaluate_set (or evaluate_folder) returned.
        files: where each file goes.
        dpi: the scatter's (estimate_png) resolution.
        min_dice: the scatter's flag line, or None.
    """
    write_csv(result.scores, files.per_image)
    write_csv(result.histogram(), files.histogram)
    write_json(result.metrics, files.report)
    write_json(headline(result.metrics), files.metrics)
    if files.estimate_csv is not None:
        write_csv(estimate_table(result.scores), files.estimate_csv)
    if files.estimate_png is not None:
        if result.metrics["dice_estimate"]:
            pictures.save_estimate_scatter(estimate_table(result.scores), files.estimate_png, dpi, min_dice)
        else:  # a model without a calibration: an earlier run's scatter (--overwrite) would no longer match
            files.estimate_png.unlink(missing_ok=True)


def write_review(folder: Path, result: Evaluation, header: review.Header, alpha: float = 0.4) -> Path:
    """The review page of an evaluation, worst true Dice first, with its pictures at model size:
    each image's overlay thumbnail, the X-ray alone, and its errors (false positives magenta,
    false negatives green, as in the montage).

    Args:
        folder: where to write index.html and its thumbnails/, views/ and errors/ folders.
        result: the evaluation (with its model-size images, truths and masks).
        header: what the page says above the cards (the counts are filled in here).
        alpha: the overlays' opacity.

    Returns:
        The page's path.
    """
    truth = truth_column(result.scores)
    review.sweep_pictures(folder, ERRORS)  # once, not before each of the set's pictures
    cards = []
    for i, row in enumerate(result.scores.to_dict("records")):
        stem = str(row["id"])
        thumbnail, view = review.write_card_pictures(folder, stem, result.images[i], result.masks[i], alpha)
        errors = f"{ERRORS}/{stem}.png"
        error_picture = pictures.error_image(result.images[i], result.truths[i], result.masks[i])
        with atomic_path(folder / errors, sweep=False) as tmp:
            Image.fromarray(error_picture).save(tmp, format="PNG")
        flag = row.get("flag") or ""
        cards.append(review.Card(name=stem, input=stem, thumbnail=thumbnail, overlay=thumbnail, xray=view, errors=errors,
                                 flags=flag.split("; ") if flag else [], estimate=review.known(row.get("dice_estimate")),
                                 dice=review.known(row[truth])))
    header.images, header.flagged = len(cards), sum(bool(card.flags) for card in cards)
    return review.write_page(folder, review.worst_first(cards), header)



def headline(metrics: dict) -> dict:
    """The few numbers users compare between runs (metrics.json, `dvc exp show`).

    Everything else stays in the full report.

    Args:
        metrics: the full report (Evaluation.metrics, with "baseline" when the stage added it).

    Returns:
        The test scores at native resolution when they were computed (else at model size), the Dice at
        model size, and the threshold baseline's Dice.
    """
    scored = metrics.get("test_native", metrics["test"])
    test = {key: scored[key] for key in ("dice", "dice_ci_low", "dice_ci_high", "iou", "hd95", "dice_min")}
    test |= {"dice_128px": metrics["test"]["dice"], "n_images": scored["n_images"]}
    if "hd95_mm" in scored:  # some images carry a pixel spacing (DICOM)
        test["hd95_mm"] = scored["hd95_mm"]
    out = {"test": test}
    if "baseline" in metrics:
        out["baseline"] = {"dice_128px": metrics["baseline"]["dice"]}
    return out


def score_lines(metrics: dict) -> str:
    """The scores as text for the terminal.

    Args:
        metrics: the full report.

    Returns:
        One line per resolution: mean Dice with its interval, IoU, HD95, worst image; then the estimate's
        agreement (when any) and the post-processing.
    """
    lines = []
    for name, label in (("test", "model size"), ("test_native", "native resolution")):
        if name in metrics:
            m = metrics[name]
            lines.append(f"{label}: Dice {m['dice']:.4f} [{m['dice_ci_low']:.4f}, {m['dice_ci_high']:.4f}], "
                         f"IoU {m['iou']:.4f}, HD95 {m['hd95']:.1f} px, worst Dice {m['dice_min']:.4f} ({m['n_images']} images)")
    agreement = metrics.get("dice_estimate")
    if agreement:
        rho = "n/a" if agreement["spearman_rho"] is None else f"{agreement['spearman_rho']:.2f}"
        lines.append(f"estimated Dice: mean absolute error {agreement['mae']:.3f}, Spearman {rho}; "
                     f"{metrics.get('flagged', 0)} of {agreement['n_images']} flagged")
    return "\n".join(lines + [f"post-processing: {metrics['postprocess']}"])
