"""What makes a `lungseg predict` run resumable and divisible: its record, its table written row by
row, the part of the inputs it owns, and the merge of parts.

- **The record** (run.json) says what the run is: the model (and its sha256), the inputs as
  given, the listing's skipped files, and for a part its place (K/N) and the positions of its
  inputs in the whole listing. `--resume` refuses a folder started with another model, and
  `lungseg merge` refuses parts of different runs.
- **The table** is appended one row at a time, in input order, to predictions.partial.csv, and
  renamed to predictions.csv when the run ends; each row is added only after its mask and
  pictures are written (atomically). A run killed at any point leaves a prefix of the rows (a
  torn last line is dropped on resume), so `--resume` redoes only the inputs after it, and ends
  with the files an uninterrupted run writes.
- **A part** (`--part K/N`) owns the inputs whose relative path hashes to K among N, so adding
  files elsewhere in an archive never moves a file to another part.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from lungseg.core.errors import DataError
from lungseg.core.io import atomic_path, write_json

RECORD = "run.json"
PARTIAL = "predictions.partial.csv"


# --------------------------------------------------------------------------- parts


def parse_part(text: str) -> tuple[int, int]:
    """"K/N" -> (K, N), with 1 <= K <= N.

    Raises:
        ValueError: for anything else (argparse turns it into a usage error).
    """
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit()) or not 1 <= int(k) <= int(n):
        raise ValueError(f"expected K/N with 1 <= K <= N, e.g. 2/8; got {text!r}")
    return int(k), int(n)


def relative_name(source: str, inputs: list[str]) -> str:
    """The path of `source` below the input folder it was found in (the path as given for a file
    named directly): what decides its part."""
    for given in inputs:
        if Path(given).is_dir():
            try:
                return Path(source).relative_to(given).as_posix()
            except ValueError:
                continue
    return Path(source).as_posix()


def in_part(name: str, part: tuple[int, int]) -> bool:
    """Whether the input with relative path `name` belongs to part (K, N): sha256 of the name, modulo N."""
    k, n = part
    return int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) % n == k - 1


# --------------------------------------------------------------------------- the record


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_record(folder: Path) -> dict | None:
    """The run.json of an earlier run in `folder`, or None."""
    path = folder / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def check_same_model(folder: Path, record: dict) -> None:
    """Refuse to resume in `folder` with another model than the run it holds.

    Raises:
        DataError: naming both models, when the earlier run's model differs (by content).
    """
    earlier = read_record(folder)
    if earlier is not None and earlier.get("model_sha256") != record["model_sha256"]:
        raise DataError(f"--resume: {folder} holds a run of {earlier.get('model')} (sha256 {earlier.get('model_sha256', '?')[:12]}), "
                        f"not of {record['model']} (sha256 {record['model_sha256'][:12]}); give the same model, "
                        "or another --out")


def write_record(folder: Path, record: dict) -> None:
    write_json(record, folder / RECORD)


# --------------------------------------------------------------------------- the table


def _line(columns: list[str], row: dict) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if row.get(c) is None else str(row[c]) for c in columns])
    return buffer.getvalue()


class TableWriter:
    """predictions.partial.csv, appended a row at a time (header first), renamed when done.

    Args:
        folder: the --out folder. columns: the CSV's columns. table: the final name.
    """

    def __init__(self, folder: Path, columns: list[str], table: str):
        self.path, self.final, self.columns = folder / PARTIAL, folder / table, columns
        new = not self.path.is_file()
        self.handle = open(self.path, "a", encoding="utf-8", newline="")
        if new:
            self.handle.write(_line(columns, {c: c for c in columns}))
            self.handle.flush()

    def add(self, row: dict) -> None:
        """Append one row; flushed, so a killed run keeps every row added before."""
        self.handle.write(_line(self.columns, row))
        self.handle.flush()

    def finish(self) -> Path:
        """Close and rename to the final name; returns it."""
        self.handle.close()
        os.replace(self.path, self.final)
        return self.final

    def close(self) -> None:
        self.handle.close()


def earlier_rows(folder: Path, table: str) -> list[dict]:
    """The rows an earlier run of `folder` finished, in order: those of predictions.partial.csv
    (a torn last line cut off, in the file too), else of a finished predictions.csv, which then
    becomes the partial table again so that the run appends to it.

    Args:
        folder: the --out folder. table: the final table's name.
    """
    partial, final = folder / PARTIAL, folder / table
    if not partial.is_file():
        if not final.is_file():
            return []
        os.replace(final, partial)
    data = partial.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):  # killed inside a row
        with open(partial, "r+b") as handle:
            handle.truncate(len(whole))
    return list(csv.DictReader(io.StringIO(whole.decode("utf-8"))))


def check_prefix(rows: list[dict], sources: list[str], folder: Path) -> None:
    """Refuse to resume when the earlier rows are not the first inputs of this listing.

    Raises:
        DataError: naming the first row that differs.
    """
    if len(rows) > len(sources):
        raise DataError(f"--resume: {folder} already lists {len(rows)} images, more than the {len(sources)} given now; "
                        "give the same inputs, or another --out")
    for i, (row, source) in enumerate(zip(rows, sources)):
        if row["input"] != source:
            raise DataError(f"--resume: row {i + 1} of the earlier run in {folder} is {row['input']}, where this listing "
                            f"has {source}; give the same inputs (and --part), or another --out")


def read_rows(path: Path) -> Iterator[dict]:
    """The rows of a predictions table, as text (empty cells as "")."""
    with open(path, encoding="utf-8", newline="") as handle:
        yield from csv.DictReader(handle)


# --------------------------------------------------------------------------- merge


PICTURE_COLUMNS = ("mask_file", "overlay_file")


def merge_parts(parts: list[Path], out: Path, columns: list[str], table: str, pictures: Iterable[str]) -> tuple[dict, int]:
    """Join the outputs of every part of one run into `out`: the table in the order of the whole
    listing, and each row's files (hard links where the filesystem allows, else copies).

    Args:
        parts: the --out folders of the N parts. out: the merged folder (empty or new).
        columns: the table's columns. table: its name. pictures: the folders of per-image files
            besides masks and overlays (the review page's), copied when present.

    Returns:
        The record of the whole run (as an unpartitioned run writes it) and the number of rows.

    Raises:
        DataError: for parts of different runs or models, a part missing or given twice, or an
            unfinished part.
    """
    records = []
    for folder in parts:
        record = read_record(folder)
        if record is None or record.get("part") is None:
            raise DataError(f"{folder}: not a part of a lungseg predict run (no run.json with a part); "
                            "parts are made by lungseg predict --part K/N")
        if not (folder / table).is_file():
            raise DataError(f"{folder}: part {record['part']} is unfinished (no {table}); finish it with --resume first")
        records.append(record)
    first = records[0]
    for folder, record in zip(parts, records):
        if record["model_sha256"] != first["model_sha256"]:
            raise DataError(f"parts made by different models: {parts[0]} by {first['model']}, {folder} by {record['model']}")
        if record["inputs"] != first["inputs"] or record["recursive"] != first["recursive"]:
            raise DataError(f"parts of different runs: {parts[0]} read {first['inputs']}, {folder} read {record['inputs']}")
    given = sorted(parse_part(record["part"]) for record in records)
    expected = given[0][1]
    if [k for k, _ in given] != list(range(1, expected + 1)) or any(n != expected for _, n in given):
        raise DataError(f"merge needs each of the {expected} parts once; given: {', '.join(r['part'] for r in records)}")
    # each part's rows are in the whole listing's order already: merge the streams, holding no table
    streams = [_placed(i, folder, record["positions"], table) for i, (folder, record) in enumerate(zip(parts, records))]
    count = 0
    with atomic_path(out / table) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(_line(columns, {c: c for c in columns}))
        for _, _, folder, row in heapq.merge(*streams, key=lambda item: item[:2]):
            handle.write(_line(columns, {c: row.get(c) or None for c in columns}))
            _link_files(folder, out, row, pictures)
            count += 1
    whole = {key: value for key, value in first.items() if key not in ("part", "positions")}
    write_record(out, whole)
    return whole, count


def _placed(number: int, folder: Path, positions: list[int], table: str) -> Iterator[tuple]:
    """(position in the whole listing, part number, folder, row) for each row of one part's table."""
    for position, row in zip(positions, read_rows(folder / table)):
        yield position, number, folder, row


def _link_files(part: Path, out: Path, row: dict, pictures: Iterable[str]) -> None:
    names = [row[column] for column in PICTURE_COLUMNS if row.get(column)]
    if row.get("mask_file"):
        stem = Path(row["mask_file"]).stem
        names += [f"{folder}/{stem}.jpg" for folder in pictures if (part / folder / f"{stem}.jpg").is_file()]
    for name in names:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(part / name, target)
        except OSError:
            shutil.copy2(part / name, target)
