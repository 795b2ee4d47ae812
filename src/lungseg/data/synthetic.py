"""Deterministic synthetic chest X-ray phantoms, written in the Kaggle lung-segmentation layout.

The real data (Montgomery + Shenzhen, Kaggle "Chest X-ray lungs segmentation") cannot be
downloaded everywhere, so the default pipeline trains on phantoms that the real loading code
reads unchanged:

    OUT/MetaData.csv                               id,gender,age,county,ptb,remarks
    OUT/Chest-X-Ray/Chest-X-Ray/image/<id>.png     8-bit greyscale
    OUT/Chest-X-Ray/Chest-X-Ray/mask/<id>.png      8-bit, 0 = background, 255 = lung

A phantom is a "density" map (0 = air, about 0.6 = soft tissue, higher = bone), built in
normalised coordinates (x, y in [0, 1], y pointing down, image left = patient's right) and then
tone-mapped to 8 bits:

* body: a broad soft-edged ellipse of soft tissue with a random linear thickness gradient, on
  dark air;
* lungs: two dark air-filled fields, each a polar shape r(theta) = 1 + low-order random Fourier
  terms, narrowing towards the apex, with a pointed lower-lateral (costophrenic) corner; the
  patient's right lung (image left) is a little larger;
* heart: a bright tilted ellipse over the lower medial part of the image-right lung; the mask is
  both lung fields minus the heart;
* bones: spine (vertical band with vertebral texture), two clavicles across the apices, 8-10
  curved ribs per side crossing the lung fields;
* noise: smooth low-frequency "vessel" texture in the lungs, smooth low-frequency density drift,
  white quantum noise;
* tone: random contrast, offset and gamma per image.

Two sites ("PhantomA", "PhantomB", the `county` column) differ like the two real hospitals: B is
noisier, with brighter soft tissue and lower contrast. Cases with ptb=1 get one or two bright,
patchy opacities inside a lung field (still lung in the mask). The ribs, heart, opacities,
gradient and drift make a single global intensity threshold a poor segmenter (best threshold Dice
about 0.7), so a model has to learn the shape. Every image's random generator comes from
(seed, index) only, so a dataset is byte-identical whatever the number of worker processes.

Hard cases (HardCases: a fraction of images each, 0 = none) carry what breaks models trained on
one hospital's X-rays: burned-in text and L/R markers (bright, anywhere, lungs included), low
contrast (a grey, washed-out picture), a dense consolidation whitening part of a lung (still lung
in the mask), a rotated patient, and a cropped field that cuts through the lungs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
from PIL import Image

from lungseg.core.config import SyntheticConfig
from lungseg.core.io import atomic_path, worker_pool

METADATA_COLUMNS = ["id", "gender", "age", "county", "ptb", "remarks"]
METADATA_NAME = "MetaData.csv"
PAIR_ROOT = Path("Chest-X-Ray", "Chest-X-Ray")
SITES = ("PhantomA", "PhantomB")
SITE_B_PROBABILITY = 0.4
PTB_PROBABILITY = 0.4
MAX_ASPECT = 4 / 3  # height/width stays within [3/4, 4/3], like real radiographs
MIN_SIZE_LIMIT = 16
# zlib level 1: about 2x faster than level 6 on these noisy images for ~15% more bytes.
PNG_COMPRESS_LEVEL = 1
TONE_LEVELS = 4096  # quantisation steps of the gamma lookup table (finer than the 8-bit output)
LOW_CONTRAST_SPAN = (0.35, 0.55)  # a low-contrast image uses only this share of the 8-bit range
ROTATE_DEGREES = (6.0, 15.0)  # a rotated patient: this many degrees either way
CROP_SIDE = 0.22  # a cropped field loses up to this share of each side (lungs start about 0.1 in)
MARK_LEVELS = (225, 255)  # burned-in text is (near) white


@dataclass(frozen=True)
class HardCases:
    """Share of images (each in [0, 1], drawn independently) given each hard case.

    Fields with a comment beside them are described there; the others:

    Attributes:
        low_contrast: a grey, washed-out picture.
        rotated: a patient rotated about the image centre.
    """

    text: float = 0.0  # burned-in text and L/R markers
    low_contrast: float = 0.0
    dense_opacity: float = 0.0  # a dense consolidation inside a lung
    rotated: float = 0.0
    cropped: float = 0.0  # the field cuts through the lungs

    @classmethod
    def of(cls, config: SyntheticConfig) -> HardCases:
        """The fractions of a SyntheticConfig.

        Args:
            config: params.yaml's synthetic section (its <case>_fraction fields).

        Returns:
            The hard cases.
        """
        return cls(**{case: getattr(config, f"{case}_fraction") for case in vars(cls())})

    def draw(self, rng: np.random.Generator) -> frozenset[str]:
        """Which hard cases one image gets.

        A fraction of 0 draws nothing, so data made without hard cases stays byte-identical to what it was
        before they existed.

        Args:
            rng: the image's random generator.

        Returns:
            The names of the hard cases drawn (fields of HardCases).
        """
        return frozenset(name for name, fraction in vars(self).items() if fraction > 0 and rng.random() < fraction)


@dataclass(frozen=True)
class SiteStyle:
    """How one (phantom) hospital's radiographs look."""

    tissue: float  # soft-tissue density
    lung_air: float  # how much darker aerated lung is than the tissue around it
    noise_sigma: float  # white quantum noise, in density units
    gain: tuple[float, float]  # range of the display contrast gain
    offset: tuple[float, float]  # range of the density shown as black


SITE_STYLES = {
    "PhantomA": SiteStyle(tissue=0.58, lung_air=0.36, noise_sigma=0.010, gain=(1.05, 1.25), offset=(0.02, 0.08)),
    "PhantomB": SiteStyle(tissue=0.66, lung_air=0.29, noise_sigma=0.018, gain=(0.80, 1.00), offset=(-0.10, -0.02)),
}


# ----------------------------------------------------------------------------- geometry helpers


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates in [0, 1]: y is a column (H, 1), x a row (1, W).

    Expressions in x and y then broadcast to full images without materialising meshgrids.

    Attributes:
        height: image height in px (H).
        width: image width in px (W).
        y: float32 (H, 1) row coordinates, pointing down.
        x: float32 (1, W) column coordinates.
    """

    height: int
    width: int
    y: np.ndarray
    x: np.ndarray

    @classmethod
    def of(cls, height: int, width: int) -> Grid:
        """The grid of an image.

        Args:
            height: image height in px.
            width: image width in px.

        Returns:
            The grid.
        """
        y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
        x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
        return cls(height, width, y, x)

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Row and column slices covering the normalised box [x0, x1] x [y0, y1] (clipped to the image).

        Shapes are evaluated only inside their box: that is what keeps big images fast.

        Args:
            x0: left edge, in [0, 1] coordinates.
            x1: right edge.
            y0: top edge.
            y1: bottom edge.

        Returns:
            (rows, cols) slices.
        """
        rows = slice(_pixel(y0, self.height, np.floor), _pixel(y1, self.height, np.ceil))
        cols = slice(_pixel(x0, self.width, np.floor), _pixel(x1, self.width, np.ceil))
        return rows, cols


def _pixel(coordinate: float, size: int, rounding) -> int:
    return int(min(max(rounding(coordinate * size), 0), size))


@dataclass(frozen=True)
class Field:
    """A shape on a window of the image: `soft` in [0, 1] for the picture, `inside` for the mask.

    Attributes:
        rows: the window's row slice (Grid.window).
        cols: its column slice.
        soft: float32 values in [0, 1] on the window, for the picture.
        inside: booleans on the window, for the mask.
    """

    rows: slice
    cols: slice
    soft: np.ndarray
    inside: np.ndarray


def _ellipse_coords(grid: Grid, rows: slice, cols: slice, centre, half_axes, angle: float):
    """Coordinates (u, v) in a rotated ellipse's frame, scaled so the ellipse is u^2 + v^2 = 1."""
    dx = grid.x[:, cols] - np.float32(centre[0])
    dy = grid.y[rows] - np.float32(centre[1])
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (dx * (cos / half_axes[0])) + (dy * (sin / half_axes[0]))
    v = (dy * (cos / half_axes[1])) - (dx * (sin / half_axes[1]))
    return u, v


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Zero-mean noise varying over ~1/cells of the image: a small random array upsampled with
    PIL bicubic resize. Resizing is linear and separable, so PIL is asked only for the two 1-D
    interpolation matrices and the full-size product is one small matrix multiply (same values
    to ~1e-6, about 25x faster than resizing the 2-D array itself)."""
    cells_x = max(2, round(cells * width / max(height, 1)))
    small = rng.standard_normal((cells, cells_x)).astype(np.float32)
    return _bicubic_matrix(height, cells) @ small @ _bicubic_matrix(width, cells_x).T


def _bicubic_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix that PIL-bicubic-resizes a length-n_in signal to length n_out."""
    identity = Image.fromarray(np.eye(n_in, dtype=np.float32))
    return np.asarray(identity.resize((n_in, max(n_out, 1)), Image.BICUBIC))[:n_out]


# Quantiles of N(0, 1) at (k + 0.5) / 256: indexing this with random bytes draws (discretised)
# Gaussian noise about 3x faster than Generator.standard_normal, and white noise is the single
# biggest full-image cost. 256 levels are far finer than the 8-bit output can show.
_GAUSSIAN_BYTE_TABLE = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32)


def _gaussian_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    samples = np.frombuffer(rng.bytes(shape[0] * shape[1]), np.uint8).reshape(shape)
    return _GAUSSIAN_BYTE_TABLE[samples]


# ----------------------------------------------------------------------------- anatomy


def _body_density(rng: np.random.Generator, grid: Grid, style: SiteStyle) -> np.ndarray:
    """Soft tissue as a broad ellipse filling most of the frame, dark air in the corners; a
    linear thickness gradient in a random direction (patient rotation, habitus, beam heel)."""
    cx, cy = 0.5 + rng.normal(0, 0.015), rng.uniform(0.55, 0.62)
    half_w, half_h = rng.uniform(0.53, 0.62), rng.uniform(0.65, 0.78)
    # 1 - rho^2 grows smoothly inwards: a soft edge whose brightness rises with body thickness.
    # The squares are 1-D (a row plus a column), so this is a single full-image addition.
    across = ((grid.x - np.float32(cx)) / np.float32(half_w)) ** 2
    down = ((grid.y - np.float32(cy)) / np.float32(half_h)) ** 2
    rho2 = across + down
    body = np.clip((1 - rho2) * 4, 0, 1)
    direction, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.06, 0.22)
    gradient = (grid.x - 0.5) * np.float32(strength * np.cos(direction)) + (
        (grid.y - 0.5) * np.float32(strength * np.sin(direction)) + np.float32(style.tissue)
    )
    body *= gradient
    body += np.float32(0.03)  # even "air" outside the patient is not perfectly black
    return body


@dataclass(frozen=True)
class LungShape:
    """A lung outline: a polar curve r(theta) in the frame of a rotated ellipse, narrowed towards the apex.

    Used both per pixel and on a 1-D ring of angles (for its bounding box). Fields with a comment beside them
    are described there; the others:

    Attributes:
        centre: the ellipse's centre (x, y), in [0, 1] coordinates.
        half_axes: its half axes (across, down), in [0, 1] coordinates.
        angle: its rotation, in radians.
    """

    side: int  # -1: image left (patient's right), +1: image right
    centre: tuple[float, float]
    half_axes: tuple[float, float]
    angle: float
    taper: float  # how much narrower the apex is than the base
    harmonics: np.ndarray  # (4, 2) cos/sin coefficients of harmonics 1..4
    corner: float  # size of the pointed costophrenic corner
    medial: float  # flattening of the medial border
    base: float  # flattening of the base

    def radius(self, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """r(theta) from cos/sin of the polar angle (no arctan: it costs more than all the rest).

        Args:
            cos: cos(theta), any shape.
            sin: sin(theta), the same shape.

        Returns:
            The radius in units of the half axes, at most MAX_LUNG_RADIUS.
        """
        radius = np.ones_like(cos)
        cos_k, sin_k = cos, sin
        for k, (a, b) in enumerate(self.harmonics):
            radius += a * cos_k + b * sin_k
            if k + 1 < len(self.harmonics):  # angle addition: (k+1)theta from k*theta
                cos_k, sin_k = cos_k * cos - sin_k * sin, sin_k * cos + cos_k * sin
        # lateral is -x for the image-left lung, +x for the other; "lower" is +y (y points down)
        toward_corner = np.maximum((cos * self.side + sin) * np.float32(0.7071), 0)
        corner = toward_corner * toward_corner
        corner = corner * corner * corner  # ^6: a narrow spike, i.e. a pointed corner
        medial = np.maximum(cos * -self.side, 0)
        below = np.maximum(sin, 0)  # a flatter base: the diaphragm dome between the two corners
        radius += np.float32(self.corner) * corner - np.float32(self.medial) * medial * medial
        radius -= np.float32(self.base) * below * below
        return np.minimum(radius, MAX_LUNG_RADIUS)

    def untaper(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Map ellipse-frame u to the untapered frame: wider at the base (v > 0), narrower above.

        Args:
            u: across coordinate in the ellipse's frame.
            v: down coordinate in the ellipse's frame.

        Returns:
            u in the untapered frame.
        """
        return u / (1 + np.float32(self.taper) * np.clip(v, -MAX_LUNG_RADIUS, MAX_LUNG_RADIUS))

    def bounding_box(self) -> tuple[float, float, float, float]:
        """The box around the outline, traced on a ring of angles, plus a small margin.

        Returns:
            (x0, x1, y0, y1) in [0, 1] coordinates (not clipped to the image).
        """
        theta = np.linspace(0, 2 * np.pi, 720, endpoint=False, dtype=np.float32)
        r = self.radius(np.cos(theta), np.sin(theta))
        v = r * np.sin(theta)
        u = r * np.cos(theta) * (1 + np.float32(self.taper) * np.clip(v, -MAX_LUNG_RADIUS, MAX_LUNG_RADIUS))
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        x = self.centre[0] + u * self.half_axes[0] * cos - v * self.half_axes[1] * sin
        y = self.centre[1] + u * self.half_axes[0] * sin + v * self.half_axes[1] * cos
        margin = 0.02 * max(self.half_axes)
        return float(x.min()) - margin, float(x.max()) + margin, float(y.min()) - margin, float(y.max()) + margin


MAX_LUNG_RADIUS = 1.5  # in units of the lung's half axes


def _draw_lung_shape(rng: np.random.Generator, side: int) -> LungShape:
    """Random lung geometry; the patient's right lung (image left, side -1) is a little larger."""
    larger = 1.07 if side < 0 else 1.0
    return LungShape(
        side=side,
        centre=(0.5 + side * rng.uniform(0.17, 0.22), rng.uniform(0.44, 0.50)),
        half_axes=(rng.uniform(0.13, 0.16) * larger, rng.uniform(0.23, 0.28) * larger),
        angle=rng.uniform(-0.08, 0.08),
        taper=rng.uniform(0.15, 0.3),
        harmonics=rng.normal(0, 0.04, size=(4, 2)).astype(np.float32),
        corner=rng.uniform(0.18, 0.32),
        medial=rng.uniform(0.05, 0.15),
        base=rng.uniform(0.1, 0.2),
    )


def _lung_field(shape: LungShape, grid: Grid) -> Field:
    """Air fraction and inside mask of one lung, evaluated only inside its bounding box."""
    rows, cols = grid.window(*shape.bounding_box())
    u, v = _ellipse_coords(grid, rows, cols, shape.centre, shape.half_axes, shape.angle)
    u = shape.untaper(u, v)
    rho = np.sqrt(u * u + v * v) + np.float32(1e-6)
    depth = shape.radius(u / rho, v / rho) - rho  # > 0 inside; about 1 in the middle
    # Edge blurred over a few percent of the lung size; air thickest in the middle of the field.
    air = np.clip(depth * 12, 0, 1) * np.clip(depth + 0.55, 0, 1)
    return Field(rows, cols, air, depth > 0)


def _heart(rng: np.random.Generator, grid: Grid) -> Field:
    """Tilted ellipse over the lower medial part of the image-right lung (patient's left)."""
    centre = (0.5 + rng.uniform(0.06, 0.10), rng.uniform(0.61, 0.67))
    half_axes = (rng.uniform(0.15, 0.19), rng.uniform(0.10, 0.13))
    angle = rng.uniform(0.15, 0.5)
    extent = max(half_axes) * 1.1
    rows, cols = grid.window(centre[0] - extent, centre[0] + extent, centre[1] - extent, centre[1] + extent)
    u, v = _ellipse_coords(grid, rows, cols, centre, half_axes, angle)
    rho2 = u * u + v * v
    return Field(rows, cols, np.clip((1 - rho2) * 6, 0, 1), rho2 < 1)


def _lung_air_and_mask(lungs: list[Field], heart: Field, shape) -> tuple[np.ndarray, np.ndarray]:
    """Full-image air fraction and lung mask; the heart hides the lung behind it in both."""
    air = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    for lung in lungs:
        np.maximum(air[lung.rows, lung.cols], lung.soft, out=air[lung.rows, lung.cols])
        mask[lung.rows, lung.cols] |= lung.inside
    air[heart.rows, heart.cols] *= 1 - heart.soft
    mask[heart.rows, heart.cols] &= ~heart.inside
    return air, mask


def _add_lungs(
    rng: np.random.Generator, density: np.ndarray, air: np.ndarray, lungs: list[Field], style: SiteStyle
) -> None:
    """Darken the lung fields; smooth "vessel" texture makes the air uneven. Work only on the box
    around both lungs: there is no air anywhere else."""
    rows = slice(min(lung.rows.start for lung in lungs), max(lung.rows.stop for lung in lungs))
    cols = slice(min(lung.cols.start for lung in lungs), max(lung.cols.stop for lung in lungs))
    box = air[rows, cols]
    vessels = _smooth_noise(rng, *box.shape, cells=int(rng.integers(10, 18)))
    depth = np.float32(style.lung_air * rng.uniform(0.85, 1.15))
    vessels *= np.float32(0.15)
    vessels += np.float32(1)
    vessels *= box
    vessels *= depth
    density[rows, cols] -= vessels


def _add_heart(rng: np.random.Generator, density: np.ndarray, heart: Field) -> None:
    """Heart is denser than the mediastinal soft tissue around it."""
    density[heart.rows, heart.cols] += np.float32(rng.uniform(0.03, 0.08)) * heart.soft


def _add_opacities(rng: np.random.Generator, density: np.ndarray, mask: np.ndarray, grid: Grid) -> None:
    """One or two bright patchy consolidations centred inside the lung mask (still lung in it):
    the hard cases a threshold gets wrong."""
    lung_pixels = np.flatnonzero(mask)
    for _ in range(int(rng.integers(1, 3))):
        if lung_pixels.size == 0:
            return
        row, col = divmod(int(lung_pixels[rng.integers(lung_pixels.size)]), grid.width)
        cy, cx = (row + 0.5) / grid.height, (col + 0.5) / grid.width
        radius = rng.uniform(0.03, 0.07)
        rows, cols = grid.window(cx - 2.5 * radius, cx + 2.5 * radius, cy - 2.5 * radius, cy + 2.5 * radius)
        u, v = _ellipse_coords(grid, rows, cols, (cx, cy), (radius, radius * rng.uniform(0.7, 1.4)), 0.0)
        blob = np.exp(-0.5 * (u * u + v * v))
        patches = np.clip(0.6 + 0.5 * _smooth_noise(rng, *blob.shape, cells=5), 0, 1)
        density[rows, cols] += np.float32(rng.uniform(0.18, 0.30)) * blob * patches


def _add_dense_opacity(rng: np.random.Generator, density: np.ndarray, mask: np.ndarray, grid: Grid) -> None:
    """A large consolidation in the lower half of a lung, dense enough to look like soft tissue
    (lung = dark is then wrong there); the mask still covers it."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return
    middle = (rows[0] + rows[-1]) // 2
    lower = np.flatnonzero(mask[middle:])  # never empty: the last lung row lies below the middle
    row, col = divmod(int(lower[rng.integers(lower.size)]), grid.width)
    cy, cx = (row + middle + 0.5) / grid.height, (col + 0.5) / grid.width
    radius = rng.uniform(0.07, 0.12)
    window = grid.window(cx - 1.6 * radius, cx + 1.6 * radius, cy - 1.6 * radius, cy + 1.6 * radius)
    u, v = _ellipse_coords(grid, *window, (cx, cy), (radius, radius * rng.uniform(0.8, 1.4)), rng.uniform(0, np.pi))
    blob = np.clip((1 - (u * u + v * v)) * 3, 0, 1)
    patches = np.clip(0.8 + 0.3 * _smooth_noise(rng, *blob.shape, cells=4), 0, 1)
    density[window] += np.float32(rng.uniform(0.25, 0.36)) * blob * patches


def _add_spine(rng: np.random.Generator, density: np.ndarray, grid: Grid) -> None:
    """Vertical band at the midline with a periodic vertebra / disc-space pattern."""
    centre, half_width, edge = 0.5 + rng.normal(0, 0.008), rng.uniform(0.035, 0.05), 0.012
    rows, cols = grid.window(centre - half_width - edge, centre + half_width + edge, 0, 1)
    across = np.clip((half_width - np.abs(grid.x[:, cols] - centre)) / edge, 0, 1)
    vertebrae = rng.uniform(15, 20)
    along = 0.75 + 0.25 * np.cos(np.float32(2 * np.pi) * (grid.y * np.float32(vertebrae) + np.float32(rng.random())))
    density[rows, cols] += np.float32(rng.uniform(0.08, 0.14)) * along * across


def _add_clavicles(rng: np.random.Generator, density: np.ndarray, grid: Grid) -> None:
    """Two bright bands near the top, rising from the midline outwards across the lung apices."""
    for side in (-1, 1):
        x0, x1 = (0.08, 0.5) if side < 0 else (0.5, 0.92)
        medial_y, lateral_y = rng.uniform(0.17, 0.23), rng.uniform(0.09, 0.15)
        thickness = rng.uniform(0.015, 0.025)
        rows, cols = grid.window(x0, x1, 0.0, 0.32)
        offset = np.abs(grid.x[:, cols] - 0.5)  # distance from the midline, 1-D: cheap
        t = np.clip((offset - 0.04) / 0.36, 0, 1)
        centre_y = medial_y + (lateral_y - medial_y) * t - np.float32(rng.uniform(0.0, 0.03)) * np.sin(np.pi * t)
        ends = np.clip((offset - 0.03) / 0.02, 0, 1) * np.clip((0.42 - offset) / 0.03, 0, 1)
        band = np.clip(1 - np.abs(grid.y[rows] - centre_y) / np.float32(thickness), 0, 1)
        density[rows, cols] += np.float32(rng.uniform(0.12, 0.2)) * band * ends


def _add_ribs(rng: np.random.Generator, density: np.ndarray, grid: Grid) -> None:
    """8-10 thin curved arcs per side: a periodic band pattern along a parabolic coordinate, so
    all ribs of a side cost one cosine instead of one distance field each."""
    top, bottom = rng.uniform(0.11, 0.16), rng.uniform(0.66, 0.74)
    for side in (-1, 1):
        x0, x1 = (0.0, 0.5) if side < 0 else (0.5, 1.0)
        rows, cols = grid.window(x0, x1, top - 0.05, bottom + 0.35)
        offset = np.abs(grid.x[:, cols] - 0.5)
        # posterior rib shape: rise briefly from the spine, then curve down laterally
        drop = -rng.uniform(0.2, 0.4) * offset + rng.uniform(1.2, 1.9) * offset * offset
        span = np.float32(bottom - top)
        t = (grid.y[rows] - np.float32(top)) / span - drop / span  # 0 at the top rib, 1 at the last
        # phase = ribs * t * (1 + c - c t): ribs a little closer together higher up
        ribs, crowding = int(rng.integers(8, 11)), rng.uniform(0.0, 0.25)
        phase = t * np.float32(-ribs * crowding)
        phase += np.float32(ribs * (1 + crowding))
        phase *= t
        # Rib centres at half-integer phases, gaps at integers; clipping the phase to [0, ribs]
        # turns everything above the first and below the last rib into "gap" at no extra cost.
        np.clip(phase, 0, ribs, out=phase)
        band = np.cos(np.float32(2 * np.pi) * phase)
        band *= np.float32(-2.5)
        band -= np.float32(1.5)
        np.clip(band, 0, 1, out=band)  # thin: about a quarter of each period
        ends = np.clip((offset - 0.04) / 0.04, 0, 1) * np.clip((0.46 - offset) / 0.06, 0, 1)
        band *= ends * np.float32(rng.uniform(0.07, 0.12))
        density[rows, cols] += band


def _add_noise(rng: np.random.Generator, density: np.ndarray, style: SiteStyle) -> None:
    """Low-frequency density drift (scatter, uneven exposure) plus white quantum noise. White
    noise is kept moderate: it sets the PNG size."""
    drift = _smooth_noise(rng, *density.shape, cells=int(rng.integers(4, 8)))
    density += np.float32(rng.uniform(0.03, 0.06)) * drift
    white = _gaussian_noise(rng, density.shape)
    white *= np.float32(style.noise_sigma)
    density += white


def _tone_map(rng: np.random.Generator, density: np.ndarray, style: SiteStyle, low_contrast: bool = False) -> np.ndarray:
    """Random contrast, black level and gamma per image, then 8 bits. Gamma goes through a
    lookup table on a finely quantised copy: far cheaper than a full-image power. Low contrast
    squeezes the output into a grey band of the 8-bit range."""
    gain, black = rng.uniform(*style.gain), rng.uniform(*style.offset)
    gamma = rng.uniform(0.8, 1.25)
    span, floor = 1.0, 0.0
    if low_contrast:
        span = rng.uniform(*LOW_CONTRAST_SPAN)
        floor = rng.uniform(0.1, 0.9 - span)
    levels = np.clip((density - np.float32(black)) * np.float32(gain * (TONE_LEVELS - 1)), 0, TONE_LEVELS - 1)
    table = np.round(255 * (floor + span * np.linspace(0, 1, TONE_LEVELS) ** gamma)).astype(np.uint8)
    return table[levels.astype(np.uint16)]


def _rotate(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The patient rotated about the image centre; corners brought in from outside are dark."""
    angle = rng.uniform(*ROTATE_DEGREES) * rng.choice((-1, 1))
    turned = Image.fromarray(image).rotate(angle, resample=Image.BILINEAR, fillcolor=int(np.percentile(image, 1)))
    return np.asarray(turned), np.asarray(Image.fromarray(mask).rotate(angle, resample=Image.NEAREST, fillcolor=0))


def _crop(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A field collimated into the lungs: up to CROP_SIDE of each side cut off, the rest scaled
    back to the same size (so the lungs reach the border)."""
    height, width = image.shape
    left, right, top, bottom = rng.uniform(0, CROP_SIDE, size=4)
    box = (left * width, top * height, (1 - right) * width, (1 - bottom) * height)
    image = Image.fromarray(image).resize((width, height), Image.BILINEAR, box=box)
    mask = Image.fromarray(mask).resize((width, height), Image.BILINEAR, box=box)
    return np.asarray(image), np.where(np.asarray(mask) > 127, np.uint8(255), np.uint8(0))


def _burn_in_text(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """An L or R side marker and a line or two of letter-like blobs (a label), near-white and
    drawn over anything, lungs included: the mask does not change."""
    image = image.copy()
    height, width = image.shape
    side = max(4, round(min(height, width) * rng.uniform(0.05, 0.09)))  # glyph height in pixels
    marker = _GLYPH_L if rng.random() < 0.5 else _GLYPH_R
    _stamp(rng, image, marker, side, rng.uniform(0.02, 0.85), rng.uniform(0.02, 0.35))
    for _ in range(int(rng.integers(1, 3))):
        letters = rng.random((7, 6 * int(rng.integers(3, 9)))) < 0.45  # random 6-wide letter cells
        letters[:, 5::6] = False  # a gap between letters
        _stamp(rng, image, letters, max(3, side // 2), rng.uniform(0.02, 0.6), rng.uniform(0.02, 0.95))
    return image


def _stamp(rng: np.random.Generator, image: np.ndarray, glyph: np.ndarray, tall: int, x: float, y: float) -> None:
    """Draw a boolean bitmap `tall` pixels high with its top-left corner at (x, y) of the image."""
    scale = tall / glyph.shape[0]
    wide = max(1, round(glyph.shape[1] * scale))
    bitmap = np.asarray(Image.fromarray(glyph.astype(np.uint8) * 255).resize((wide, tall), Image.NEAREST)) > 0
    row, col = int(y * image.shape[0]), int(x * image.shape[1])
    bitmap = bitmap[: image.shape[0] - row, : image.shape[1] - col]
    region = image[row:row + bitmap.shape[0], col:col + bitmap.shape[1]]
    region[bitmap] = np.uint8(rng.integers(*MARK_LEVELS, endpoint=True))



def make_phantom(
    rng: np.random.Generator, height: int, width: int, site: str, *, ptb: bool = False,
    hard: frozenset[str] = frozenset(),
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom X-ray and its lung mask.

    Args:
        rng: the random generator; every draw comes from it.
        height: image height in px (>= 1).
        width: image width in px (>= 1).
        site: "PhantomA" or "PhantomB" (SITE_STYLES).
        ptb: add one or two opacities inside the lungs.
        hard: the hard cases (fields of HardCases) this image gets.

    Returns:
        (image uint8 HxW, mask uint8 HxW with values {0,255}).

    Raises:
        ValueError: an unknown hard case or site, or a side below 1.
    """
    unknown = set(hard) - set(vars(HardCases()))
    if unknown:
        raise ValueError(f"hard cases must be among {sorted(vars(HardCases()))}, got {sorted(unknown)}")
    if site not in SITE_STYLES:
        raise ValueError(f"site must be one of {sorted(SITE_STYLES)}, got {site!r}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    style, grid = SITE_STYLES[site], Grid.of(height, width)
    density = _body_density(rng, grid, style)
    lungs = [_lung_field(_draw_lung_shape(rng, side), grid) for side in (-1, 1)]
    heart = _heart(rng, grid)
    air, mask = _lung_air_and_mask(lungs, heart, density.shape)
    _add_lungs(rng, density, air, lungs, style)
    _add_heart(rng, density, heart)
    if ptb:
        _add_opacities(rng, density, mask, grid)
    if "dense_opacity" in hard:
        _add_dense_opacity(rng, density, mask, grid)
    _add_spine(rng, density, grid)
    _add_clavicles(rng, density, grid)
    _add_ribs(rng, density, grid)
    _add_noise(rng, density, style)
    image, mask = _tone_map(rng, density, style, "low_contrast" in hard), mask.astype(np.uint8) * np.uint8(255)
    if "rotated" in hard:
        image, mask = _rotate(rng, image, mask)
    if "cropped" in hard:
        image, mask = _crop(rng, image, mask)
    if "text" in hard:
        image = _burn_in_text(rng, image)
    return image, mask


# ----------------------------------------------------------------------------- messy metadata

# Spellings seen in (or in the spirit of) the real MetaData.csv: the loader must cope with them.
_GENDER_SPELLINGS = {
    "male": ("Male", "male", "M", "male,", "MALE", " male"),
    "female": ("Female", "female", "F", "femal", "female,", "FEMALE"),
}
_NORMAL_REMARKS = ("normal", "", "Normal", "normal lung", "normal,")
_PTB_REMARKS = (
    "bilateral infiltrates",
    "PTB in the right upper field",
    "left upper lobe cavity, secondary PTB",
    "STB,ATB,tuberculosis pleuritis",
    "1.right upper secondary PTB 2.left pleural thickening",
    "bilateral PTB, fibrous",
)


def _messy_age(rng: np.random.Generator) -> str:
    years = int(rng.integers(1, 86))
    if years < 3 and rng.random() < 0.7:
        return f"{int(rng.integers(6, 36))}month"
    pattern = ("{}yr", "{:03d}Y", "{}", "{} yrs", "{}Y")[int(rng.integers(5))]
    return pattern.format(years)


def _messy_metadata(rng: np.random.Generator, index: int, site: str, ptb: bool) -> dict:
    spellings = _GENDER_SPELLINGS["male" if rng.random() < 0.55 else "female"]
    remarks = _PTB_REMARKS if ptb else _NORMAL_REMARKS
    return {
        "id": index,
        "gender": spellings[int(rng.integers(len(spellings)))],
        "age": _messy_age(rng),
        "county": site,
        "ptb": int(ptb),
        "remarks": remarks[int(rng.integers(len(remarks)))],
    }


# ----------------------------------------------------------------------------- dataset writing


@dataclass(frozen=True)
class _Case:
    """Everything a worker needs to write image `index`; small and picklable."""

    index: int
    seed: int
    min_size: int
    max_size: int
    root: Path
    hard: HardCases


def _draw_size(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[int, int]:
    """Height uniform in range; width uniform in range too, but within the allowed aspect ratio
    (the interval always contains the height itself, so it is never empty)."""
    height = int(rng.integers(min_size, max_size + 1))
    low = max(min_size, int(np.ceil(height / MAX_ASPECT)))
    high = min(max_size, int(np.floor(height * MAX_ASPECT)))
    return height, int(rng.integers(low, high + 1))


def _write_case(case: _Case) -> dict:
    """Generate and write image + mask number `case.index`; return its metadata row. All
    randomness comes from (seed, index), so the result does not depend on which process runs it."""
    rng = np.random.default_rng([case.seed, case.index])
    site = SITES[1] if rng.random() < SITE_B_PROBABILITY else SITES[0]
    ptb = bool(rng.random() < PTB_PROBABILITY)
    height, width = _draw_size(rng, case.min_size, case.max_size)
    row = _messy_metadata(rng, case.index, site, ptb)
    image, mask = make_phantom(rng, height, width, site, ptb=ptb, hard=case.hard.draw(rng))
    pairs = case.root / PAIR_ROOT
    Image.fromarray(image).save(pairs / "image" / f"{case.index}.png", compress_level=PNG_COMPRESS_LEVEL)
    Image.fromarray(mask).save(pairs / "mask" / f"{case.index}.png", compress_level=PNG_COMPRESS_LEVEL)
    return row


def _validate(n_images: int, seed: int, min_size: int, max_size: int, workers: int, hard: HardCases) -> None:
    for name, fraction in vars(hard).items():
        if not 0 <= fraction <= 1:
            raise ValueError(f"hard.{name} (a fraction of images) must be in [0, 1], got {fraction}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if min_size < MIN_SIZE_LIMIT:
        raise ValueError(f"min_size must be >= {MIN_SIZE_LIMIT}, got {min_size}")
    if max_size < min_size:
        raise ValueError(f"max_size must be >= min_size ({min_size}), got {max_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = one per CPU), got {workers}")


def _write_all(root: Path, n_images: int, seed: int, min_size: int, max_size: int, workers: int,
               hard: HardCases) -> pd.DataFrame:
    for kind in ("image", "mask"):
        (root / PAIR_ROOT / kind).mkdir(parents=True)
    cases = [_Case(i, seed, min_size, max_size, root, hard) for i in range(n_images)]
    if workers == 1:
        rows = [_write_case(case) for case in cases]
    else:
        with worker_pool(workers) as pool:
            rows = list(pool.map(_write_case, cases, chunksize=max(1, n_images // (8 * workers))))
    table = pd.DataFrame(rows, columns=METADATA_COLUMNS)
    table.to_csv(root / METADATA_NAME, index=False)
    return table


def generate_dataset(
    out_dir: str | Path, n_images: int, seed: int, min_size: int, max_size: int, workers: int = 0,
    hard: HardCases = HardCases(),
) -> pd.DataFrame:
    """Write n_images phantoms + MetaData.csv into out_dir in the Kaggle layout.

    out_dir is replaced whole, atomically: the old set stays whole until the new one is complete.

    Args:
        out_dir: the folder to write.
        n_images: phantoms to write (>= 1).
        seed: seed of every image's random generator, with its index (>= 0).
        min_size: smallest side in px (>= MIN_SIZE_LIMIT).
        max_size: largest side in px (>= min_size); sides are drawn in [min_size, max_size].
        workers: processes; 0 means os.cpu_count().
        hard: the share of images with each hard case (none by default).

    Returns:
        The metadata table, as written to MetaData.csv.

    Raises:
        ValueError: an argument out of its range.
    """
    _validate(n_images, seed, min_size, max_size, workers, hard)
    out_dir = Path(out_dir)
    workers = min(workers or os.cpu_count() or 1, n_images)
    with atomic_path(out_dir) as staging:  # the old set stays whole until the new one is complete
        return _write_all(staging, n_images, seed, min_size, max_size, workers, hard)


# the L and R of lungseg.training.augment's glyphs (kept in both: see the note there)
_GLYPH_L = np.array([[c == "#" for c in r] for r in ("#....", "#....", "#....", "#....", "#....", "#....", "#####")])
_GLYPH_R = np.array([[c == "#" for c in r] for r in ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#")])
