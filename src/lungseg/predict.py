"""`lungseg predict MODEL INPUT... --out DIR`: lung masks, overlays and a table for new X-rays.

Every image goes through the one inference path (lungseg.inference.Predictor), prepared exactly
as the training images were, and its mask is resized back to the image's original size:

    DIR/masks/<stem>.png      the mask, 0/255, 8-bit greyscale, original size
    DIR/overlays/<stem>.png   the X-ray in grey with the lungs in red (unless --no-overlays)
    DIR/predictions.csv       one row per input, in input order

Two inputs with the same stem (from different folders) get `<stem>-2`, `<stem>-3`, ... in the
order given; the CSV's mask_file and overlay_file columns say which file belongs to which input.
A file that cannot be read gets a row with `error` filled and its other fields empty, and the
run goes on; the command then exits 1.

Lung sides: in a standard PA (postero-anterior) chest X-ray the patient faces the viewer, so the
patient's RIGHT lung appears on the image's LEFT side. Of the two largest connected components
of the final mask, the one whose centroid lies further left in the image is counted as the right
lung (right_lung_px) and the other as the left lung (left_lung_px). With a single component, it
is the right lung when its centroid lies in the left half of the image, the left lung otherwise,
and the other count is 0. AP or mirrored images swap the two.
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
from scipy import ndimage
from tqdm import tqdm

from lungseg.config import PreprocessConfig
from lungseg.data.images import IMAGE_SUFFIXES, ImageReadError, read_grayscale
from lungseg.data.preprocess import prepare_image
from lungseg.errors import DataError, LungsegError
from lungseg import inference
from lungseg.inference import Predictor
from lungseg.io import atomic_path, write_csv
from lungseg.viz import overlay, save_mask_png

COLUMNS = ["input", "mask_file", "overlay_file", "height", "width", "lung_fraction",
           "right_lung_px", "left_lung_px", "n_components", "error"]
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # as lungseg.postprocess counts components


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


@dataclass(frozen=True)
class LungSides:
    right_px: int  # the patient's right lung: the image's left side
    left_px: int
    n_components: int


# --------------------------------------------------------------------------- the model


def load_predictor(model_path: str | Path, device: str = "auto", threshold: float | None = None) -> Predictor:
    """The one place a model file becomes a Predictor: a checkpoint (.pth), an ONNX file (.onnx,
    run by onnxruntime, no PyTorch model needed) or a TorchScript file (lungseg.inference.load_predictor)."""
    try:
        return inference.load_predictor(model_path, device, threshold)
    except RuntimeError as problem:  # e.g. --device cuda on a machine without a GPU
        raise LungsegError(f"{model_path}: cannot load the model on device {device!r}: {problem}") from None


# --------------------------------------------------------------------------- inputs


def list_inputs(inputs: list[str], recursive: bool = False, skip: tuple[Path, ...] = ()) -> list[str]:
    """Image files named by `inputs` (files as given; folders: their image files, sorted), each
    file once, in order. Raises DataError before anything is written when a path does not exist
    or no image is found. Folder contents under a `skip` folder (earlier outputs) are left out."""
    missing = [given for given in inputs if not Path(given).exists()]
    if missing:
        raise DataError(f"{len(missing)} input path(s) not found; nothing was written:", missing)
    unique: dict[Path, str] = {}
    for given in inputs:
        found = images_in(given, recursive, skip) if Path(given).is_dir() else [given]
        for source in found:  # the same file named twice (a folder and a file in it) is done once
            unique.setdefault(Path(source).resolve(), source)
    if not unique:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in: {', '.join(inputs)}"
                        + ("" if recursive else " (add --recursive to look in subfolders)"))
    return list(unique.values())


def images_in(folder: str, recursive: bool = False, skip: tuple[Path, ...] = ()) -> list[str]:
    """Image files in `folder` (and below it with `recursive`), sorted; hidden files and
    folders (such as macOS '._x.png' companions) are skipped, as the data loader does."""
    root = Path(folder)
    skipped = [path.resolve() for path in skip]
    candidates = root.rglob("*") if recursive else root.iterdir()
    relative = sorted(path.relative_to(root) for path in candidates if _is_input_image(path, root, skipped))
    return [os.path.join(folder, str(path)) for path in relative]


def _is_input_image(path: Path, root: Path, skipped: list[Path]) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    if hidden or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        return False
    return not any(path.resolve().is_relative_to(done) for done in skipped)


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


# --------------------------------------------------------------------------- one batch


def predict_batch(predictor: Predictor, jobs: list[Job], settings: PreprocessConfig) -> Iterator[tuple[Job, np.ndarray | ImageReadError]]:
    """The native-size mask (uint8 0/1) of each job in order, or the error that kept its file
    from being read. Masks are made one at a time, so only one full-size image is in memory."""
    prepared = []
    for job in jobs:
        try:
            prepared.append(prepare_image(job.source, settings))
        except ImageReadError as problem:
            prepared.append(problem)
    readable = [item for item in prepared if not isinstance(item, ImageReadError)]
    probabilities = iter(predictor.probabilities(np.stack([image for image, _ in readable]), len(readable)) if readable else [])
    for job, item in zip(jobs, prepared):
        yield job, item if isinstance(item, ImageReadError) else predictor.native_mask(next(probabilities), item[1])


# --------------------------------------------------------------------------- one result


def lung_sides(mask: np.ndarray) -> LungSides:
    """Pixels of the patient's right and left lung in a PA X-ray mask (see the module docstring)."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return LungSides(0, 0, 0)
    sizes = np.bincount(labels.ravel())[1:]
    largest = np.argsort(sizes, kind="stable")[::-1][:2] + 1
    columns = [ndimage.center_of_mass(labels == label)[1] for label in largest]
    pixels = [int(sizes[label - 1]) for label in largest]
    if len(largest) == 2:
        right, left = (0, 1) if columns[0] < columns[1] else (1, 0)
        return LungSides(pixels[right], pixels[left], count)
    on_image_left = columns[0] < (mask.shape[1] - 1) / 2
    return LungSides(pixels[0] if on_image_left else 0, 0 if on_image_left else pixels[0], count)


def display_grey(source: str, normalize: str) -> np.ndarray:
    """The X-ray at full size in [0, 1] for the overlay, stretched as the model saw it (a 12-bit
    image stored in 16 bits would otherwise be nearly black)."""
    grey = read_grayscale(source)
    if normalize == "minmax":
        low, high = float(grey.min()), float(grey.max())
        grey = (grey - low) / max(high - low, 1e-6)
    return np.clip(grey, 0.0, 1.0)


def save_rgb_png(pixels: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def write_result(job: Job, mask: np.ndarray, outputs: Outputs) -> dict:
    """Write one image's mask (and overlay) and return its CSV row. The X-ray is read for the
    overlay before anything is written, so a file that fails now leaves no outputs behind."""
    grey = display_grey(job.source, outputs.normalize) if outputs.overlays else None
    mask_file = Path("masks") / f"{job.name}.png"
    save_mask_png(mask, outputs.folder / mask_file)
    overlay_file = ""
    if grey is not None:
        overlay_file = str(Path("overlays") / f"{job.name}.png")
        save_rgb_png(overlay(grey, mask, alpha=outputs.alpha), outputs.folder / overlay_file)
    sides = lung_sides(mask)
    return {"input": job.source, "mask_file": str(mask_file), "overlay_file": overlay_file,
            "height": mask.shape[0], "width": mask.shape[1], "lung_fraction": float(mask.mean()),
            "right_lung_px": sides.right_px, "left_lung_px": sides.left_px,
            "n_components": sides.n_components, "error": ""}


def error_row(job: Job, problem: Exception) -> dict:
    """The CSV row of an image that failed: only the input and the reason."""
    return {**dict.fromkeys(COLUMNS, None), "input": job.source, "error": str(problem)}


def write_table(rows: list[dict], path: Path) -> None:
    """predictions.csv, atomically. Object columns keep whole numbers whole next to empty cells."""
    write_csv(pd.DataFrame(rows, columns=COLUMNS, dtype=object), path)


# --------------------------------------------------------------------------- the command


def predict_all(predictor: Predictor, jobs: list[Job], outputs: Outputs, batch_size: int, quiet: bool = False) -> list[dict]:
    """Run every job in batches and write its outputs; return the CSV rows in job order.
    Unreadable files are reported on stderr (one line each) and become error rows."""
    settings = PreprocessConfig(**predictor.preprocess)
    rows = []
    # disable=None: the bar shows on a terminal and stays out of logs and pipes
    with tqdm(total=len(jobs), unit="image", disable=True if quiet else None, file=sys.stderr) as progress:
        for start in range(0, len(jobs), batch_size):
            for job, outcome in predict_batch(predictor, jobs[start:start + batch_size], settings):
                rows.append(result_row(job, outcome, outputs))
                progress.update()
    return rows


def result_row(job: Job, outcome: np.ndarray | ImageReadError, outputs: Outputs) -> dict:
    try:
        if isinstance(outcome, ImageReadError):
            raise outcome
        return write_result(job, outcome, outputs)
    except ImageReadError as problem:  # the message already names the file
        tqdm.write(f"error: {problem}", file=sys.stderr)
        return error_row(job, problem)


def run(model: str, inputs: list[str], out: str, device: str = "auto", threshold: float | None = None,
        batch_size: int = 16, alpha: float = 0.4, overlays: bool = True, recursive: bool = False,
        quiet: bool = False) -> int:
    """The whole command; returns the exit code: 0 all written, 1 some files could not be read.
    Problems with the inputs or the model raise LungsegError before anything is written."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder")
    # a rerun with --recursive over a folder holding DIR must not segment the last run's masks
    sources = list_inputs(inputs, recursive, skip=(out_dir / "masks", out_dir / "overlays"))
    predictor = load_predictor(model, device, threshold)
    jobs = [Job(source, name) for source, name in zip(sources, unique_names(sources))]
    outputs = Outputs(out_dir, alpha, overlays, predictor.preprocess.get("normalize", "minmax"))
    rows = predict_all(predictor, jobs, outputs, batch_size, quiet)
    write_table(rows, out_dir / "predictions.csv")
    failed = sum(bool(row["error"]) for row in rows)
    print(f"{len(rows) - failed} of {len(rows)} image(s) segmented into {out_dir}"
          + (f"; {failed} could not be read (see the error column of predictions.csv)" if failed else ""))
    return 1 if failed else 0
