"""The quality of one predicted lung mask: the Dice it should expect, and whether to flag it.

A model asked about an X-ray unlike its training images still draws a mask; nothing in the mask
itself says it is wrong. But a model that is unsure shows it in its own output: probabilities
that hover near the threshold over a wide band, an edge drawn where it is not confident, lungs
of an unlikely size or balance, or an outline no training mask resembles. `DiceEstimator` turns
six such measures of one prediction (all at model size, from the one forward pass) into the
Dice it should expect against an expert's mask:

    soft_dice         Dice between the probabilities and their own mask (1: every pixel sure)
    ambiguous         pixels with 0.1 < p < 0.9, per lung pixel of the mask
    edge_uncertainty  mean of min(p, 1 - p) * 2 along the mask's edge (boundary_uncertainty)
    lung_fraction     share of the image that is lung
    balance           smaller lung / larger lung
    shape_error       1 - Dice between the mask and its nearest plausible lung shape: the mask,
                      cropped to its lungs and resized to SHAPE_SIZE px, projected on the
                      principal shapes of the training masks (a light "reverse classification")

How far each measure moves the Dice differs from model to model (a 704-image model is surer of
its edges than a 240-image one), so the weights are fitted for each model on its own validation
images, clean and degraded the way other hospitals' X-rays differ (lungseg.training.recipe.calibrate),
and stored with it. The fit is a ridge regression of log(1 - Dice) on the standardised
measures: errors are multiplicative (a mask twice as unsure loses about twice as much), and the
log keeps a few ruined images from pulling the estimate of good ones down.

The flag (`assess`) names the masks to look at twice: an estimated Dice below `min_dice`
(params.yaml: quality.min_dice), and what a chest X-ray's lungs cannot be, whatever the model:
none, one, or three or more pieces. It says "look at this one", not "this one is wrong".

Lung sides follow the PA convention of lungseg.inference.predict: the patient's RIGHT lung is the one on
the image's LEFT, counted over the two largest 8-connected components of the final mask.

Memory: the mask may be 10000 x 8000; it is labelled once (int32, lungseg.postprocessing.postprocess) and never
copied as float. The probability map is the model-size one (S x S float32), never the native one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from lungseg.core.config import QualityConfig
from lungseg.postprocessing import postprocess

MAX_COMPONENTS = 2  # two lungs; more pieces are flagged "3+ components"
MIN_DICE, MIN_PIECE = QualityConfig().min_dice, QualityConfig().min_piece  # params.yaml's defaults
BOUNDARY_PX = 1  # the edge band is the pixels within this many pixels of the edge, on either side

COLUMNS = ("right_share", "left_share", "balance", "dice_estimate", "flag")  # appended to predictions.csv
DECIMALS = 4


@dataclass(frozen=True)
class Limits:
    """When a mask is flagged (quality.* in params.yaml).

    Args:
        min_dice: an estimated Dice below it flags.
        min_piece: components below this share of the lung are specks, not counted as pieces.
    """

    min_dice: float = MIN_DICE
    min_piece: float = MIN_PIECE

    @classmethod
    def of(cls, config: QualityConfig) -> Limits:
        """The limits params.yaml's quality section sets.

        Args:
            config: the quality section.

        Returns:
            its min_dice and min_piece as Limits.
        """
        return cls(config.min_dice, config.min_piece)


DEFAULT_LIMITS = Limits()  # params.yaml's defaults


class LungSides(NamedTuple):
    """A mask's lungs, as lung_pixels counts them (PA convention).

    Args:
        right_px: pixels of the patient's right lung: the image's left side.
        left_px: pixels of the patient's left lung.
        n_components: 8-connected components of the mask.
        n_pieces: components of at least min_piece of the lung (what "3+ components" counts).
    """

    right_px: int  # the patient's right lung: the image's left side
    left_px: int
    n_components: int
    n_pieces: int  # components of at least min_piece of the lung (what "3+ components" counts)

    @property
    def balance(self) -> float:
        """Smaller lung / larger lung, 0.0 unless both lungs are found."""
        larger = max(self.right_px, self.left_px)
        return min(self.right_px, self.left_px) / larger if larger else 0.0


@dataclass(frozen=True)
class QualityReport:
    """One image's quality measures and its flag.

    Args:
        n_components: 8-connected components of the final mask.
        lung_fraction: lung pixels / all pixels.
        right_px: pixels of the patient's right lung (PA convention).
        left_px: pixels of the patient's left lung.
        right_share: the right lung's pixels / all pixels of the image.
        left_share: the left lung's pixels / all pixels of the image.
        balance: smaller lung / larger lung, 0.0 unless both lungs are found.
        dice_estimate: the expected Dice against an expert's mask (DiceEstimator); None for a
            model without a calibration.
        flag: "" when nothing is wrong, else the reasons joined by "; ".
    """

    n_components: int
    lung_fraction: float
    right_px: int
    left_px: int
    right_share: float
    left_share: float
    balance: float
    dice_estimate: float | None
    flag: str

    def columns(self) -> dict:
        """The values of COLUMNS, rounded for the table.

        Returns:
            {column: value}, numbers rounded to DECIMALS places (a None estimate and the flag as they are).
        """
        values = asdict(self)
        return {name: values[name] if name == "flag" or values[name] is None else round(values[name], DECIMALS)
                for name in COLUMNS}


def assess(mask: np.ndarray, dice_estimate: float | None = None, limits: Limits = DEFAULT_LIMITS) -> QualityReport:
    """The quality report of one prediction.

    Args:
        mask: the final native-size binary mask (uint8 0/1 or bool, H x W), as written to masks/.
        dice_estimate: its estimated Dice (Predictor.dice_estimate), or None when the model has none.
        limits: when to flag (Limits; default: params.yaml's defaults).

    Returns:
        the mask's QualityReport.
    """
    sides = lung_pixels(mask, limits.min_piece)
    right_px, left_px, count, pieces = sides
    total = mask.shape[0] * mask.shape[1]
    lung_fraction = int(np.count_nonzero(mask)) / total if total else 0.0
    flag = "; ".join(reasons(count, right_px, left_px, pieces, dice_estimate, limits.min_dice))
    return QualityReport(count, lung_fraction, right_px, left_px, right_px / total if total else 0.0,
                         left_px / total if total else 0.0, sides.balance, dice_estimate, flag)


def reasons(count: int, right_px: int, left_px: int, pieces: int, dice_estimate: float | None,
            min_dice: float = MIN_DICE) -> list[str]:
    """The flag's reasons, short and in a fixed order: the hard rules (no lung, one lung, 3+
    pieces), then a low estimated Dice.

    Args:
        count: the mask's components (LungSides.n_components).
        right_px: pixels of the patient's right lung.
        left_px: pixels of the patient's left lung.
        pieces: components of at least min_piece of the lung (LungSides.n_pieces).
        dice_estimate: the estimated Dice, or None (then it flags nothing).
        min_dice: an estimated Dice below it flags.

    Returns:
        the reasons; empty when nothing is wrong.
    """
    if count == 0:
        return ["no lung found"]
    found = []
    if right_px == 0 or left_px == 0:
        found.append("one lung only")  # a single component: one lung, or both lungs run together
    if pieces > MAX_COMPONENTS:
        found.append(f"{MAX_COMPONENTS + 1}+ components")
    if dice_estimate is not None and dice_estimate < min_dice:
        found.append(f"estimated Dice {dice_estimate:.3f}")
    return found


def lung_pixels(mask: np.ndarray, min_piece: float = MIN_PIECE) -> LungSides:
    """Right lung pixels, left lung pixels and components of a mask in a PA X-ray.

    Of the two largest components, the one whose centroid lies further left in the image is the patient's
    right lung; a single component is the right lung when its centroid lies in the image's left
    half, else the left lung.

    Args:
        mask: a binary H x W mask (nonzero is lung).
        min_piece: components below this share of the lung are specks, not counted as pieces.

    Returns:
        the LungSides; all zeros for an empty mask.
    """
    labels, count = postprocess.label_components(mask)
    if count == 0:
        return LungSides(0, 0, 0, 0)
    all_sizes = postprocess.component_sizes(labels, count)
    pieces = int(np.count_nonzero(all_sizes >= min_piece * all_sizes.sum()))
    largest, sizes = postprocess.rank_components(all_sizes, keep=2)
    columns = [centre_column(labels == label) for label in largest]
    del labels  # int32, 4 bytes a pixel: the largest array of this step
    pixels = [int(size) for size in sizes]
    if len(largest) == 2:
        right, left = (0, 1) if columns[0] < columns[1] else (1, 0)
        return LungSides(pixels[right], pixels[left], count, pieces)
    on_image_left = columns[0] < (mask.shape[1] - 1) / 2
    return LungSides(pixels[0], 0, count, pieces) if on_image_left else LungSides(0, pixels[0], count, pieces)


def centre_column(region: np.ndarray) -> float:
    """The mean column of a boolean region's pixels.

    Counted per column, because ndimage.center_of_mass multiplies the whole image by a float64 grid
    (640 MB at 80 Mpx).

    Args:
        region: a boolean H x W image with at least one pixel set.

    Returns:
        the mean column index of its pixels.
    """
    per_column = np.count_nonzero(region, axis=0)
    return float(per_column @ np.arange(region.shape[1], dtype=np.float64) / per_column.sum())


def boundary_uncertainty(probability: np.ndarray, threshold: float = 0.5) -> float | None:
    """Mean of min(p, 1 - p) * 2 over the pixels within BOUNDARY_PX of the edge of
    `probability > threshold` (model size), on either side of it; the image's own border is no edge.

    Args:
        probability: float S x S in [0, 1].
        threshold: the predictor's threshold.

    Returns:
        the mean uncertainty along the edge, in [0, 1]; None when the map has no edge (all lung or none).
    """
    inside = np.asarray(probability) > threshold
    grown = ndimage.binary_dilation(inside, postprocess.EIGHT_CONNECTED, iterations=BOUNDARY_PX)
    shrunk = ndimage.binary_erosion(inside, postprocess.EIGHT_CONNECTED, iterations=BOUNDARY_PX, border_value=1)
    band = grown & ~shrunk
    if not band.any():
        return None
    near = np.asarray(probability, dtype=np.float32)[band]
    return float(np.mean(np.minimum(near, 1 - near) * 2))


# --------------------------------------------------------------------------- the Dice estimate


FEATURES = ("soft_dice", "ambiguous", "edge_uncertainty", "lung_fraction", "balance", "shape_error")
LOG_OF_ONE_MINUS = {"soft_dice"}  # near 1 when sure: the regression sees log(1 - x)
LOG_OF = {"ambiguous", "edge_uncertainty", "shape_error"}  # near 0 when sure: the regression sees log(x)
AMBIGUOUS = (0.1, 0.9)  # a probability in this open range is counted as ambiguous
SHAPE_SIZE = 32  # side of the aligned shape the shape model compares (both lungs' bounding box)
SHAPE_COMPONENTS = 8  # principal shapes kept: enough for lung outlines, too few to copy any one mask
FLOOR = 1e-3  # logs of measures and of 1 - Dice are taken above this
RIDGE = 1e-2  # ridge penalty on the standardised weights: 7 numbers fitted on a few hundred masks


def measures(probability: np.ndarray, mask: np.ndarray, threshold: float, shapes: ShapeModel) -> np.ndarray:
    """The six FEATURES of one prediction.

    Args:
        probability: float S x S lung probabilities.
        mask: the model-size final mask (0/1), made from them.
        threshold: the predictor's.
        shapes: the model's ShapeModel.

    Returns:
        the measures in the order of FEATURES, float64 (edge_uncertainty 0.0 where the map has no edge).
    """
    p = np.asarray(probability, dtype=np.float32)
    lung = np.asarray(mask).astype(bool)
    area = int(lung.sum())
    soft = 2 * float(p[lung].sum()) / max(float(p.sum()) + area, 1.0)
    ambiguous = int(np.count_nonzero((p > AMBIGUOUS[0]) & (p < AMBIGUOUS[1]))) / max(area, 1)
    edge = boundary_uncertainty(p, threshold)
    balance = lung_pixels(lung.astype(np.uint8)).balance
    return np.array([soft, ambiguous, 0.0 if edge is None else edge, area / lung.size, balance, shapes.error(lung)])


def _design(values: np.ndarray) -> np.ndarray:
    """Measures (N x 6) as the regression sees them: the unsure ones on a log scale."""
    columns = []
    for i, name in enumerate(FEATURES):
        column = values[:, i]
        if name in LOG_OF_ONE_MINUS:
            column = np.log(np.maximum(1 - column, FLOOR))
        elif name in LOG_OF:
            column = np.log(np.maximum(column, FLOOR))
        columns.append(column)
    return np.column_stack(columns)


def aligned_shape(mask: np.ndarray, size: int = SHAPE_SIZE) -> np.ndarray:
    """A mask cropped to the bounding box of its lungs and area-resized: position and scale gone, shape kept.

    Args:
        mask: a binary H x W mask (nonzero is lung).
        size: the side of the result.

    Returns:
        size x size float32 in [0, 1]; zeros for an empty mask.
    """
    rows, columns = np.nonzero(np.asarray(mask))
    if len(rows) == 0:
        return np.zeros((size, size), dtype=np.float32)
    crop = np.asarray(mask)[rows.min():rows.max() + 1, columns.min():columns.max() + 1].astype(np.float32)
    return np.asarray(Image.fromarray(crop, mode="F").resize((size, size), Image.Resampling.BOX))  # BOX: area average


@dataclass
class ShapeModel:
    """The principal shapes of a set of lung masks (aligned_shape), for shape_error.

    Args:
        mean: flattened mean shape (SHAPE_SIZE**2).
        components: orthonormal rows (k x SHAPE_SIZE**2).
    """

    mean: np.ndarray
    components: np.ndarray

    @classmethod
    def fit(cls, masks: np.ndarray, components: int = SHAPE_COMPONENTS) -> ShapeModel:
        """The mean and the first `components` principal shapes of a set of masks.

        Args:
            masks: the training masks, N x S x S, 0/1.
            components: how many principal shapes to keep.

        Returns:
            the fitted ShapeModel.
        """
        shapes = np.stack([aligned_shape(mask).ravel() for mask in masks]).astype(np.float64)
        mean = shapes.mean(axis=0)
        _, _, rows = np.linalg.svd(shapes - mean, full_matrices=False)
        return cls(mean, rows[:components])

    def error(self, mask: np.ndarray) -> float:
        """1 - Dice between a mask's aligned shape and its projection on the principal shapes, both cut at 0.5.

        Args:
            mask: a binary mask (nonzero is lung), any size.

        Returns:
            0 for a lung outline like the training masks', up to 1 for none.
        """
        shape = aligned_shape(mask).ravel().astype(np.float64)
        nearest = self.mean + ((shape - self.mean) @ self.components.T) @ self.components
        ours, plausible = shape > 0.5, nearest > 0.5
        total = int(ours.sum() + plausible.sum())
        return 1.0 - 2 * int((ours & plausible).sum()) / total if total else 1.0

    def to_dict(self) -> dict:
        """The model as plain lists (rounded to 6 decimals), for a checkpoint or an export's JSON.

        Returns:
            {"mean": ..., "components": ...}, read back by from_dict.
        """
        return {"mean": self.mean.round(6).tolist(), "components": self.components.round(6).tolist()}

    @classmethod
    def from_dict(cls, stored: dict) -> ShapeModel:
        """The model to_dict stored.

        Args:
            stored: to_dict's dict.

        Returns:
            the ShapeModel, its arrays float64.
        """
        return cls(np.asarray(stored["mean"], dtype=np.float64), np.asarray(stored["components"], dtype=np.float64))


@dataclass
class DiceEstimator:
    """Expected Dice of a prediction from its measures; fitted per model (fit), stored with it
    (to_dict / from_dict: plain lists, so TorchScript and ONNX exports carry it as JSON).

    Args:
        shapes: the training masks' principal shapes.
        centre: the mean of each design column, for standardisation.
        scale: the standard deviation of each design column, for standardisation.
        weights: one per column, then the intercept.
        calibration: how it was fitted (images, draws, the fit's own error), for the record.
    """

    shapes: ShapeModel
    centre: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    calibration: dict

    @classmethod
    def fit(cls, values: np.ndarray, dice: np.ndarray, shapes: ShapeModel, calibration: dict | None = None) -> DiceEstimator:
        """Ridge fit of log(1 - dice) on the standardised design of `values`.

        Args:
            values: the measures of N predictions, N x 6 (measures, in the order of FEATURES).
            dice: their Dice against the true masks (N,).
            shapes: the model's ShapeModel (the one the measures used).
            calibration: how the data were made (images, draws), for the record; n_masks and fit_mae are added.

        Returns:
            the fitted DiceEstimator.
        """
        design = _design(np.asarray(values, dtype=np.float64))
        centre, scale = design.mean(axis=0), design.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)  # a constant column carries no weight
        x = np.column_stack([(design - centre) / scale, np.ones(len(design))])
        y = np.log(np.maximum(1 - np.asarray(dice, dtype=np.float64), FLOOR))
        penalty = RIDGE * len(x) * np.diag([1.0] * len(FEATURES) + [0.0])  # the intercept is not shrunk
        weights = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        estimator = cls(shapes, centre, scale, weights, dict(calibration or {}))
        fitted = estimator.from_measures(values)
        estimator.calibration |= {"n_masks": int(len(values)), "fit_mae": round(float(np.mean(np.abs(fitted - dice))), 4)}
        return estimator

    def from_measures(self, values: np.ndarray) -> np.ndarray:
        """Expected Dice from measures.

        Args:
            values: measures, N x 6 (or one row of 6).

        Returns:
            the expected Dice (N,), in [0, 1].
        """
        design = (_design(np.atleast_2d(np.asarray(values, dtype=np.float64))) - self.centre) / self.scale
        return np.clip(1 - np.exp(design @ self.weights[:-1] + self.weights[-1]), 0.0, 1.0)

    def __call__(self, probability: np.ndarray, mask: np.ndarray, threshold: float) -> float:
        """The expected Dice of one model-size prediction.

        Args:
            probability: float S x S lung probabilities.
            mask: the model-size final mask (0/1), made from them.
            threshold: the predictor's.

        Returns:
            the expected Dice, in [0, 1].
        """
        return float(self.from_measures(measures(probability, mask, threshold, self.shapes))[0])

    def to_dict(self) -> dict:
        """The estimator as plain lists, for a checkpoint or an export's JSON.

        Returns:
            its FEATURES, shapes, centre, scale, weights and calibration, read back by from_dict.
        """
        return {"features": list(FEATURES), "shapes": self.shapes.to_dict(), "centre": self.centre.tolist(),
                "scale": self.scale.tolist(), "weights": self.weights.tolist(), "calibration": dict(self.calibration)}

    @classmethod
    def from_dict(cls, stored: dict | None) -> DiceEstimator | None:
        """The estimator a model file stores.

        Args:
            stored: to_dict's dict, as the model file holds it; None or empty: none stored.

        Returns:
            the DiceEstimator, or None for a model saved without one (or with measures this version does not compute).
        """
        if not stored or list(stored.get("features", [])) != list(FEATURES):
            return None
        return cls(ShapeModel.from_dict(stored["shapes"]), np.asarray(stored["centre"]), np.asarray(stored["scale"]),
                   np.asarray(stored["weights"]), dict(stored.get("calibration", {})))


NO_ESTIMATOR = ("{model}: this model carries no Dice calibration (it was trained before lungseg estimated "
                "Dice), so dice_estimate is left empty and only the hard rules flag; retrain it "
                "(dvc repro train), or fit one on labelled X-rays: lungseg calibrate MODEL --data DIR --out DIR")
