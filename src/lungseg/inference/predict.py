"""`lungseg predict MODEL INPUT... --out DIR`: lung masks, overlays and a table for new X-rays.

Every image goes through the one inference path (lungseg.inference.predictor.Predictor), prepared exactly
as the training images were, and its mask is resized back to the image's original size:

    DIR/masks/<stem>.png      the mask, 0/255, 8-bit greyscale, original size
    DIR/overlays/<stem>.png   the X-ray in grey with the lungs in red (unless --no-overlays)
    DIR/predictions.csv       one row per input, in input order

DIR is checked before anything is written (lungseg.inference.outdir): it may not hold or lie inside an
input, and an existing one must hold no files unless --overwrite is given; a run with
--overwrite then deletes the masks and overlays of the earlier run that it did not write.

Two inputs with the same stem (from different folders) get `<stem>-2`, `<stem>-3`, ... in the
order given; the CSV's mask_file and overlay_file columns say which file belongs to which input.
A file that cannot be read gets a row with `error` filled and its other fields empty, and the
run goes on; the command then exits 1.

Speed: each file is decoded once for both the model's input and the overlay's grey, except a
JPEG that the model's input decodes at a reduced scale (Pillow's draft mode), and a grey that
does not fit the kept budget (below), which are read again for the overlay. Worker
threads (--workers, default one per core) read the next batches and write the finished ones
while the model runs on the current batch; the batches, and so every output, are the same for
any number of workers, and rows and error lines come in input order (bench/predict_speed.py).

Memory: what the threads hold at once is bounded by pixel budgets (PixelBudget): images being
decoded or written up to WORKING_PIXELS, where an image larger than that runs alone, and display
greys waiting for their write up to KEPT_PIXELS, beyond which an image's grey is read again when
its overlay is written. No image is ever a full-size float64 or RGB float array: the overlay is
built from the 8-bit grey picture in uint8 (lungseg.inference.overlay.overlay_image), so a 10000 x 8000
X-ray peaks well under 1.5 GB (bench/predict_memory.py).

Lung sides: in a standard PA (postero-anterior) chest X-ray the patient faces the viewer, so the
patient's RIGHT lung appears on the image's LEFT side. Of the two largest connected components
of the final mask, the one whose centroid lies further left in the image is counted as the right
lung (right_lung_px) and the other as the left lung (left_lung_px). With a single component, it
is the right lung when its centroid lies in the left half of the image, the left lung otherwise,
and the other count is 0. AP or mirrored images swap the two. right_lung_cm2 and left_lung_cm2
give the same areas in cm2 for images whose file carries a pixel spacing (DICOM PixelSpacing or
ImagerPixelSpacing) and are empty for the others.

Quality (lungseg.postprocessing.quality): right_share and left_share are each lung's share
of the image, balance the smaller lung over the larger, dice_estimate the Dice this mask should
expect against an expert's (from the model's own output, calibrated on its validation images;
empty with --no-estimate or for a model trained before estimates existed), and flag says why a
mask deserves a second look ("estimated Dice 0.81", "no lung found", "one lung only", "3+
components"; empty when none). The summary line counts the flagged. docs/predict.md says what
the columns mean and how well the estimate did.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from lungseg.core.config import PreprocessConfig
from lungseg.core.errors import DataError, ImageReadError, WriteFailed, os_error_text
from lungseg.core.io import atomic_path, sweep_folder, write_csv
from lungseg.data.images import (
    IMAGE_SUFFIXES,
    WIDE_MODES,
    as_8bit_gray,
    is_image_file,
    open_image,
    pixel_spacing,
    read_resized,
    read_resized_and_full,
    read_size,
    to_float_gray,
)
from lungseg.data.normalize import check_available, stretch_to_uint8
from lungseg.data.preprocess import finish_image
from lungseg.inference import review, runs
from lungseg.inference.budget import PixelBudget
from lungseg.inference.formats import load_predictor
from lungseg.inference.outdir import OutputNames, check_out, remove_stale
from lungseg.inference.overlay import overlay_image, save_mask_png
from lungseg.inference.predictor import Predictor, default_workers, torch_threads
from lungseg.model.checkpoint import synthetic_warning
from lungseg.postprocessing import quality

COLUMNS = ["input", "mask_file", "overlay_file", "height", "width", "lung_fraction",
           "right_lung_px", "left_lung_px", "right_lung_cm2", "left_lung_cm2", "n_components", "error",
           *quality.COLUMNS]
TABLE = "predictions.csv"
OUTPUT_NAMES = OutputNames(files=(TABLE, review.PAGE, runs.RECORD, runs.PARTIAL), folders=("masks", "overlays", review.THUMBNAILS, review.VIEWS),
                           suffix=(".png", ".jpg"))
ROWS_PER_BLOCK = 512  # rows converted to 8 bits at a time: a 8000 px wide float block is ~16 MB
MM2_PER_CM2 = 100.0
# zlib level of the overlays: level 1 wrote a 512 px overlay 5x faster than the default 6, for
# ~10% more bytes (bench/predict_speed.py); the pixels are the same at every level
OVERLAY_PNG_LEVEL = 1
READ_AHEAD = 2  # batches read ahead of the one the model runs on
# Memory in flight (PixelBudget): images being decoded or written hold a few bytes a pixel for a
# moment (two 3000 px X-rays side by side fit; a 10000 x 8000 one runs alone), display greys
# waiting for their write 1 byte a pixel (beyond this they are read again, as for one huge image).
WORKING_PIXELS = 24_000_000
KEPT_PIXELS = 64_000_000


@dataclass(frozen=True)
class Job:
    """One input image and the name its outputs are written under.

    Args:
        source: the path as given on the command line (or folder + file name).
        name: output stem, unique within the run.
    """

    source: str
    name: str


@dataclass(frozen=True)
class Outputs:
    """Where and how results are written.

    Args:
        folder: the --out folder.
        alpha: the overlays' colour weight.
        overlays: write overlays (False: --no-overlays).
        normalize: how the overlay's grey is stretched: as the model saw the image.
        estimate: fill the dice_estimate column (False: --no-estimate).
        limits: when a mask is flagged.
        review: write the review page's thumbnails and X-ray views (False: --no-report).
    """

    folder: Path
    alpha: float = 0.4
    overlays: bool = True
    normalize: str = "minmax"
    estimate: bool = True
    limits: quality.Limits = quality.DEFAULT_LIMITS
    review: bool = True


# --------------------------------------------------------------------------- inputs


class Listing(NamedTuple):
    """What the INPUT arguments name.

    Args:
        sources: the images to segment.
        skipped: what was passed over, each as 'path: why' (a file of no image format, a broken link, a
            second name of a file already listed, a subfolder without --recursive).
    """

    sources: list[str]
    skipped: list[str]


def list_inputs(inputs: list[str], recursive: bool = False) -> Listing:
    """Image files named by `inputs`, and what the folders held that is not segmented.

    Files are listed as given, folders by their image files, sorted; each file once, in order. A folder yields
    every file predict reads when it is named (is_image_file), so a file named alone is read the same.
    Hidden files skipped in a folder are reported on stderr, one line a folder.

    Args:
        inputs: files and folders as given on the command line.
        recursive: also list subfolders.

    Returns:
        The images to segment and what was skipped.

    Raises:
        DataError: before anything is written, when a path does not exist or no image is found.
    """
    missing = [given for given in inputs if not Path(given).exists()]
    if missing:
        raise DataError(f"{len(missing)} input path(s) not found; nothing was written:", missing)
    unique: dict[Path, str] = {}
    skipped: list[str] = []
    for given in inputs:
        found, passed_over = images_in(given, recursive) if Path(given).is_dir() else ([given], [])
        skipped += passed_over
        for source in found:  # the same file named twice (a folder and a file in it, a link) is done once
            first = unique.setdefault(Path(source).resolve(), source)
            if first != source and Path(given).is_dir():
                skipped.append(f"{source}: the same file as {first}")
    if not unique:
        with_subfolders = not recursive and any(_has_subfolder(given) for given in inputs)
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}, or DICOM without an extension) found in: "
                        f"{', '.join(inputs)}" + (" (add --recursive to look in subfolders)" if with_subfolders else ""))
    return Listing(list(unique.values()), skipped)


def _has_subfolder(given: str) -> bool:
    """Whether `given` is a folder holding a folder (other than hidden ones)."""
    path = Path(given)
    return path.is_dir() and any(entry.is_dir() and not entry.name.startswith(".") for entry in path.iterdir())


def images_in(folder: str, recursive: bool = False) -> tuple[list[str], list[str]]:
    """Image files (lungseg.data.images.is_image_file) in `folder`, and below it with `recursive`.

    Hidden files and folders (such as macOS '._x.png' companions) are skipped, as the data loader does;
    the hidden files are counted in one line on stderr.

    Args:
        folder: the folder as given.
        recursive: also walk its subfolders (hidden ones excepted).

    Returns:
        The image files, sorted; and what else it holds, as 'path: why' (Listing.skipped), sorted.
    """
    found, skipped, hidden = [], [], 0
    for parent, subfolders, files in os.walk(folder):
        visible = sorted(name for name in subfolders if not name.startswith("."))
        if not recursive:
            skipped += [f"{os.path.join(parent, name)}: a subfolder (add --recursive to read it)" for name in visible]
        subfolders[:] = visible if recursive else []
        for name in files:
            path = os.path.join(parent, name)
            if name.startswith("."):
                hidden += os.path.isfile(path)
            elif not os.path.exists(path):
                skipped.append(f"{path}: a broken link")
            elif os.path.isfile(path) and is_image_file(path):
                found.append(Path(path).relative_to(folder))
            else:
                skipped.append(f"{path}: not an image format lungseg reads ({', '.join(IMAGE_SUFFIXES)})")
    if hidden:
        print(f"skipped {hidden} hidden file(s) in {folder}", file=sys.stderr)
    return [os.path.join(folder, str(path)) for path in sorted(found)], sorted(skipped)


def unique_names(sources: list[str]) -> list[str]:
    """One output stem per source, unique within the run.

    Args:
        sources: the input files, in order.

    Returns:
        Each source's own stem, or `<stem>-2`, `-3`, ... when an earlier source took it (compared without
        case, so the outputs also stay apart on macOS and Windows).
    """
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
    """The INPUT arguments split by kind (for lungseg.inference.outdir).

    Args:
        inputs: the INPUT arguments.

    Returns:
        Those that are folders, and those that are files, each in order.
    """
    is_folder = [Path(given).is_dir() for given in inputs]
    return ([given for given, folder in zip(inputs, is_folder) if folder],
            [given for given, folder in zip(inputs, is_folder) if not folder])


# --------------------------------------------------------------------------- memory in flight


@dataclass
class Budgets:
    """The pixel budgets of predict's worker threads.

    Args:
        working: pixels being decoded or written (a few full-size arrays each); default WORKING_PIXELS.
        kept: pixels of display copies waiting between their read and their write (1 byte a pixel);
            default KEPT_PIXELS.
    """

    working: PixelBudget = field(default_factory=lambda: PixelBudget(WORKING_PIXELS))
    kept: PixelBudget = field(default_factory=lambda: PixelBudget(KEPT_PIXELS))


def header_pixels(source: str) -> int:
    """Width x height from the file's header, to reserve before decoding.

    Args:
        source: the image file.

    Returns:
        The pixel count; 1 for a file whose header cannot be read (the full read then reports why, in its
        own words).
    """
    try:
        height, width = read_size(source)
    except ImageReadError:
        return 1
    return height * width


# --------------------------------------------------------------------------- reading


@dataclass
class Prepared:
    """One job after reading: the model's input, or the error that kept the file from being read.

    Args:
        job: the job read.
        image: uint8 S x S, prepared as for training; None after an error.
        size: original (height, width).
        spacing: mm per pixel (DICOM), else None.
        grey: the display grey, when kept for the overlay.
        error: why the file could not be read, or None.
        kept: pixels the grey holds of budgets.kept, given back once it is written.
    """

    job: Job
    image: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)
    spacing: tuple[float, float] | None = None
    grey: np.ndarray | None = None
    error: ImageReadError | None = None
    kept: int = 0

    def take_grey(self) -> np.ndarray | None:
        """Hand over the kept display grey, once, so that it is freed as soon as its user is done.

        Returns:
            The grey, or None when none was kept or it was handed over already.
        """
        grey, self.grey = self.grey, None
        return grey


def read_job(job: Job, settings: PreprocessConfig, outputs: Outputs, budgets: Budgets) -> Prepared:
    """Read one X-ray once: the model's input, its pixel spacing and, when kept, its display grey.

    The input is exactly as lungseg.data.preprocess.prepare_image makes it. The grey is kept with overlays
    and room in budgets.kept; without that room it is read again when the overlay is written, as one
    full-size image at a time allows.

    Args:
        job: the image to read.
        settings: the model's preprocessing settings.
        outputs: whether overlays are written, and their grey's stretch.
        budgets: the pixel budgets to hold while reading and to keep the grey in.

    Returns:
        The prepared job; an unreadable file gives one with `error` set instead of raising.
    """
    pixels = header_pixels(job.source)
    keep = outputs.overlays and budgets.kept.take(pixels, wait=False)
    try:
        with budgets.working.held(pixels):
            prepared = _read(job, settings, outputs.normalize if keep else None)
    except ImageReadError as problem:
        prepared = Prepared(job, error=problem)
    if keep and prepared.grey is None:
        budgets.kept.give(pixels)
    elif keep:
        prepared.kept = pixels
    return prepared


def _read(job: Job, settings: PreprocessConfig, normalize: str | None) -> Prepared:
    """Prepared for one job; the display grey too when `normalize` (the overlays' stretch) is given."""
    grey = None
    if normalize is None:
        resized = read_resized(job.source, settings.image_size)
    else:
        resized, full = read_resized_and_full(job.source, settings.image_size)
        grey = grey_for_display(full, normalize)
        del full
    return Prepared(job, finish_image(resized.values, settings), resized.original_size, pixel_spacing(job.source), grey)


def forward(predictor: Predictor, batch: list[Prepared]) -> list[np.ndarray | None]:
    """The model-size probabilities of each readable image of a batch, run as one stack.

    Args:
        predictor: the model.
        batch: the batch's read jobs, as the batch's jobs were before.

    Returns:
        One S x S probability map per job, in order; None for the jobs that could not be read.
    """
    readable = [item.image for item in batch if item.error is None]
    probabilities = iter(predictor.probabilities(np.stack(readable), len(readable)) if readable else [])
    return [None if item.error is not None else next(probabilities) for item in batch]


# --------------------------------------------------------------------------- one result


def areas_cm2(report: quality.QualityReport, spacing: tuple[float, float] | None) -> tuple[float | None, float | None]:
    """The right and left lung areas in cm2.

    Args:
        report: the mask's quality report (its right_px and left_px).
        spacing: pixel spacing in mm (row, column), or None.

    Returns:
        (right, left) in cm2, rounded to 3 decimals; (None, None) without a spacing.
    """
    if spacing is None:
        return None, None
    pixel_mm2 = spacing[0] * spacing[1]
    return round(report.right_px * pixel_mm2 / MM2_PER_CM2, 3), round(report.left_px * pixel_mm2 / MM2_PER_CM2, 3)


def display_grey(source: str, normalize: str) -> np.ndarray:
    """The X-ray at full size as uint8 0..255 for the overlay (grey_for_display of the file).

    Args:
        source: the image file.
        normalize: the model's setting; see grey_for_display.

    Returns:
        HxW uint8.

    Raises:
        ImageReadError: for a file that cannot be read.
    """
    image, _ = open_image(source)
    return grey_for_display(image, normalize)


def grey_for_display(image: Image.Image, normalize: str) -> np.ndarray:
    """A decoded X-ray as uint8 0..255 for the overlay, stretched as the model saw it.

    Stretched, because a 12-bit image stored in 16 bits would otherwise be nearly black. 8-bit images stay
    8-bit all the way; wider ones are converted to 8 bits in row blocks, so no second full-size float copy
    is made.

    Args:
        image: the decoded, upright X-ray.
        normalize: 'none' keeps the values; 'minmax' and every other method stretch each image to 0..255
            (the display needs no finer normalisation).

    Returns:
        HxW uint8.
    """
    stretch = normalize != "none"
    if image.mode not in WIDE_MODES:
        grey = np.asarray(as_8bit_gray(image))
        return _stretch_8bit(grey) if stretch else grey
    values = to_float_gray(image)  # float32 in [0, 1]
    low, high = (float(values.min()), float(values.max())) if stretch else (0.0, 1.0)
    grey = np.empty(values.shape, dtype=np.uint8)
    for start in range(0, len(values), ROWS_PER_BLOCK):
        grey[start:start + ROWS_PER_BLOCK] = stretch_to_uint8(values[start:start + ROWS_PER_BLOCK], low, high)
    return grey


def _stretch_8bit(grey: np.ndarray) -> np.ndarray:
    """Min-max stretch of a uint8 image through a 256-entry table (no float copy of the image)."""
    table = stretch_to_uint8(np.arange(256, dtype=np.float64), int(grey.min()), int(grey.max()))
    return table[grey]  # indexing by the uint8 array itself: np.take would copy it as int64 first


def save_rgb_png(picture: Image.Image, path: Path, sweep: bool = True) -> None:
    """Write an RGB Pillow image as a PNG at OVERLAY_PNG_LEVEL, atomically.

    Args:
        picture: the RGB image.
        path: where to write it.
        sweep: as in lungseg.core.io.atomic_path (False when the caller swept the folder once).
    """
    with atomic_path(path, sweep=sweep) as tmp:
        picture.save(tmp, format="PNG", compress_level=OVERLAY_PNG_LEVEL)


def write_result(job: Job, mask: np.ndarray, outputs: Outputs, dice_estimate: float | None,
                 grey: np.ndarray | None, spacing: tuple[float, float] | None) -> dict:
    """Write one image's mask (and overlay) and return its CSV row.

    Without a kept `grey` the X-ray is read for the overlay before anything is written, so a file that
    fails now leaves no outputs.

    Args:
        job: the image and its output stem.
        mask: the native-size mask.
        outputs: where and how to write.
        dice_estimate: the mask's estimated Dice (Predictor.dice_estimate), or None.
        grey: the display grey (grey_for_display) read with the model's input, if kept.
        spacing: the file's pixel spacing in mm, for the cm2 columns.

    Returns:
        The image's CSV row (COLUMNS).

    Raises:
        ImageReadError: when the X-ray cannot be read again for the overlay.
    """
    if (outputs.overlays or outputs.review) and grey is None:
        grey = display_grey(job.source, outputs.normalize)
    mask_file = Path("masks") / f"{job.name}.png"
    save_mask_png(mask, outputs.folder / mask_file, sweep=False)  # predict_all swept the folder once
    overlay_file, pictures = "", {}
    if grey is not None:
        if outputs.overlays:
            overlay_file = str(Path("overlays") / f"{job.name}.png")
            save_rgb_png(overlay_image(grey, mask, alpha=outputs.alpha), outputs.folder / overlay_file, sweep=False)
        if outputs.review:
            thumbnail, view = review.write_card_pictures(outputs.folder, job.name, grey, mask, outputs.alpha)
            pictures = {"thumbnail_file": thumbnail, "view_file": view}  # for the page, not the CSV
        del grey  # before quality labels the mask: one full-size picture at a time
    report = quality.assess(mask, dice_estimate, outputs.limits)  # labels the mask once, for the sides too
    right_cm2, left_cm2 = areas_cm2(report, spacing)
    return {"input": job.source, "mask_file": str(mask_file), "overlay_file": overlay_file,
            "height": mask.shape[0], "width": mask.shape[1], "lung_fraction": report.lung_fraction,
            "right_lung_px": report.right_px, "left_lung_px": report.left_px,
            "right_lung_cm2": right_cm2, "left_lung_cm2": left_cm2,
            "n_components": report.n_components, "error": "", **report.columns(), **pictures}


def write_job(item: Prepared, probability: np.ndarray | None, predictor: Predictor, outputs: Outputs,
              budgets: Budgets) -> dict:
    """Make the native-size mask of one read job and write its files.

    Gives back the kept grey's reservation once written.

    Args:
        item: the read job.
        probability: its model-size probabilities (None for a file that could not be read).
        predictor: the model (its native_mask and dice_estimate).
        outputs: where and how to write.
        budgets: the pixel budgets to hold while writing and to give the grey back to.

    Returns:
        The CSV row; an error row for a file that could not be read.
    """
    if item.error is not None:
        return error_row(item.job, item.error)
    try:
        with budgets.working.held(item.size[0] * item.size[1]):
            mask = predictor.native_mask(probability, item.size)
            estimate = predictor.dice_estimate(probability) if outputs.estimate else None
            return write_result(item.job, mask, outputs, estimate, item.take_grey(), item.spacing)
    except ImageReadError as problem:  # the message already names the file
        return error_row(item.job, problem)
    finally:
        budgets.kept.give(item.kept)


def error_row(job: Job, problem: Exception) -> dict:
    """The CSV row of an image that failed: only the input and the reason.

    Args:
        job: the image.
        problem: why it failed.

    Returns:
        The row, its other columns None.
    """
    return {**dict.fromkeys(COLUMNS, None), "input": job.source, "error": str(problem)}


def write_table(rows: list[dict], path: Path) -> None:
    """Write predictions.csv, atomically. Object columns keep whole numbers whole next to empty cells.

    Args:
        rows: the CSV rows, in input order.
        path: where to write.
    """
    write_csv(pd.DataFrame(rows, columns=COLUMNS, dtype=object), path)


def written_files(rows: Iterable[dict], folder: Path) -> list[Path]:
    """Every file a run wrote: the table, its record, the page, and each row's mask, overlay and pictures.

    Args:
        rows: the run's table rows (read once).
        folder: the --out folder.

    Returns:
        The files' paths.
    """
    names = [TABLE, runs.RECORD] + ([review.PAGE] if (folder / review.PAGE).is_file() else [])
    for row in rows:
        names += [row[column] for column in ("mask_file", "overlay_file") if row[column]]
        if row["mask_file"]:
            stem = Path(row["mask_file"]).stem
            names += [f"{pictures}/{stem}.jpg" for pictures in (review.THUMBNAILS, review.VIEWS)]
    return [folder / name for name in names]


# --------------------------------------------------------------------------- the command


def predict_all(predictor: Predictor, jobs: list[Job], outputs: Outputs, batch_size: int, quiet: bool = False,
                workers: int | None = None, budgets: Budgets | None = None, sink=None) -> list[dict]:
    """Run every job and write its outputs.

    Unreadable files are reported on stderr (one line each, in job order) and become error rows.
    Worker threads read the next batches and write the finished ones while this thread runs the
    model on the current batch (Pillow, numpy and torch release the GIL for the heavy work).
    Batches are the same jobs[i:i + batch_size] whatever the number of workers, so the results are too.

    Args:
        predictor: the model.
        jobs: the images and their output stems.
        outputs: where and how to write.
        batch_size: images per model call.
        quiet: no progress bar.
        workers: threads (default: one per core).
        budgets: memory in flight (default: Budgets()).
        sink: takes each row as it is finished, in job order (e.g. lungseg.inference.runs.TableWriter.add,
            so that 100,000 rows need not wait in memory); None keeps them in the list returned.

    Returns:
        The CSV rows in job order (empty with a sink).

    Raises:
        WriteFailed: when a write fails (an OSError), holding the rows finished so far (none with a sink).
    """
    settings, budgets = PreprocessConfig(**predictor.preprocess), budgets or Budgets()
    workers = workers or default_workers()
    for folder in OUTPUT_NAMES.folders:  # once here, not before each of thousands of writes
        sweep_folder(outputs.folder / folder)
    batches = iter([jobs[start:start + batch_size] for start in range(0, len(jobs), batch_size)])
    rows: list[dict] = []
    sink = sink or rows.append
    pool = ThreadPoolExecutor(workers, thread_name_prefix="predict")
    # disable=None: the bar shows on a terminal and stays out of logs and pipes
    with tqdm(total=len(jobs), unit="image", disable=True if quiet else None, file=sys.stderr) as progress, \
            torch_threads(1 if workers > 1 else None):
        failed = 0

        def take(row: dict) -> None:  # each finished row: an unreadable file is said and counted on the bar
            nonlocal failed
            if row["error"]:
                failed += 1
                tqdm.write(f"error: {row['error']}", file=sys.stderr)
                progress.set_postfix_str(f"{failed} failed", refresh=False)
            sink(row)

        try:
            read = partial(pool.submit, read_job, settings=settings, outputs=outputs, budgets=budgets)
            reading = deque([read(job) for job in upcoming] for upcoming in islice(batches, READ_AHEAD))
            writing: deque[Future] = deque()
            while reading:
                batch = [future.result() for future in reading.popleft()]
                reading.extend([read(job) for job in upcoming] for upcoming in islice(batches, 1))
                for item, probability in zip(batch, forward(predictor, batch)):
                    writing.append(pool.submit(write_job, item, probability, predictor, outputs, budgets))
                del batch, item  # the writers own them now, and free each grey once written
                _collect(writing, take, progress, keep=READ_AHEAD * batch_size)
            _collect(writing, take, progress, keep=0)
        except OSError as error:  # every file is written atomically: nothing half-written is left
            raise WriteFailed(error, rows) from error  # rows: empty when a sink took them
        finally:  # after Ctrl-C or a failure, drop the queued work instead of waiting for it
            pool.shutdown(wait=True, cancel_futures=True)
    return rows


def stop_after(failed: WriteFailed, out_dir: Path, total: int) -> int:
    """After a failed write: list the finished images in predictions.csv (a rename: it needs no
    space) and say in one line on stderr what failed and where.

    Args:
        failed: the error predict_all raised.
        out_dir: the --out folder.
        total: how many images the run had.

    Returns:
        Exit status 1.
    """
    error = failed.error
    where = Path(error.filename).parent if error.filename else out_dir  # the folder, not the temporary name
    try:
        finished = len(runs.earlier_rows(out_dir, TABLE))  # cuts off a row the full disk tore
        os.replace(out_dir / runs.PARTIAL, out_dir / TABLE)
        listed = f"the {finished} finished are listed in {out_dir / TABLE} (--resume goes on from there)"
    except OSError:
        finished, listed = "?", f"{TABLE} could not be written either"
    print(f"error: could not write into {where}: {os_error_text(error)}; stopped after "
          f"{finished} of {total} image(s); {listed}", file=sys.stderr)
    return 1


def _collect(writing: deque[Future], sink, progress: tqdm, keep: int) -> None:
    """Wait for the oldest writes until at most `keep` are pending; hand their rows to `sink` in order."""
    while len(writing) > keep:
        row = writing.popleft().result()
        sink(row)
        progress.update()


def run(model: str, inputs: list[str], out: str, device: str = "auto", threshold: float | None = None,
        batch_size: int = 16, alpha: float = 0.4, overlays: bool = True, recursive: bool = False,
        quiet: bool = False, overwrite: bool = False, workers: int | None = None, estimate: bool = True,
        limits: quality.Limits = quality.DEFAULT_LIMITS, report: bool = True, resume: bool = False,
        part: tuple[int, int] | None = None, log_every: int = 0, ray: str | None = None) -> int:
    """The whole `lungseg predict` command.

    Args:
        model: the model file (checkpoint or export).
        inputs: image files and folders, as given.
        out: the --out folder.
        device: 'auto', 'cpu', 'cuda' or 'mps'.
        threshold: overrides the model's (None keeps it).
        batch_size: images per model call.
        alpha: the overlays' colour weight.
        overlays: write overlays (False: --no-overlays).
        recursive: also read the input folders' subfolders.
        quiet: no progress bar.
        overwrite: an earlier run's outputs in `out` may be replaced, and those this run did not write are
            deleted once it is done.
        workers: reading and writing threads (default: one per core; the results are the same for any number).
        estimate: fill the dice_estimate column (False: --no-estimate).
        limits: when a mask is flagged.
        report: write the review page, index.html, and its pictures (False: --no-report).
        resume: go on with the run `out` holds: the inputs its table lists are kept, the rest done.
        part: (K, N): segment only the K-th of N parts of the inputs (lungseg.inference.runs.in_part).
        log_every: print a plain progress line every this many images (0: none).
        ray: run on a Ray cluster at this address ("local": one started here; lungseg.inference.cluster),
            or None to run in this process.

    Returns:
        The exit code: 0 all written, 1 some files could not be read (or a write failed).

    Raises:
        LungsegError: for problems with the inputs, --out (lungseg.inference.outdir), the model, or an
            earlier run that --resume cannot go on with, before anything is written.
    """
    sources, skipped = list_inputs(inputs, recursive)
    jobs = [Job(source, name) for source, name in zip(sources, unique_names(sources))]
    positions = list(range(len(jobs)))
    if part is not None:  # names come from the whole listing, so every part names a file as the whole run does
        positions = [i for i, job in enumerate(jobs) if runs.in_part(runs.relative_name(job.source, inputs), part)]
        jobs = [jobs[i] for i in positions]
    folders, files = split_inputs(inputs)
    out_dir = check_out(out, OUTPUT_NAMES, overwrite or resume, input_folders=folders, input_files=[model, *files])
    predictor = load_predictor(model, device, threshold)
    check_available(predictor.preprocess["normalize"])  # e.g. clahe without OpenCV: stop before any output
    record = run_record(model, inputs, recursive, skipped, predictor, part, positions)
    done, page_current = 0, False
    if resume:
        # a finished run's page is written after its table: with both there and nothing left, it stays
        page_current = (out_dir / TABLE).is_file() and (out_dir / review.PAGE).is_file()
        runs.check_same_model(out_dir, record)
        finished = runs.earlier_rows(out_dir, TABLE)
        runs.check_prefix(finished, [job.source for job in jobs], out_dir)
        done = len(finished)
    elif (out_dir / runs.PARTIAL).is_file():
        (out_dir / runs.PARTIAL).unlink()  # an earlier killed run's rows, and --overwrite was given
    if warning := synthetic_warning(model, predictor.info):
        print(warning, file=sys.stderr)
    if estimate and predictor.estimator is None:
        print(quality.NO_ESTIMATOR.format(model=model), file=sys.stderr)
    runs.write_record(out_dir, record)
    outputs = Outputs(out_dir, alpha, overlays, predictor.preprocess["normalize"], estimate, limits, report)
    table = runs.TableWriter(out_dir, COLUMNS, TABLE)
    progress = Progress(len(jobs), done, log_every, len(skipped))
    try:
        if ray is None:
            predict_all(predictor, jobs[done:], outputs, batch_size, quiet, workers, sink=progress.counting(table.add))
        else:
            from lungseg.inference.cluster import predict_on_ray

            predict_on_ray(ray, model, device, threshold, jobs[done:], outputs, batch_size, progress.counting(table.add))
    except WriteFailed as failed:
        table.close()
        return stop_after(failed, out_dir, len(jobs))
    table.finish()  # the rows are read back from the table a pass at a time: 100,000 of them never wait in memory
    if report and not (page_current and done == len(jobs)):
        write_page(out_dir, runs.read_rows(out_dir / TABLE), record)
    if overwrite:
        remove_stale(out_dir, OUTPUT_NAMES, written_files(runs.read_rows(out_dir / TABLE), out_dir))
    total = failed = flagged = 0
    for row in runs.read_rows(out_dir / TABLE):
        total, failed, flagged = total + 1, failed + bool(row["error"]), flagged + bool(row["flag"])
    for line in skipped:
        print(f"skipped: {line}", file=sys.stderr)
    kept = f" ({done} kept from the earlier run)" if resume and done else ""
    kept += f" (part {part[0]}/{part[1]} of {len(sources)} listed; join the parts with lungseg merge)" if part else ""
    print(f"{total - failed} of {total + len(skipped)} file(s) segmented into {out_dir}{kept}"
          + (f"; {failed} could not be read (see the error column of {TABLE})" if failed else "")
          + (f"; {len(skipped)} skipped (listed above on stderr)" if skipped else ""))
    print(f"{flagged} of {total - failed} flagged: see the flag column of {TABLE}"
          + (f", or open {out_dir / review.PAGE} (worst first)" if report else ""))
    return 1 if failed else 0


def run_record(model: str, inputs: list[str], recursive: bool, skipped: list[str], predictor: Predictor,
               part: tuple[int, int] | None, positions: list[int]) -> dict:
    """What run.json says of a run (lungseg.inference.runs): the model and its sha256, the inputs,
    the skipped files, what the review page's header needs, and for a part its place."""
    header = review.model_header("", model, predictor.info)
    record = {"model": model, "model_sha256": runs.file_sha256(model), "inputs": inputs, "recursive": recursive,
              "skipped": skipped, "trained_on": header.trained_on, "saved": header.trained}
    if part is not None:
        record |= {"part": f"{part[0]}/{part[1]}", "positions": positions}
    return record


class Progress:
    """Counts of done, failed and flagged images as rows arrive, and with log_every a plain line
    every so many images: images per second and the time left (for batch logs).

    Args:
        total: the images of this run (part). done: those an earlier run finished (--resume).
        log_every: a line every this many images; 0 for none. skipped: inputs the listing passed over.
    """

    def __init__(self, total: int, done: int = 0, log_every: int = 0, skipped: int = 0):
        self.total, self.done, self.log_every, self.skipped = total, done, log_every, skipped
        self.failed = self.flagged = self.new = 0
        self.started = time.perf_counter()

    def counting(self, sink):
        """`sink`, counting each row on its way."""
        def count(row: dict) -> None:
            sink(row)
            self.done, self.new = self.done + 1, self.new + 1
            self.failed += bool(row["error"])
            self.flagged += bool(row["flag"])
            if self.log_every and (self.new % self.log_every == 0 or self.done == self.total):
                print(self.line(), file=sys.stderr, flush=True)
        return count

    def line(self) -> str:
        """One line: done of total, failed, skipped, flagged, images per second, time left."""
        rate = self.new / max(time.perf_counter() - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate else float("inf")
        return (f"{self.done} of {self.total} done, {self.failed} failed, {self.skipped} skipped, {self.flagged} flagged; "
                f"{rate:.1f} images/s, {_duration(left)} left")


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def write_page(folder: Path, rows: Iterable[dict], record: dict) -> Path:
    """The review page of the table in `folder`, from its rows as written and the run's record, so
    that a merged run's page equals the one an undivided run writes.

    Args:
        folder: the --out folder. rows: its table's rows, as text (read once). record: its run.json.
    """
    cards, flagged, failed = [], 0, len(record["skipped"])
    for row in rows:
        cards.append(review_card(folder, row))
        flagged, failed = flagged + bool(row["flag"]), failed + bool(row["error"])
    for line in record["skipped"]:
        source, _, why = line.partition(": ")
        cards.append(review.Card(name=Path(source).name, input=source, error=why or line))
    header = review.Header(title=f"lungseg predict: {', '.join(record['inputs'])}", model=record["model"],
                           trained_on=record["trained_on"], trained=record["saved"], images=len(cards),
                           flagged=flagged, unreadable=failed)
    return review.write_page(folder, review.worst_first(cards), header)


def review_card(folder: Path, row: dict) -> review.Card:
    """One table row as a card of the review page.

    Args:
        folder: the --out folder (where the pictures are looked for). row: the row, as text.
    """
    stem = Path(row["mask_file"]).stem if row["mask_file"] else ""
    thumbnail = f"{review.THUMBNAILS}/{stem}.jpg" if stem and (folder / review.THUMBNAILS / f"{stem}.jpg").is_file() else None
    return review.Card(name=Path(row["input"]).name, input=row["input"], thumbnail=thumbnail,
                       overlay=row["overlay_file"] or thumbnail, xray=f"{review.VIEWS}/{stem}.jpg" if thumbnail else None,
                       flags=row["flag"].split("; ") if row["flag"] else [], estimate=review.known(row["dice_estimate"]),
                       areas=review.area_words(row["right_lung_cm2"], row["left_lung_cm2"], row["right_lung_px"], row["left_lung_px"]),
                       error=row["error"])
