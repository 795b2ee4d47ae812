"""Quality flags for one predicted lung mask: which predictions a user should look at twice.

A model asked about an X-ray unlike its training images still draws a mask; nothing in the mask
itself says it is wrong. These checks look for what a chest X-ray's lungs cannot be (none, one,
three, far too much or too little of the image, one lung a fraction of the other) and for a model
that is unsure where it draws the edge. They say "look at this one", not "this one is wrong".

Lung sides follow the PA convention of lungseg.predict: the patient's RIGHT lung is the one on
the image's LEFT, counted over the two largest 8-connected components of the final mask.

Memory: the mask may be 10000 x 8000; it is labelled once (int32, lungseg.postprocess) and never
copied as float. The probability map is the model-size one (S x S float32), never the native one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from lungseg import postprocess

# Chosen on real data, never on a test split (BENCHMARKS.md, "Quality flags"): the lung fraction
# range spans the true masks of the Kaggle-layout sample and of the COVID-19 development set with
# a margin; the uncertainty limit trades recall of poor masks on the development set against
# flags on validation images, which are mostly good.
LUNG_FRACTION_RANGE = (0.07, 0.60)  # share of the image covered by lung, both lungs together
BALANCE_MIN = 0.5  # smaller lung / larger lung; the right lung is usually ~10-20% larger than the left
UNCERTAINTY_MAX = 0.4  # mean of min(p, 1 - p) * 2 over the model-size boundary band
MAX_COMPONENTS = 2  # two lungs; more pieces are flagged "3+ components"
MIN_PIECE = 0.01  # a component below this share of the lung is a speck, not a piece: not counted for the flag
BOUNDARY_PX = 1  # the band is the pixels within this many pixels of the edge, on either side

COLUMNS = ("right_share", "left_share", "balance", "uncertainty", "flag")  # appended to predictions.csv
DECIMALS = 4


class LungSides(NamedTuple):
    right_px: int  # the patient's right lung: the image's left side
    left_px: int
    n_components: int
    n_pieces: int  # components of at least MIN_PIECE of the lung (what "3+ components" counts)


@dataclass(frozen=True)
class QualityReport:
    """One image's quality measures and its flag.

    n_components: 8-connected components of the final mask. lung_fraction: lung pixels / all pixels.
    right_px, left_px: pixels of the patient's right and left lung (PA convention).
    right_share, left_share: each lung's pixels / all pixels of the image.
    balance: smaller lung / larger lung, 0.0 unless both lungs are found.
    uncertainty: mean of min(p, 1 - p) * 2 near the model-size boundary (0 sure, 1 a coin toss);
        None without a probability map or without a boundary in it.
    flag: "" when nothing is wrong, else the reasons joined by "; ".
    """

    n_components: int
    lung_fraction: float
    right_px: int
    left_px: int
    right_share: float
    left_share: float
    balance: float
    uncertainty: float | None
    flag: str

    def columns(self) -> dict:
        """The values of COLUMNS, rounded for the table."""
        values = asdict(self)
        return {name: values[name] if name == "flag" or values[name] is None else round(values[name], DECIMALS)
                for name in COLUMNS}


def assess(mask: np.ndarray, probability: np.ndarray | None = None, threshold: float = 0.5) -> QualityReport:
    """The quality report of one prediction.

    mask: the final native-size binary mask (uint8 0/1 or bool, H x W), as written to masks/.
    probability: the model-size lung probabilities (float32 S x S in [0, 1]) the mask was made
        from, or None to skip the boundary check.
    threshold: the probability above which the model calls a pixel lung (the predictor's).
    """
    right_px, left_px, count, pieces = lung_pixels(mask)
    total = mask.shape[0] * mask.shape[1]
    lung_fraction = int(np.count_nonzero(mask)) / total if total else 0.0
    larger, smaller = max(right_px, left_px), min(right_px, left_px)
    balance = smaller / larger if smaller else 0.0
    uncertainty = boundary_uncertainty(probability, threshold) if probability is not None else None
    flag = "; ".join(reasons(count, right_px, left_px, lung_fraction, balance, uncertainty, pieces))
    return QualityReport(count, lung_fraction, right_px, left_px, right_px / total if total else 0.0,
                         left_px / total if total else 0.0, balance, uncertainty, flag)


def reasons(count: int, right_px: int, left_px: int, lung_fraction: float, balance: float,
            uncertainty: float | None, pieces: int,
            fraction_range: tuple[float, float] = LUNG_FRACTION_RANGE, uncertainty_max: float = UNCERTAINTY_MAX) -> list[str]:
    """The flag's reasons, in a fixed order. No lung and one lung are always flagged.

    pieces: components of at least MIN_PIECE of the lung (LungSides.n_pieces).
    fraction_range, uncertainty_max: the limits (bench/flag_choice.py tries others).
    """
    if count == 0:
        return ["no lung found"]
    found = []
    if right_px == 0 or left_px == 0:
        found.append("one lung only")  # a single component: one lung, or both lungs run together
    if pieces > MAX_COMPONENTS:
        found.append(f"{MAX_COMPONENTS + 1}+ components")
    low, high = fraction_range
    if not low <= lung_fraction <= high:
        found.append(f"lung fraction {lung_fraction:.2f} outside {low:.2f}-{high:.2f}")
    if right_px and left_px and balance < BALANCE_MIN:
        found.append(f"left/right balance {balance:.2f}")
    if uncertainty is not None and uncertainty > uncertainty_max:
        found.append(f"uncertain boundary {uncertainty:.2f}")
    return found


def lung_pixels(mask: np.ndarray) -> LungSides:
    """Right lung pixels, left lung pixels and components of a mask in a PA X-ray: of the two
    largest components, the one whose centroid lies further left in the image is the patient's
    right lung; a single component is the right lung when its centroid lies in the image's left
    half, else the left lung."""
    labels, count = postprocess.label_components(mask)
    if count == 0:
        return LungSides(0, 0, 0, 0)
    all_sizes = postprocess.component_sizes(labels, count)
    pieces = int(np.count_nonzero(all_sizes >= MIN_PIECE * all_sizes.sum()))
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
    """The mean column of a boolean region's pixels. Counted per column, because
    ndimage.center_of_mass multiplies the whole image by a float64 grid (640 MB at 80 Mpx)."""
    per_column = np.count_nonzero(region, axis=0)
    return float(per_column @ np.arange(region.shape[1], dtype=np.float64) / per_column.sum())


def boundary_uncertainty(probability: np.ndarray, threshold: float = 0.5) -> float | None:
    """Mean of min(p, 1 - p) * 2 over the pixels within BOUNDARY_PX of the edge of
    `probability > threshold` (model size), on either side of it; the image's own border is no
    edge. None when the map has no edge (all lung or none).

    probability: float S x S in [0, 1]. threshold: the predictor's threshold.
    """
    inside = np.asarray(probability) > threshold
    grown = ndimage.binary_dilation(inside, postprocess.EIGHT_CONNECTED, iterations=BOUNDARY_PX)
    shrunk = ndimage.binary_erosion(inside, postprocess.EIGHT_CONNECTED, iterations=BOUNDARY_PX, border_value=1)
    band = grown & ~shrunk
    if not band.any():
        return None
    near = np.asarray(probability, dtype=np.float32)[band]
    return float(np.mean(np.minimum(near, 1 - near) * 2))
