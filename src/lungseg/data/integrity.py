"""Dataset integrity: what is wrong with a data folder, found in one pass.

Errors stop preprocessing (nothing is written): they would silently train on wrong pairs or
garbage. Warnings are reported and the run goes on: the data is usable but worth a look.

    error    unpaired file, the same id twice, unreadable or truncated file, mask and image
             sizes differ
    warning  constant image (every pixel the same), empty mask, almost-full mask, mask with more
             than two grey levels (thresholded), MetaData ids without files, files without a
             MetaData row, unreadable metadata values
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ALMOST_FULL = 0.9  # a lung mask covering more than this share of the image is almost surely wrong


@dataclass(frozen=True)
class Finding:
    level: str  # "error" or "warning"
    kind: str  # what is wrong, short: the summary groups by it
    detail: str  # the file(s) and values concerned


def error(kind: str, detail: str) -> Finding:
    return Finding("error", kind, detail)


def warning(kind: str, detail: str) -> Finding:
    return Finding("warning", kind, detail)


def mask_findings(mask_path: Path, fraction: float, levels: int, threshold: int) -> list[Finding]:
    """Warnings about one preprocessed mask: empty, almost full, or not a clean two-level mask."""
    found = []
    if fraction == 0:
        found.append(warning("empty mask", f"{mask_path}: no lung pixel after resizing and thresholding"))
    elif fraction > ALMOST_FULL:
        found.append(warning("almost-full mask", f"{mask_path}: {fraction:.0%} of the image is lung"))
    if levels > 2:
        found.append(warning("mask not binary", f"{mask_path}: {levels} grey levels, thresholded at > {threshold}"))
    return found


def metadata_findings(metadata_ids: list[str], file_ids: list[str], unreadable: dict[str, list[str]], path: Path) -> list[Finding]:
    """Warnings about MetaData.csv against the files actually there."""
    found = [warning("MetaData id without files", f"{path}: id {i!r} has no image") for i in sorted(set(metadata_ids) - set(file_ids))]
    found += [warning("file without MetaData row", f"id {i!r} is not in {path}") for i in sorted(set(file_ids) - set(metadata_ids))]
    found += [warning("unreadable metadata value", f"{path}: column {column}: {values[:10]}") for column, values in unreadable.items()]
    return found


def summary(findings: list[Finding]) -> pd.DataFrame:
    """One row per kind of finding: level, kind, count and a first example."""
    if not findings:
        return pd.DataFrame(columns=["level", "kind", "count", "example"])
    table = pd.DataFrame([f.__dict__ for f in findings])
    grouped = table.groupby(["level", "kind"], sort=False)
    return grouped.agg(count=("detail", "size"), example=("detail", "first")).reset_index()


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]


def warnings_of(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "warning"]
