"""`lungseg predict MODEL INPUT... --out DIR`: lung masks, overlays and a table for new X-rays.

Every image goes through the one inference path (lungseg.inference.Predictor), prepared exactly
as the training images were, and its mask is resized back to the image's original size:

    DIR/masks/<stem>.png      the mask, 0/255, 8-bit greyscale, original size
    DIR/overlays/<stem>.png   the X-ray in grey with the lungs in red (unless --no-overlays)
    DIR/predictions.csv       one row per input, in input order

DIR is checked before anything is written (lungseg.outdir): it may not hold or lie inside an
input, and an existing one must hold no files unless --overwrite is given; a run with
--overwrite then deletes the masks and overlays of the earlier run that it did not write.

Two inputs with the same stem (from different folders) get `<stem>-2`, `<stem>-3`, ... in the
order given; the CSV's mask_file and overlay_file columns say which file belongs to which input.
A file that cannot be read gets a row with `error` filled and its other fields empty, and the
run goes on; the command then exits 1.

Memory: one full-size image is in memory at a time, and never as a full-size float64 or RGB
float array: the overlay is built from the 8-bit grey picture in uint8 (lungseg.viz.overlay),
so a 10000 x 8000 X-ray peaks well under 1.5 GB (bench/predict_memory.py).

Lung sides: in a standard PA (postero-anterior) chest X-ray the patient faces the viewer, so the
patient's RIGHT lung appears on the image's LEFT side. Of the two largest connected components
of the final mask, the one whose centroid lies further left in the image is counted as the right
lung (right_lung_px) and the other as the left lung (left_lung_px). With a single component, it
is the right lung when its centroid lies in the left half of the image, the left lung otherwise,
and the other count is 0. AP or mirrored images swap the two. right_lung_cm2 and left_lung_cm2
give the same areas in cm2 for images whose file carries a pixel spacing (DICOM PixelSpacing or
ImagerPixelSpacing) and are empty for the others.

Quality (lungseg.quality): right_share and left_share are each lung's share of the image,
balance the smaller lung over the larger, uncertainty how unsure the model is along the edge it
draws (from the model-size probabilities), and flag says why a mask deserves a second look
("no lung found", "one lung only", ...; empty when none). The summary line counts the flagged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from lungseg import quality
from lungseg.config import PreprocessConfig
from lungseg.data.images import (
    IMAGE_SUFFIXES,
    WIDE_MODES,
    ImageReadError,
    is_image_file,
    open_image,
    pixel_spacing,
    to_float_gray,
)
from lungseg.data.preprocess import prepare_image, stretch_to_uint8
from lungseg.errors import DataError
from lungseg.inference import Predictor, load_predictor
from lungseg.io import atomic_path, write_csv
from lungseg.outdir import OutputNames, check_out, remove_stale
from lungseg.provenance import synthetic_warning
from lungseg.viz import overlay, save_mask_png

COLUMNS = ["input", "mask_file", "overlay_file", "height", "width", "lung_fraction",
           "right_lung_px", "left_lung_px", "right_lung_cm2", "left_lung_cm2", "n_components", "error",
           *quality.COLUMNS]
TABLE = "predictions.csv"
OUTPUT_NAMES = OutputNames(files=(TABLE,), folders=("masks", "overlays"), suffix=".png")
ROWS_PER_BLOCK = 512  # rows converted to 8 bits at a time: a 8000 px wide float block is ~16 MB
MM2_PER_CM2 = 100.0


@dataclass(frozen=True)
class Job:
    """One input image and the name its outputs are written under."""

    source: str  # the path as given on the command line (or folder + file name)
    name: str  # output stem, unique within the run


@dataclass(frozen=True)
class Outputs:
    """Where and how results are written."""

    folder: Path
    alpha: float = 0.4
    overlays: bool = True
    normalize: str = "minmax"  # how the overlay's grey is stretched: as the model saw the image


# --------------------------------------------------------------------------- inputs


def list_inputs(inputs: list[str], recursive: bool = False) -> list[str]:
    """Image files named by `inputs` (files as given; folders: their image files, sorted), each
    file once, in order. Raises DataError before anything is written when a path does not exist
    or no image is found. Hidden files skipped in a folder are reported on stderr, one line a folder.

    inputs: files and folders as given on the command line. recursive: also list subfolders.
    """
    missing = [given for given in inputs if not Path(given).exists()]
    if missing:
        raise DataError(f"{len(missing)} input path(s) not found; nothing was written:", missing)
    unique: dict[Path, str] = {}
    for given in inputs:
        found = images_in(given, recursive) if Path(given).is_dir() else [given]
        for source in found:  # the same file named twice (a folder and a file in it) is done once
            unique.setdefault(Path(source).resolve(), source)
    if not unique:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}, or DICOM without an extension) found in: "
                        f"{', '.join(inputs)}" + ("" if recursive else " (add --recursive to look in subfolders)"))
    return list(unique.values())


def images_in(folder: str, recursive: bool = False) -> list[str]:
    """Image files (lungseg.data.images.is_image_file) in `folder`, and below it with `recursive`,
    sorted. Hidden files and folders (such as macOS '._x.png' companions) are skipped, as the data
    loader does; the hidden files skipped are counted in one line on stderr.

    folder: the folder as given. recursive: also walk its subfolders (hidden ones excepted).
    """
    found, hidden = [], 0
    for parent, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")] if recursive else []
        for name in files:
            path = os.path.join(parent, name)
            if name.startswith("."):
                hidden += os.path.isfile(path)
            elif os.path.isfile(path) and is_image_file(path):
                found.append(Path(path).relative_to(folder))
    if hidden:
        print(f"skipped {hidden} hidden file(s) in {folder}", file=sys.stderr)
    return [os.path.join(folder, str(path)) for path in sorted(found)]


def unique_names(sources: list[str]) -> list[str]:
    """One output stem per source: its own stem, or `<stem>-2`, `-3`, ... when an earlier source
    took it (compared without case, so the outputs also stay apart on macOS and Windows)."""
    taken, names = set(), []
    for source in sources:
        stem = Path(source).stem
        name, count = stem, 1
        while name.casefold() in taken:
            count += 1
            name = f"{stem}-{count}"
        taken.add(name.casefold())
        names.append(name)
    return names


def split_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """The INPUT arguments that are folders, and those that are files (for lungseg.outdir)."""
    is_folder = [Path(given).is_dir() for given in inputs]
    return ([given for given, folder in zip(inputs, is_folder) if folder],
            [given for given, folder in zip(inputs, is_folder) if not folder])


# --------------------------------------------------------------------------- one batch


def predict_batch(predictor: Predictor, jobs: list[Job], settings: PreprocessConfig
                  ) -> Iterator[tuple[Job, np.ndarray | ImageReadError, np.ndarray | None]]:
    """Each job in order with its native-size mask (uint8 0/1), or the error that kept its file
    from being read, and its model-size probabilities (float32 S x S; None for an error). Masks
    are made one at a time, so only one full-size image is in memory."""
    prepared = []
    for job in jobs:
        try:
            prepared.append(prepare_image(job.source, settings))
        except ImageReadError as problem:
            prepared.append(problem)
    readable = [item for item in prepared if not isinstance(item, ImageReadError)]
    probabilities = iter(predictor.probabilities(np.stack([image for image, _ in readable]), len(readable)) if readable else [])
    for job, item in zip(jobs, prepared):
        if isinstance(item, ImageReadError):
            yield job, item, None
        else:
            probability = next(probabilities)
            yield job, predictor.native_mask(probability, item[1]), probability


# --------------------------------------------------------------------------- one result


def areas_cm2(report: quality.QualityReport, spacing: tuple[float, float] | None) -> tuple[float | None, float | None]:
    """The right and left lung areas in cm2 from a pixel spacing in mm (row, column); (None, None)
    without one."""
    if spacing is None:
        return None, None
    pixel_mm2 = spacing[0] * spacing[1]
    return round(report.right_px * pixel_mm2 / MM2_PER_CM2, 3), round(report.left_px * pixel_mm2 / MM2_PER_CM2, 3)


def display_grey(source: str, normalize: str) -> np.ndarray:
    """The X-ray at full size as uint8 0..255 for the overlay, stretched as the model saw it (a
    12-bit image stored in 16 bits would otherwise be nearly black). 8-bit files stay 8-bit all
    the way; wider ones are converted to 8 bits in row blocks, so no second full-size float copy
    is made.

    source: the image file. normalize: 'minmax' stretches each image to 0..255, 'none' keeps it.
    """
    image, _ = open_image(source)
    if image.mode not in WIDE_MODES:
        grey = np.asarray(_as_grey_8bit(image))
        del image
        return _stretch_8bit(grey) if normalize == "minmax" else grey
    values = to_float_gray(image)  # float32 in [0, 1]
    del image
    low, high = (float(values.min()), float(values.max())) if normalize == "minmax" else (0.0, 1.0)
    grey = np.empty(values.shape, dtype=np.uint8)
    for start in range(0, len(values), ROWS_PER_BLOCK):
        grey[start:start + ROWS_PER_BLOCK] = stretch_to_uint8(values[start:start + ROWS_PER_BLOCK], low, high)
    return grey


def _as_grey_8bit(image: Image.Image) -> Image.Image:
    """An 8-bit image of any mode as 'L', converted as lungseg.data.images reads 8-bit data
    (palettes through RGBA, colours by ITU-R 601 luma), but kept in uint8."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image if image.mode == "L" else image.convert("L")


def _stretch_8bit(grey: np.ndarray) -> np.ndarray:
    """Min-max stretch of a uint8 image through a 256-entry table (no float copy of the image)."""
    table = stretch_to_uint8(np.arange(256, dtype=np.float64), int(grey.min()), int(grey.max()))
    return table[grey]


def save_rgb_png(pixels: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def write_result(job: Job, mask: np.ndarray, outputs: Outputs, probability: np.ndarray | None = None,
                 threshold: float = 0.5) -> dict:
    """Write one image's mask (and overlay) and return its CSV row. The X-ray and its pixel spacing
    are read before anything is written, so a file that fails now leaves no outputs behind.

    probability: the model-size probabilities the mask came from, for the quality columns (their
    uncertainty is left empty without). threshold: the predictor's threshold.
    """
    grey = display_grey(job.source, outputs.normalize) if outputs.overlays else None
    spacing = pixel_spacing(job.source)
    mask_file = Path("masks") / f"{job.name}.png"
    save_mask_png(mask, outputs.folder / mask_file)
    overlay_file = ""
    if grey is not None:
        overlay_file = str(Path("overlays") / f"{job.name}.png")
        save_rgb_png(overlay(grey, mask, alpha=outputs.alpha), outputs.folder / overlay_file)
        del grey  # before quality labels the mask: one full-size picture at a time
    report = quality.assess(mask, probability, threshold)  # labels the mask once, for the sides too
    right_cm2, left_cm2 = areas_cm2(report, spacing)
    return {"input": job.source, "mask_file": str(mask_file), "overlay_file": overlay_file,
            "height": mask.shape[0], "width": mask.shape[1], "lung_fraction": report.lung_fraction,
            "right_lung_px": report.right_px, "left_lung_px": report.left_px,
            "right_lung_cm2": right_cm2, "left_lung_cm2": left_cm2,
            "n_components": report.n_components, "error": "", **report.columns()}


def error_row(job: Job, problem: Exception) -> dict:
    """The CSV row of an image that failed: only the input and the reason."""
    return {**dict.fromkeys(COLUMNS, None), "input": job.source, "error": str(problem)}


def write_table(rows: list[dict], path: Path) -> None:
    """predictions.csv, atomically. Object columns keep whole numbers whole next to empty cells."""
    write_csv(pd.DataFrame(rows, columns=COLUMNS, dtype=object), path)


def written_files(rows: list[dict], folder: Path) -> list[Path]:
    """Every file a run wrote: the table and each row's mask and overlay."""
    names = [TABLE, *(row[column] for row in rows for column in ("mask_file", "overlay_file") if row[column])]
    return [folder / name for name in names]


# --------------------------------------------------------------------------- the command


def predict_all(predictor: Predictor, jobs: list[Job], outputs: Outputs, batch_size: int, quiet: bool = False) -> list[dict]:
    """Run every job in batches and write its outputs; return the CSV rows in job order.
    Unreadable files are reported on stderr (one line each) and become error rows."""
    settings = PreprocessConfig(**predictor.preprocess)
    rows = []
    # disable=None: the bar shows on a terminal and stays out of logs and pipes
    with tqdm(total=len(jobs), unit="image", disable=True if quiet else None, file=sys.stderr) as progress:
        for start in range(0, len(jobs), batch_size):
            for job, outcome, probability in predict_batch(predictor, jobs[start:start + batch_size], settings):
                rows.append(result_row(job, outcome, outputs, probability, predictor.threshold))
                del outcome  # else the last mask stays alive while the generator makes the next
                progress.update()
    return rows


def result_row(job: Job, outcome: np.ndarray | ImageReadError, outputs: Outputs,
               probability: np.ndarray | None = None, threshold: float = 0.5) -> dict:
    try:
        if isinstance(outcome, ImageReadError):
            raise outcome
        return write_result(job, outcome, outputs, probability, threshold)
    except ImageReadError as problem:  # the message already names the file
        tqdm.write(f"error: {problem}", file=sys.stderr)
        return error_row(job, problem)


def run(model: str, inputs: list[str], out: str, device: str = "auto", threshold: float | None = None,
        batch_size: int = 16, alpha: float = 0.4, overlays: bool = True, recursive: bool = False,
        quiet: bool = False, overwrite: bool = False) -> int:
    """The whole command; returns the exit code: 0 all written, 1 some files could not be read.
    Problems with the inputs, --out (lungseg.outdir) or the model raise LungsegError before
    anything is written. With `overwrite`, an earlier run's outputs in `out` may be replaced,
    and those this run did not write are deleted once it is done."""
    sources = list_inputs(inputs, recursive)
    folders, files = split_inputs(inputs)
    out_dir = check_out(out, OUTPUT_NAMES, overwrite, input_folders=folders, input_files=[model, *files])
    predictor = load_predictor(model, device, threshold)
    if warning := synthetic_warning(model, predictor.info):
        print(warning, file=sys.stderr)
    jobs = [Job(source, name) for source, name in zip(sources, unique_names(sources))]
    outputs = Outputs(out_dir, alpha, overlays, predictor.preprocess.get("normalize", "minmax"))
    rows = predict_all(predictor, jobs, outputs, batch_size, quiet)
    write_table(rows, out_dir / TABLE)
    if overwrite:
        remove_stale(out_dir, OUTPUT_NAMES, written_files(rows, out_dir))
    failed = sum(bool(row["error"]) for row in rows)
    flagged = sum(bool(row["flag"]) for row in rows)
    print(f"{len(rows) - failed} of {len(rows)} image(s) segmented into {out_dir}"
          + (f"; {failed} could not be read (see the error column of {TABLE})" if failed else ""))
    print(f"{flagged} of {len(rows) - failed} flagged: see the flag column of {TABLE}")
    return 1 if failed else 0
