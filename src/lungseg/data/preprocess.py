"""Turn a data folder into compact training arrays.

Output (one folder): images.npy (uint8 N x S x S, greyscale scaled to 0..255), masks.npy
(uint8 N x S x S, values 0/1) and index.csv (id, source files, original size, metadata).
Images are stored as uint8 to keep the arrays small (a 128 px set of 704 images is 12 MB);
the training code divides by 255 to get the [0, 1] range the model sees.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.core.config import PreprocessConfig
from lungseg.core.errors import DataError, ImageReadError
from lungseg.core.io import worker_pool
from lungseg.data.images import max_pixels, read_resized, set_max_pixels
from lungseg.data.integrity import (
    Finding,
    empty_masks_finding,
    error,
    errors,
    mask_findings,
    metadata_findings,
    orientation_finding,
    outline_finding,
    warning,
)
from lungseg.data.layout import Layout, find_layout, pair_files, skip_reason, source_names
from lungseg.data.metadata import clean_metadata, read_raw_metadata_with_notes, unreadable_values
from lungseg.data.normalize import NORMALIZE_KEYS, check_available, normalize_image


@dataclass
class PreparedPair:
    """One image and its mask, prepared for training (fields: see comments)."""

    image: np.ndarray  # uint8 S x S
    mask: np.ndarray  # uint8 S x S, 0/1
    original_size: tuple[int, int]  # (height, width)
    findings: list[Finding] = field(default_factory=list)  # warnings about this pair


def finish_image(small: np.ndarray, settings: PreprocessConfig) -> np.ndarray:
    """A resized float image in [0, 1] -> the uint8 array the model is trained on.

    Args:
        small: the resized image, floats in about [0, 1] (clipped first: Lanczos overshoots at sharp edges).
        settings: the preprocess section; normalised as settings.normalize says (lungseg.data.normalize).

    Returns:
        uint8 S x S.

    Raises:
        LungsegError: clahe without OpenCV.
    """
    small = np.clip(small, 0.0, 1.0)  # Lanczos overshoots slightly at sharp edges
    return normalize_image(small, settings)


def finish_mask(small: np.ndarray, settings: PreprocessConfig) -> np.ndarray:
    """A resized mask in [0, 1] -> 0/1 uint8, lung where above mask_threshold (0..255 scale).

    Args:
        small: the resized mask, floats in [0, 1].
        settings: the preprocess section (mask_threshold).

    Returns:
        uint8 S x S, 0/1.
    """
    return (small * 255 > settings.mask_threshold).astype(np.uint8)


def prepare_image(path: str | Path, settings: PreprocessConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """One X-ray prepared exactly as for training (for prediction on new images).

    Args:
        path: the X-ray file.
        settings: the preprocess section the model was trained with.

    Returns:
        The uint8 S x S array and the original (height, width).

    Raises:
        ImageReadError: naming the file.
    """
    image = read_resized(path, settings.image_size)
    return finish_image(image.values, settings), image.original_size


def prepare_pair(paths: tuple[Path, Path], settings: PreprocessConfig, lung_labels: tuple[int, ...] = ()) -> PreparedPair | Finding:
    """Read and shrink one image and its mask.

    A pair that cannot be used comes back as an error Finding instead of an exception, so that one pass over
    the data reports every bad file.

    Args:
        paths: (image file, mask file).
        settings: the preprocess section.
        lung_labels: which labels of a label-map mask are lung (data.lung_labels; () = every one).

    Returns:
        The prepared pair with its warnings; or an error Finding for an unreadable file or sizes that differ.
    """
    image_path, mask_path = paths
    try:
        image = read_resized(image_path, settings.image_size)
        mask = read_resized(mask_path, settings.image_size, is_mask=True, lung_labels=lung_labels)
    except ImageReadError as problem:
        return error("unreadable file", str(problem))
    turned = orientation_finding(image_path, mask_path, image.orientation, mask.orientation)
    if image.original_size != mask.original_size:
        (ih, iw), (mh, mw) = image.original_size, mask.original_size
        why = f"; they carry different EXIF orientations ({image.orientation} and {mask.orientation})" if turned else ""
        return error("size mismatch", f"{mask_path}: mask size {mw}x{mh} differs from its image's {iw}x{ih} ({image_path}){why}")
    small_mask = finish_mask(mask.values, settings)
    findings = mask_findings(mask_path, float(small_mask.mean()), mask.levels, settings.mask_threshold, mask.colours,
                             mask.rule, outline_finding(mask_path, small_mask))
    findings += [turned] if turned else []
    if image.values.max() - image.values.min() < 1e-6:
        findings.append(warning("constant image", f"{image_path}: every pixel has the same value"))
    return PreparedPair(finish_image(image.values, settings), small_mask, image.original_size, findings)


def _map_pairs(pairs: pd.DataFrame, settings: PreprocessConfig, lung_labels: tuple[int, ...] = ()) -> list[PreparedPair | Finding]:
    work = list(zip(pairs["image_path"], pairs["mask_path"]))
    task = partial(prepare_pair, settings=settings, lung_labels=lung_labels)
    workers = min(settings.workers or os.cpu_count() or 1, len(work))
    if workers <= 1:
        return [task(item) for item in work]
    pool = worker_pool(workers, initializer=_start_worker, initargs=(max_pixels(),))
    try:
        return list(pool.map(task, work, chunksize=max(1, len(work) // (4 * workers))))
    finally:  # after Ctrl-C, drop the queued images instead of waiting for them
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(limit: int) -> None:
    """Each worker: Ctrl-C is the parent's to handle (one "interrupted" line, not a traceback
    per worker), and the pixel limit is the parent's (workers started by spawn, on macOS and
    Windows, would not inherit one set with set_max_pixels)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_max_pixels(limit)


@dataclass
class Scan:
    """Everything read from a data folder, and everything found wrong with it.

    Fields with a comment beside them are described there; the others:

    Attributes:
        data_dir: the data folder.
        layout: its layout (lungseg.data.layout.find_layout).
        findings: every error, warning and note about it.
    """

    data_dir: Path
    layout: Layout
    pairs: pd.DataFrame  # id, image_path, mask_path of the complete pairs
    prepared: list[PreparedPair]  # one per usable pair
    findings: list[Finding]
    n_pairs: int  # complete pairs found, usable or not
    metadata: pd.DataFrame | None  # MetaData.csv as written, read once (None: no file)


def scan_folder(data_dir: str | Path, settings: PreprocessConfig, lung_labels: tuple[int, ...] = ()) -> Scan:
    """Read and check every pair under `data_dir` (all cores), collecting every problem.

    Args:
        data_dir: a data folder in either layout (lungseg.data.layout).
        settings: the preprocess section (workers: processes, 0 = every core).
        lung_labels: which labels of label-map masks are lung (data.lung_labels; () = every one).

    Returns:
        The scan; its findings hold every problem with the data files.

    Raises:
        DataError: the folder has no layout or no images, or its MetaData.csv cannot be used.
        LungsegError: clahe without OpenCV (checked before anything is read).
    """
    data_dir = Path(data_dir)
    check_available(settings.normalize)
    layout = find_layout(data_dir)
    pairing = pair_files(layout)
    pairs = pairing.pairs
    findings = [error("unpaired or duplicate file", p) for p in pairing.problems]
    findings += [warning("skipped file", skip_reason(path)) for path in pairing.skipped]
    # MetaData.csv before the images: a broken file stops the run before minutes of decoding
    metadata, metadata_problems = _read_metadata(layout, list(settings.metadata_columns), pairing.ids_with_files)
    findings += metadata_problems
    results = _map_pairs(pairs, settings, lung_labels)
    findings += [r for r in results if isinstance(r, Finding)]
    for result in results:
        findings += result.findings if isinstance(result, PreparedPair) else []
    findings = _judge_empty_masks(findings, pairs["mask_path"], results)
    usable = [isinstance(r, PreparedPair) for r in results]
    prepared = [r for r in results if isinstance(r, PreparedPair)]
    return Scan(data_dir, layout, pairs[usable].reset_index(drop=True), prepared, findings, len(pairs), metadata)


def _read_metadata(layout, columns: list[str], ids_with_files: set[str]) -> tuple[pd.DataFrame | None, list[Finding]]:
    """MetaData.csv as written (None when there is none) and the warnings about it: a guessed
    encoding, ids without files and the reverse, values that cannot be read."""
    if layout.metadata_path is None:
        return None, []
    raw = read_raw_metadata_with_notes(layout.metadata_path, columns)
    findings = [warning("MetaData.csv encoding", note) for note in raw.notes]
    unreadable = unreadable_values(raw.table, columns)
    findings += metadata_findings(raw.table["id"].tolist(), sorted(ids_with_files), unreadable, layout.metadata_path)
    return raw.table, findings


def _judge_empty_masks(findings: list[Finding], mask_paths: pd.Series, results: list[PreparedPair | Finding]) -> list[Finding]:
    """`findings` with the per-mask "empty mask" warnings replaced by one error when every mask
    read, or more than half of them, is empty (integrity.empty_masks_finding).

    mask_paths: the mask of each pair, in the order of `results`. results: what prepare_pair gave for each.
    """
    read = [(path, r) for path, r in zip(mask_paths, results) if isinstance(r, PreparedPair)]
    empty = [path for path, r in read if not r.mask.any()]
    too_many = empty_masks_finding(empty, len(read))
    if too_many is None:
        return findings
    return [f for f in findings if f.kind != "empty mask"] + [too_many]


def preprocess_folder(data_dir: str | Path, settings: PreprocessConfig,
                      lung_labels: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Read every pair under `data_dir` into training arrays.

    Args:
        data_dir: a data folder.
        settings: the preprocess section.
        lung_labels: as in scan_folder.

    Returns:
        (images, masks, index) as assemble gives them.

    Raises:
        DataError: listing every error found (and as scan_folder).
    """
    scan = scan_folder(data_dir, settings, lung_labels)
    raise_on_errors(scan)
    return assemble(scan, settings)


def raise_on_errors(*scans: Scan) -> None:
    """Raise one DataError listing the errors of every scan (each data folder), if any has one.

    Args:
        *scans: scan_folder's results.

    Raises:
        DataError: listing every error of every scan, and which folders they are in.
    """
    faulty = [(scan, problems) for scan in scans if (problems := errors(scan.findings))]
    if not faulty:
        return
    where = ", ".join(f"{scan.data_dir} ({scan.n_pairs} image/mask pairs found)" for scan, _ in faulty)
    raise DataError(f"{sum(len(problems) for _, problems in faulty)} problem(s) with the data under {where}; "
                    "nothing was written:",
                    [f"{p.kind}: {p.detail}" for _, problems in faulty for p in problems])


def assemble(scan: Scan, settings: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The arrays and index table of a scan's usable pairs.

    Args:
        scan: scan_folder's result, free of errors (raise_on_errors).
        settings: the preprocess section it was read with (metadata_columns).

    Returns:
        images (uint8 N x S x S), masks (uint8 N x S x S, 0/1) and the index: id, image_file and mask_file
        (relative to the data folder), height, width, then the metadata columns.
    """
    pairs, prepared = scan.pairs, scan.prepared
    index = pd.DataFrame({
        "id": pairs["id"],
        "image_file": [str(p.relative_to(scan.data_dir)) for p in pairs["image_path"]],
        "mask_file": [str(p.relative_to(scan.data_dir)) for p in pairs["mask_path"]],
        "height": [r.original_size[0] for r in prepared],
        "width": [r.original_size[1] for r in prepared],
    })
    metadata = clean_metadata(scan.metadata, list(pairs["id"]), list(settings.metadata_columns))
    index = index.merge(metadata, on="id", how="left")
    return np.stack([r.image for r in prepared]), np.stack([r.mask for r in prepared]), index


ID_SEPARATOR = "__"  # between the source and the file's id, when there are several data folders


def assemble_sources(scans: list[Scan], settings: PreprocessConfig,
                     names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The arrays and index of one scan per data folder, with a `source` column naming each image's folder.

    The scans come in DataConfig.dirs' order. With one folder, ids and file paths are as assemble
    gives them (ids are file stems, paths are relative to the folder), so existing split files keep
    their ids. With several, every id becomes <source>__<stem> (two folders may hold the same stem)
    and every file path starts with its folder as data.dir gives it, so the paths resolve from the
    project folder (index_root). MetaData.csv columns are empty for the images of folders without one.

    Args:
        scans: scan_folder's result for each folder, each free of errors (raise_on_errors).
        settings: the preprocess settings the scans were read with.
        names: each folder's source name (DataConfig.names); None: the folders' own names, made
            unique (layout.source_names).

    Returns:
        (images, masks, index) of every folder, in order; the index has `source` as its second column.

    Raises:
        DataError: an id occurs more than once across the folders; or two folders are the same (names None).
    """
    names = names or source_names([scan.data_dir for scan in scans])
    images, masks, tables = [], [], []
    for name, scan in zip(names, scans):
        scan_images, scan_masks, index = assemble(scan, settings)
        index.insert(1, "source", name)
        if len(scans) > 1:
            index["id"] = name + ID_SEPARATOR + index["id"].astype(str)
            for column in ("image_file", "mask_file"):
                index[column] = [str(scan.data_dir / file) for file in index[column]]
        images.append(scan_images)
        masks.append(scan_masks)
        tables.append(index)
    index = pd.concat(tables, ignore_index=True)
    repeated = index["id"][index["id"].duplicated()].unique().tolist()
    if repeated:
        raise DataError(f"id(s) {repeated[:20]} occur more than once across the data folders {[str(s.data_dir) for s in scans]}; "
                        "rename the files or the folders so that <folder name>__<file name> is unique")
    return np.concatenate(images), np.concatenate(masks), index


def preparation(settings: PreprocessConfig) -> dict:
    """The settings a model needs to prepare new images as its training images were.

    They are stored in settings.json, then in the checkpoint and exports.

    Args:
        settings: the preprocess section.

    Returns:
        {key: value} of image_size, normalize, mask_threshold and the normalisation's settings (NORMALIZE_KEYS).
    """
    keys = ("image_size", "normalize", "mask_threshold", *NORMALIZE_KEYS)
    return {key: getattr(settings, key) for key in keys}
