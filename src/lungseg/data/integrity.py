"""Dataset integrity: what is wrong with a data folder, found in one pass.

Errors stop preprocessing (nothing is written): they would silently train on wrong pairs or
garbage. Warnings are reported and the run goes on: the data is usable but worth a look.

    error    unpaired file, the same id twice, unreadable or truncated file, mask and image
             sizes differ, every mask or more than half of them empty (a mask format lungseg
             reads differently from what was meant), a mask drawn as outlines (not filled)
    warning  constant image (every pixel the same), empty mask, almost-full mask, mask with more
             than two grey levels (thresholded), palette or colour mask with more than one
             colour besides black, image and mask with different EXIF orientations, files in
             image/ or mask/ that were not read, MetaData ids without files, files without a
             MetaData row, unreadable metadata values
    note     how a mask other than plain grey levels was read (a label map, a 16-bit 0/255 mask)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

ALMOST_FULL = 0.9  # a lung mask covering more than this share of the image is almost surely wrong
# A filled lung has most of its pixels inside (on the 282 real masks of ../shared/data at 128 px,
# at most 15 % lie on the edge); an outline drawn 3-8 px wide on a 512 px X-ray is nearly all edge
# (96-100 %), whether or not it is closed
OUTLINE_EDGE_SHARE = 0.5
# ... and a small mask is nearly all edge too (a 4 px wide blob at 16 px): an outline must also
# have more edge than twice what two round lungs of its area would (lungs are longer than round)
OUTLINE_EDGE_FACTOR = 2.0
MOSTLY_EMPTY = 0.5  # more than this share of empty masks means the masks are misread, not unlabelled
NAMED = 3  # empty masks named in the one error about them
MASK_RULES = ("lungseg reads lung as a grey value above preprocess.mask_threshold (0..255; 16-bit masks holding "
              "only 0..255 are read as 8-bit), any non-zero label of a label map (every value at most 15: 0/1, "
              "1 = right and 2 = left lung, ...), a non-zero palette index, any non-black RGB colour, or the "
              "alpha channel when only alpha varies")


@dataclass(frozen=True)
class Finding:
    """One thing found about a data folder (fields: see comments)."""

    level: str  # "error", "warning" or "note" (how a file was read: nothing wrong)
    kind: str  # what is wrong, short: the summary groups by it
    detail: str  # the file(s) and values concerned


def error(kind: str, detail: str) -> Finding:
    """An error: it stops preprocessing.

    Args:
        kind: what is wrong, short (the summary groups by it).
        detail: the file(s) and values concerned.

    Returns:
        The Finding.
    """
    return Finding("error", kind, detail)


def warning(kind: str, detail: str) -> Finding:
    """A warning: reported, and the run goes on.

    Args:
        kind: what is wrong, short (the summary groups by it).
        detail: the file(s) and values concerned.

    Returns:
        The Finding.
    """
    return Finding("warning", kind, detail)


def note(kind: str, detail: str) -> Finding:
    """A note: how a file was read, nothing wrong.

    Args:
        kind: what it says, short (the summary groups by it).
        detail: the file(s) and values concerned.

    Returns:
        The Finding.
    """
    return Finding("note", kind, detail)


def outline_finding(mask_path: Path, mask: np.ndarray) -> Finding | None:
    """The error for a mask whose lungs are drawn as outlines, not filled.

    Args:
        mask_path: the mask file, named in the error.
        mask: the preprocessed 0/1 mask (model size).

    Returns:
        The error Finding; None for a mask that is not an outline.
    """
    lung = np.asarray(mask).astype(bool)
    area = int(lung.sum())
    inside = ndimage.binary_erosion(lung, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    edge = area - int(inside.sum())
    two_discs = 2 * np.sqrt(2 * np.pi * area)  # the edge of two discs holding `area` pixels together
    if not area or edge <= OUTLINE_EDGE_SHARE * area or edge <= OUTLINE_EDGE_FACTOR * two_discs:
        return None
    edge_share = edge / area
    return error("mask looks like an outline", f"{mask_path}: {edge_share:.0%} of its lung pixels lie on its edge "
                 "(a filled lung: under 20 %): the lungs seem drawn as outlines; fill them (e.g. "
                 "scipy.ndimage.binary_fill_holes on each outline) and save the mask again")


def mask_findings(mask_path: Path, fraction: float, levels: int, threshold: int, colours: int = 0,
                  rule: str = "", outline: Finding | None = None) -> list[Finding]:
    """Warnings about one preprocessed mask: empty, almost full, or not a clean two-level mask.

    Also a note saying how a mask other than plain grey levels was read, and its outline error if any.

    Args:
        mask_path: the mask file.
        fraction: its share of lung pixels after resizing and thresholding.
        levels: distinct grey levels at full size.
        threshold: the mask threshold (0..255).
        colours: non-black colours of a palette or colour mask (images.Resized.colours; 0 for others).
        rule: how it was read (images.Resized.rule; "" for plain grey levels).
        outline: outline_finding's error for this mask, if any.

    Returns:
        The findings, the note first; empty for a clean mask.
    """
    found = [note("mask read by rule", f"{mask_path}: {rule}")] if rule else []
    if outline is not None:
        found.append(outline)
    if fraction == 0:
        found.append(warning("empty mask", f"{mask_path}: no lung pixel after resizing and thresholding"))
    elif fraction > ALMOST_FULL:
        found.append(warning("almost-full mask", f"{mask_path}: {fraction:.0%} of the image is lung"))
    if levels > 2:
        found.append(warning("mask not binary", f"{mask_path}: {levels} grey levels, thresholded at > {threshold}"))
    if colours > 1:
        counted = f"over {colours - 1}" if colours > 256 else str(colours)
        found.append(warning("mask with several colours", f"{mask_path}: {counted} colours besides black (palette index 0); "
                                                          "all of them are read as lung (expected black and one colour)"))
    return found


def orientation_finding(image_path: Path, mask_path: Path, image_orientation: int, mask_orientation: int) -> Finding | None:
    """A warning when an image and its mask carry different EXIF orientations (1 or none: upright).

    Both are read turned as a viewer shows them; a mask drawn on the image as stored would then
    be turned differently from it.

    Args:
        image_path: the image of the pair.
        mask_path: its mask.
        image_orientation: the image's EXIF orientation tag.
        mask_orientation: the mask's EXIF orientation tag.

    Returns:
        The warning; None when the orientations are the same.
    """
    if image_orientation == mask_orientation:
        return None
    return warning("orientation differs", f"{mask_path}: EXIF orientation {mask_orientation}, its image {image_path} has "
                                          f"{image_orientation} (1 = upright); both are read as a viewer shows them: "
                                          "check that the mask lines up with the image")


def empty_masks_finding(empty: list[Path], n_masks: int) -> Finding | None:
    """One error when every mask, or more than half of them, is empty.

    The masks are then almost surely in a format read differently from what was meant, not unlabelled.

    Args:
        empty: the mask files with no lung pixel after resizing and thresholding.
        n_masks: how many masks were read.

    Returns:
        The error, naming the first few empty masks and how lungseg reads masks; None otherwise.
    """
    if not empty or (len(empty) < n_masks and len(empty) <= MOSTLY_EMPTY * n_masks):
        return None
    named = ", ".join(str(path) for path in empty[:NAMED]) + (", ..." if len(empty) > NAMED else "")
    if len(empty) == n_masks:
        share = "the only mask is" if n_masks == 1 else f"all {n_masks} masks are"
    else:
        share = f"{len(empty)} of {n_masks} masks are"
    return error("empty masks", f"{share} empty (no lung pixel after resizing and thresholding), e.g. {named}; "
                                f"check the mask format: {MASK_RULES}")


def metadata_findings(metadata_ids: list[str], file_ids: list[str], unreadable: dict[str, list[str]], path: Path) -> list[Finding]:
    """Warnings about MetaData.csv against the files actually there.

    Args:
        metadata_ids: the ids MetaData.csv lists.
        file_ids: the ids with an image or mask file.
        unreadable: per column, the values that could not be understood (metadata.unreadable_values).
        path: the MetaData.csv file, named in the warnings.

    Returns:
        One warning per id without files, per file id without a row, and per column with unreadable values.
    """
    found = [warning("MetaData id without files", f"{path}: id {i!r} has no image") for i in sorted(set(metadata_ids) - set(file_ids))]
    found += [warning("file without MetaData row", f"id {i!r} is not in {path}") for i in sorted(set(file_ids) - set(metadata_ids))]
    found += [warning("unreadable metadata value", f"{path}: column {column}: {values[:10]}") for column, values in unreadable.items()]
    return found


def summary(findings: list[Finding]) -> pd.DataFrame:
    """One row per kind of finding: level, kind, count and a first example.

    Args:
        findings: the findings to summarise.

    Returns:
        A table with columns level, kind, count and example, in the order the kinds first occur.
    """
    if not findings:
        return pd.DataFrame(columns=["level", "kind", "count", "example"])
    table = pd.DataFrame([f.__dict__ for f in findings])
    grouped = table.groupby(["level", "kind"], sort=False)
    return grouped.agg(count=("detail", "size"), example=("detail", "first")).reset_index()


def errors(findings: list[Finding]) -> list[Finding]:
    """The findings of level "error", in order.

    Args:
        findings: any findings.

    Returns:
        The errors among them.
    """
    return [f for f in findings if f.level == "error"]


def warnings_of(findings: list[Finding]) -> list[Finding]:
    """The findings of level "warning", in order.

    Args:
        findings: any findings.

    Returns:
        The warnings among them.
    """
    return [f for f in findings if f.level == "warning"]
