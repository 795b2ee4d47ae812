"""Pictures for the ``visualize`` stage and `lungseg evaluate`: montages, error maps, training
curves, the estimate scatter, and which images a montage shows.

This module only turns in-memory arrays and tables into image files. It knows nothing
about the data layout, params.yaml, torch or DVC: the caller loads everything and
passes plain numpy arrays / pandas DataFrames plus the output paths to write.

Design choices:

* Figures are built with :class:`matplotlib.figure.Figure` directly (never pyplot), so
  no GUI backend is selected, no global figure registry grows, and it runs headless in CI.
* Every writer is atomic (:func:`lungseg.core.io.atomic_path`): a crash or bad input mid-render never
  leaves a truncated PNG at the final path, which DVC would otherwise happily cache.
* Inputs are validated up front with ``ValueError`` messages that say what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lungseg.core.io import atomic_path
from lungseg.inference.overlay import check_alpha, check_image, check_mask, check_same_shape, overlay

# Error colours, safe for the common colour-vision deficiencies (magenta vs green stay apart for
# deuteranopes and protanopes). Drawn solid, so a one-pixel error is visible in a small tile.
FP_COLOR = (255, 0, 255)  # false positive: predicted lung where the truth is background (magenta)
FN_COLOR = (0, 255, 0)  # false negative: truth lung the prediction missed (green)
MONTAGE_COLUMNS = ("X-ray", "ground truth", "prediction", "overlay", "errors: FP magenta, FN green")
_FLAG_COLOR = "#E69F00"  # Okabe-Ito orange: border and label of an empty or all-lung mask panel
_CELL_INCHES = 2.5  # size of one montage tile; rows stack, so height grows with examples
_CURVE_FIGSIZE = (6.0, 4.0)


# --------------------------------------------------------------------------- atomic IO


def _save_figure(fig: Figure, path: str | os.PathLike, dpi: int) -> None:
    """Atomically save ``fig``; the format comes from the suffix of ``path`` (default PNG)."""
    _check_dpi(dpi)
    # Pass the format explicitly: with no suffix matplotlib would append ".png" to the
    # temp name and os.replace would then miss the file it wrote.
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"cannot save a figure as {fmt!r} ({path}); supported: {sorted(supported)}"
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)


# --------------------------------------------------------------------------- validation


def _check_dpi(dpi: int) -> None:
    if not isinstance(dpi, (int, np.integer)) or isinstance(dpi, bool) or dpi <= 0:
        raise ValueError(f"dpi must be a positive integer, got {dpi!r}")


def _check_history(history: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Return ``history`` sorted by epoch after checking it has rows and ``columns``."""
    if not isinstance(history, pd.DataFrame):
        raise ValueError(f"history must be a pandas DataFrame, got {type(history).__name__}")
    for col in columns:
        if col not in history.columns:
            raise ValueError(f"history missing column {col!r}; it has {list(history.columns)}")
    if history.empty:
        raise ValueError("history has no rows (no epochs to plot)")
    return history.sort_values("epoch")


def _check_row(row: dict, i: int) -> dict:
    """Validate one montage row; return it with arrays normalised (masks as bool)."""
    if not isinstance(row, dict):
        raise ValueError(f"rows[{i}] must be a dict, got {type(row).__name__}")
    missing = [k for k in ("image", "truth", "pred") if k not in row]
    if missing:
        raise ValueError(f"rows[{i}] missing key(s) {missing}; it has {sorted(row)}")
    image = check_image(row["image"], f"rows[{i}]['image']")
    truth = check_mask(row["truth"], f"rows[{i}]['truth']")
    pred = check_mask(row["pred"], f"rows[{i}]['pred']")
    check_same_shape(image, truth, f"rows[{i}] image", "truth")
    check_same_shape(image, pred, f"rows[{i}] image", "pred")
    return {"image": image, "truth": truth, "pred": pred, "title": str(row.get("title", ""))}


def _grey_uint8(image: np.ndarray) -> np.ndarray:
    """A checked image on the 0..255 scale: uint8 as is, float in [0, 1] rounded like overlay()."""
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def error_image(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The errors of ``pred`` against ``truth`` drawn on the X-ray.

    Args:
        image: HxW float in [0, 1] or uint8.
        truth: HxW bool or 0/1, the shape of `image`.
        pred: HxW bool or 0/1, the shape of `image`.

    Returns:
        HxWx3 uint8 RGB: false positives (pred lung, truth background) are exactly ``FP_COLOR`` (magenta),
        false negatives (truth lung, pred background) exactly ``FN_COLOR`` (green); true positives and true
        negatives stay uncoloured, R == G == B == the grey value (a float image on the 0..255 scale,
        rounded, as in :func:`overlay`).

    Raises:
        ValueError: for an image or mask that fails its check, or shapes that differ.
    """
    image = check_image(image)
    truth = check_mask(truth, "truth")
    pred = check_mask(pred, "pred")
    check_same_shape(image, truth, "image", "truth")
    check_same_shape(image, pred, "image", "pred")
    rgb = np.repeat(_grey_uint8(image)[..., None], 3, axis=2)
    rgb[pred & ~truth] = FP_COLOR
    rgb[truth & ~pred] = FN_COLOR
    return rgb


# --------------------------------------------------------------------------- montage


def _blank_axes(ax: Axes) -> None:
    """Hide ticks and frame but keep the axis "on" so its ylabel (the row title) still draws."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _mask_flag(mask: np.ndarray, empty: str) -> str | None:
    """The label for a mask that is one flat colour (``empty`` or "all lung"), else None."""
    if not mask.any():
        return empty
    if mask.all():
        return "all lung"
    return None


def _flag_axes(ax: Axes, label: str) -> None:
    """A thick orange border and a centred label, so a flat black (empty) or white (all-lung)
    mask cannot be taken for a missing or failed picture."""
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(_FLAG_COLOR)
        spine.set_linewidth(3)
    ax.text(0.5, 0.5, label, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="black", bbox={"boxstyle": "round", "facecolor": _FLAG_COLOR, "edgecolor": "none"})


LABEL_CHARS = 30  # characters of 9 pt text that fit along a tile (2.5 inches, less its share of the margins)


def fit_label(title: str, width: int = LABEL_CHARS) -> str:
    """A row label whose every line fits beside its tile: a longer line (a long file name, as
    external sets name theirs) keeps its start and its end around an ellipsis.

    Args:
        title: the label, its lines separated by newlines.
        width: the most characters a line may have.

    Returns:
        The label, each line at most `width` characters.
    """
    def fit(line: str) -> str:
        if len(line) <= width:
            return line
        head = (width - 1) // 2
        return line[:head] + "…" + line[len(line) - (width - 1 - head):]
    return "\n".join(fit(line) for line in title.split("\n"))


def _draw_row(axes: Sequence[Axes], row: dict, alpha: float) -> None:
    """Draw one example across five axes: X-ray | truth | prediction | overlay | errors."""
    image = row["image"]
    # Fixed vmin/vmax so a dark or low-contrast X-ray is not auto-stretched, and an
    # all-zero mask renders black rather than mid-grey.
    vmax = 255 if image.dtype == np.uint8 else 1.0
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
    axes[1].imshow(row["truth"], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[2].imshow(row["pred"], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[3].imshow(overlay(image, row["pred"], alpha=alpha), interpolation="nearest")
    axes[4].imshow(error_image(image, row["truth"], row["pred"]), interpolation="nearest")
    for ax in axes:
        _blank_axes(ax)
    axes[0].set_ylabel(fit_label(row["title"]), fontsize=9)
    for ax, mask, empty in ((axes[1], row["truth"], "empty truth"), (axes[2], row["pred"], "empty prediction")):
        label = _mask_flag(mask, empty)
        if label:
            _flag_axes(ax, label)


def save_montage(rows: list[dict], path, dpi: int = 100, alpha: float = 0.4) -> None:
    """Save one figure, one row per example: X-ray | ground truth | prediction | red overlay | errors.

    The overlay is the prediction over the X-ray; the errors column is :func:`error_image` (false
    positives magenta, false negatives green). An empty or all-lung truth or prediction panel gets an
    orange border and a label ("empty prediction", "all lung"). Rows may differ in size. Output size is
    fixed per row count: ``(5 * 2.5in, n_rows * 2.5in) * dpi``.

    Args:
        rows: each ``{"image": HxW, "truth": HxW 0/1, "pred": HxW 0/1, "title": str}`` (title optional).
        path: the file to write; its suffix picks the format (default PNG).
        dpi: the resolution, a positive integer.
        alpha: the overlay's colour weight, in [0, 1].

    Raises:
        ValueError: for no rows, a row that fails its checks (all checked before drawing), a bad alpha or
            dpi, or a format matplotlib cannot write.
    """
    if not rows:
        raise ValueError("rows is empty: need at least one example to draw a montage")
    check_alpha(alpha)
    # Validate every row before drawing anything: fail fast with a precise message.
    checked = [_check_row(row, i) for i, row in enumerate(rows)]

    n = len(checked)
    columns = len(MONTAGE_COLUMNS)
    fig = Figure(figsize=(columns * _CELL_INCHES, n * _CELL_INCHES), layout="constrained")
    grid = fig.subplots(n, columns, squeeze=False)
    for axes, row in zip(grid, checked):
        _draw_row(axes, row, alpha)
    for ax, header in zip(grid[0], MONTAGE_COLUMNS):
        ax.set_title(header, fontsize=10)
    _save_figure(fig, path, dpi)


# --------------------------------------------------------------------------- curves


_MAX_LABELLED_EPOCHS = 12  # up to this many epochs, every epoch gets its own tick


def _epoch_axis(ax: Axes, epochs: pd.Series) -> None:
    """Integer epoch ticks. MaxNLocator(integer=True) alone falls back to fractional ticks
    on a 1-epoch run (0.96, 0.99, ...), so short runs get one explicit tick per epoch."""
    ax.set_xlabel("epoch")
    unique = np.unique(epochs.to_numpy())
    if len(unique) <= _MAX_LABELLED_EPOCHS:
        ax.set_xticks(unique)
        ax.set_xlim(unique.min() - 0.5, unique.max() + 0.5)  # keep end markers off the frame
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _curve_axes(fig: Figure, epochs: pd.Series, ylabel: str, title: str) -> Axes:
    """Axes set up for a per-epoch curve."""
    ax = fig.subplots()
    _epoch_axis(ax, epochs)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return ax


def save_loss_curves(history: pd.DataFrame, path, dpi: int = 100) -> None:
    """Plot ``train_loss`` and ``val_loss`` against ``epoch`` (markers on every point).

    Args:
        history: one row per epoch, with columns epoch, train_loss and val_loss.
        path: the file to write; its suffix picks the format (default PNG).
        dpi: the resolution, a positive integer.

    Raises:
        ValueError: for a history that is not a DataFrame, lacks a column or has no rows, a bad dpi, or a
            format matplotlib cannot write.
    """
    hist = _check_history(history, ("epoch", "train_loss", "val_loss"))
    fig = Figure(figsize=_CURVE_FIGSIZE, layout="constrained")
    ax = _curve_axes(fig, hist["epoch"], "loss", "Training and validation loss")
    # Markers matter: a 1-epoch run is a single point that a bare line would not show.
    ax.plot(hist["epoch"], hist["train_loss"], marker="o", label="train loss")
    ax.plot(hist["epoch"], hist["val_loss"], marker="s", label="val loss")
    ax.legend()
    _save_figure(fig, path, dpi)


def _best_epoch(hist: pd.DataFrame) -> tuple[float, float]:
    """(epoch, val_dice) of the best validation Dice.

    Ties go to the earliest epoch, matching a trainer that keeps a checkpoint on a strict '>'.
    """
    dice = pd.to_numeric(hist["val_dice"], errors="coerce")
    if dice.isna().all():
        raise ValueError(
            "history column 'val_dice' has no numeric values; cannot mark the best epoch"
        )
    best = dice.idxmax()
    return hist.loc[best, "epoch"], float(dice[best])


def _label_alignment(epochs: pd.Series, epoch: float) -> str:
    """Anchor a label toward the plot interior so it is not clipped at the first/last epoch."""
    if len(epochs) > 1 and epoch == epochs.max():
        return "right"
    if len(epochs) > 1 and epoch == epochs.min():
        return "left"
    return "center"


def _annotate_best(ax: Axes, hist: pd.DataFrame) -> None:
    """Star the best-Dice epoch (the checkpoint kept) and label it without leaving the axes."""
    epoch, dice = _best_epoch(hist)
    ax.plot([epoch], [dice], marker="*", markersize=16, color="gold",
            markeredgecolor="black", linestyle="none", label="best (checkpoint kept)", zorder=3)
    ax.annotate(f"best: epoch {epoch:g}, Dice {dice:.3f}", xy=(epoch, dice),
                xytext=(0, -30), textcoords="offset points", fontsize=9,
                ha=_label_alignment(hist["epoch"], epoch),
                arrowprops={"arrowstyle": "->", "color": "black"})


def save_dice_curves(history: pd.DataFrame, path, dpi: int = 100) -> None:
    """Plot ``val_dice`` and ``val_iou`` against ``epoch`` and mark the best ``val_dice`` epoch.

    Args:
        history: one row per epoch, with columns epoch, val_dice and val_iou.
        path: the file to write; its suffix picks the format (default PNG).
        dpi: the resolution, a positive integer.

    Raises:
        ValueError: for a history that is not a DataFrame, lacks a column, has no rows or no numeric
            val_dice, a bad dpi, or a format matplotlib cannot write.
    """
    hist = _check_history(history, ("epoch", "val_dice", "val_iou"))
    fig = Figure(figsize=_CURVE_FIGSIZE, layout="constrained")
    ax = _curve_axes(fig, hist["epoch"], "score", "Validation Dice and IoU")
    ax.plot(hist["epoch"], hist["val_dice"], marker="o", label="val Dice")
    ax.plot(hist["epoch"], hist["val_iou"], marker="s", label="val IoU")
    _annotate_best(ax, hist)
    ax.legend(loc="lower right")
    _save_figure(fig, path, dpi)


def save_estimate_scatter(table: pd.DataFrame, path, dpi: int = 100, min_dice: float | None = None) -> None:
    """Plot estimated against true Dice, one dot per image, with the line where they agree.

    Args:
        table: columns dice and dice_estimate (rows without an estimate are left out).
        path: the file to write; its suffix picks the format (default PNG).
        dpi: the resolution, a positive integer.
        min_dice: the flag's limit, drawn as a line when given.

    Raises:
        ValueError: for a table without those columns, a bad dpi, or a format matplotlib cannot write.
    """
    missing = [column for column in ("dice", "dice_estimate") if column not in table.columns]
    if missing:
        raise ValueError(f"table missing column(s) {missing}; it has {list(table.columns)}")
    pairs = table.dropna(subset=["dice", "dice_estimate"]).astype({"dice": float, "dice_estimate": float})
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    low = min(0.5, float(pairs[["dice", "dice_estimate"]].min().min()) - 0.02) if len(pairs) else 0.5
    ax.plot([low, 1], [low, 1], color="grey", linewidth=1, label="estimate = truth")
    if min_dice is not None:
        ax.axhline(min_dice, color="tab:red", linestyle="--", linewidth=1, label=f"flag below {min_dice:.2f}")
    ax.scatter(pairs["dice"], pairs["dice_estimate"], s=14, alpha=0.7)
    ax.set(xlim=(low, 1), ylim=(low, 1), xlabel="true Dice", ylabel="estimated Dice",
           title=f"Estimated against true Dice ({len(pairs)} images)")
    ax.legend(loc="lower right")
    _save_figure(fig, path, dpi)


# --------------------------------------------------------------------------- mask PNG


# zlib settings for mask PNGs: a 0/255 mask is long runs of two values, which zlib's run-length
# strategy at level 1 packs as small as the default level 6 does (1 KB a 512 px mask, 17 KB a
# 3000 px one) in less time; the pixels are the same whatever the settings


# --------------------------------------------------------------------------- which images a montage shows


def pick_examples(scores: pd.DataFrame, n: int) -> list[tuple[str, pd.Series]]:
    """The images a montage shows, so that it shows the whole range of quality.

    Args:
        scores: per-image scores with a dice column.
        n: how many at most.

    Returns:
        Up to n (label, row) pairs: the best, median and worst image by Dice, then others ("sample") evenly
        spaced along the ranking; in ranking order.
    """
    ranked = scores.sort_values("dice", ascending=False, kind="stable").reset_index(drop=True)
    last = len(ranked) - 1
    candidates = [(0, "best"), (last, "worst"), (last // 2, "median")]
    candidates += [(int(p), "sample") for p in np.linspace(0, last, max(n, 1)).round()]
    chosen: dict[int, str] = {}
    for position, label in candidates:
        if len(chosen) >= n:
            break
        chosen.setdefault(position, label)
    return [(label, ranked.iloc[position]) for position, label in sorted(chosen.items())]


def montage_rows(scores: pd.DataFrame, images: np.ndarray, truths: np.ndarray, predictions: np.ndarray, n: int) -> list[dict]:
    """The rows lungseg.evaluation.pictures.save_montage draws for up to n examples chosen by pick_examples.

    Args:
        scores: per-image scores with id and dice (and dice_estimate, shown when given).
        images: uint8 N x S x S, in the same order as the rows of `scores`.
        truths: uint8 N x S x S, the same order.
        predictions: uint8 N x S x S, the same order.
        n: how many examples.

    Returns:
        save_montage's rows, each also with a "name" (label_id) for a file of its own.
    """
    position = {image_id: i for i, image_id in enumerate(scores["id"].astype(str))}
    rows = []
    for label, row in pick_examples(scores, n):
        i = position[str(row["id"])]
        estimate = row.get("dice_estimate")
        estimated = "" if estimate is None or pd.isna(estimate) else f" · est. {float(estimate):.3f}"
        rows.append({"image": images[i], "truth": truths[i], "pred": predictions[i],  # two lines: fits a row's height
                     "title": f"{label} · id {row['id']}\nDice {row['dice']:.3f}{estimated}", "name": f"{label}_{row['id']}"})
    return rows
