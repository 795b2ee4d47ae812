"""Read MetaData.csv into a clean table keyed by image id.

Only the columns asked for are kept (patient data beyond what evaluation needs stays out of
every output). The real file is messy ("Male,", "femal", "16month", "39yr"): gender, age and
ptb are normalised, and the value as written is kept beside it in `<column>_raw`.

The file is read as people save it: UTF-8 with or without BOM, or Excel's cp1252 (reported in
a note), trailing commas, blank rows. Anything else becomes one DataError naming the file and
line, never a pandas or codec traceback.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lungseg.core.errors import DataError

GENDERS = {"m": "male", "male": "male", "man": "male", "f": "female", "female": "female", "femal": "female",
           "fem": "female", "woman": "female", "o": "other", "other": "other"}
AGE_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)\s*(y|yr|yrs|year|years|m|mo|mos|month|months|d|day|days)?$")
YEARS_PER_UNIT = {"": 1.0, "y": 1.0, "yr": 1.0, "yrs": 1.0, "year": 1.0, "years": 1.0,
                  "m": 1 / 12, "mo": 1 / 12, "mos": 1 / 12, "month": 1 / 12, "months": 1 / 12,
                  "d": 1 / 365.25, "day": 1 / 365.25, "days": 1 / 365.25}
PTB_VALUES = {"0": "0", "1": "1", "no": "0", "yes": "1", "false": "0", "true": "1"}
# Excel saves "CSV" in the Windows code page; cp1252 is the Western one. It leaves five bytes
# undefined, which Latin-1 (like cp1252 above 0x9F) reads as the code point of the same number.
CP1252_UNDEFINED = b"\x81\x8d\x8f\x90\x9d"
LATIN1_FOR_UNDEFINED = "lungseg-latin1-for-undefined"  # codec error handler, registered below


def _latin1_for_undefined(error: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler: the bytes cp1252 cannot decode, read as Latin-1."""
    return error.object[error.start:error.end].decode("latin-1"), error.end


codecs.register_error(LATIN1_FOR_UNDEFINED, _latin1_for_undefined)


def _clean(value: str) -> str:
    """Drop surrounding spaces and the stray punctuation the real file has ('Male,')."""
    return value.strip().strip(",;.").strip()


def normalise_gender(value: str) -> str:
    """A gender as written ('Male,', 'femal', 'M') in one spelling.

    Args:
        value: the value as written.

    Returns:
        'male', 'female', 'other', '' when blank, or 'unknown' when unreadable.
    """
    key = _clean(value).lower()
    return GENDERS.get(key, "unknown") if key else ""


def normalise_age(value: str) -> str:
    """An age as written ('16month', '045Y', '39yr') in years.

    Args:
        value: the value as written.

    Returns:
        Age in years as text ('1.33' for '16month', '45' for '045Y'); '' when blank or unreadable.
    """
    match = AGE_PATTERN.match(_clean(value).lower())
    if not match:
        return ""
    years = float(match.group(1)) * YEARS_PER_UNIT[match.group(2) or ""]
    return f"{years:g}" if years == int(years) else f"{years:.2f}"


def normalise_ptb(value: str) -> str:
    """A tuberculosis flag as written ('1', 'yes', 'false') as '0' or '1'.

    Args:
        value: the value as written.

    Returns:
        '0' or '1'; '' when blank or unreadable.
    """
    return PTB_VALUES.get(_clean(value).lower(), "")


NORMALISERS = {"gender": normalise_gender, "age": normalise_age, "ptb": normalise_ptb}


def read_metadata(path: Path | None, ids: list[str], columns: list[str]) -> pd.DataFrame:
    """Read MetaData.csv into a clean table keyed by image id.

    Args:
        path: the MetaData.csv file, or None when there is none.
        ids: the image ids, one row each, in this order.
        columns: the metadata columns to keep.

    Returns:
        Table with `id` plus `columns` for each id (and `<column>_raw` for the normalised ones);
        empty strings where there is no metadata.

    Raises:
        DataError: the file cannot be read or used (read_raw_metadata_with_notes).
    """
    return clean_metadata(None if path is None else read_raw_metadata(path, columns), ids, columns)


def clean_metadata(raw: pd.DataFrame | None, ids: list[str], columns: list[str]) -> pd.DataFrame:
    """The table read_metadata returns, from a MetaData table already read.

    Args:
        raw: read_raw_metadata's table (None: no file).
        ids: the image ids, one row each, in this order.
        columns: the metadata columns to keep; gender, age and ptb are normalised.

    Returns:
        `id` plus `columns` (and `<column>_raw` for the normalised ones); empty strings where there is no metadata.
    """
    table = pd.DataFrame({"id": ids})
    if raw is None:
        return table.assign(**{name: "" for name in _output_columns(columns)})
    clean = raw[["id"]].copy()
    for column in columns:
        normalise = NORMALISERS.get(column, _clean)
        clean[column] = raw[column].map(normalise)
        if column in NORMALISERS:
            clean[f"{column}_raw"] = raw[column].str.strip()
    return table.merge(clean, on="id", how="left").fillna("")


def _output_columns(columns: list[str]) -> list[str]:
    return [name for column in columns for name in ([column, f"{column}_raw"] if column in NORMALISERS else [column])]


@dataclass(frozen=True)
class RawMetadata:
    """MetaData.csv as read: the table, the encoding it was read with, and warnings for the user."""

    table: pd.DataFrame  # `id` plus the columns asked for, all text, ids unique
    encoding: str  # "utf-8", "utf-8-sig" (with BOM), "utf-16" or "cp1252" (guessed: see notes)
    notes: tuple[str, ...] = ()  # one line each, naming the file; show them as warnings


def read_raw_metadata(path: Path, columns: list[str]) -> pd.DataFrame:
    """MetaData.csv as written (all text): `id` plus `columns`, checked for unique ids.

    Args:
        path: the MetaData.csv file.
        columns: the columns to keep besides `id`.

    Returns:
        The table, one row per id.

    Raises:
        DataError: as read_raw_metadata_with_notes.
    """
    return read_raw_metadata_with_notes(path, columns).table


def read_raw_metadata_with_notes(path: Path, columns: list[str]) -> RawMetadata:
    """read_raw_metadata, plus the encoding used and the notes (a guessed encoding) to show.

    Args:
        path: the MetaData.csv file.
        columns: the columns to keep besides `id`.

    Returns:
        The table, the encoding it was read with, and the notes.

    Raises:
        DataError: naming the file (and line), when it is unreadable, binary, empty, only a header, or not CSV;
            lacks a column asked for or repeats one; has a row of the wrong width; or an id is empty or repeated.
    """
    text, encoding, notes = _decode(path, _read_bytes(path))
    records = _records(path, text)
    wanted = list(dict.fromkeys(["id", *columns]))
    if not records:
        raise DataError(f"{path}: the file is empty; expected a header line such as "
                        f"'{','.join(wanted)}' and one row per image id")
    header_line, _, header = records[0]
    header = _trim([name.strip() for name in header])
    missing = [c for c in ["id", *columns] if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {[name for name in header if name]}")
    repeated = [c for c in wanted if header.count(c) > 1]
    if repeated:
        raise DataError(f"{path}, line {header_line}: column(s) {repeated} appear more than once in the header")
    if len(records) == 1:
        raise DataError(f"{path}: only a header, no data rows; expected one row per image id below it")
    positions = [header.index(c) for c in wanted]
    rows = [[fields[i] for i in positions] for fields in _fitted_rows(path, records[1:], len(header))]
    raw = pd.DataFrame(rows, columns=wanted, dtype=str)
    raw["id"] = raw["id"].map(_clean)
    _check_ids(path, raw, [first for first, _, _ in records[1:]])
    return RawMetadata(raw, encoding, notes)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; a missing or unreadable file is a DataError, not an OSError."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None


def _decode(path: Path, data: bytes) -> tuple[str, str, tuple[str, ...]]:
    """The text, the encoding it was read with, and a note when that encoding was guessed."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode Text"
        try:
            return _no_nul(path, data.decode("utf-16")), "utf-16", ()
        except UnicodeDecodeError:
            pass  # not UTF-16 after all: read it as bytes below
    try:
        encoding = "utf-8-sig" if data.startswith(codecs.BOM_UTF8) else "utf-8"
        return _no_nul(path, data.decode("utf-8-sig")), encoding, ()
    except UnicodeDecodeError as error:
        first_bad, line = data[error.start], _line_at(data[: error.start].decode("latin-1"))
    text = data.removeprefix(codecs.BOM_UTF8).decode("cp1252", errors=LATIN1_FOR_UNDEFINED)
    gaps = " (bytes cp1252 leaves undefined as Latin-1)" if any(bytes([b]) in data for b in CP1252_UNDEFINED) else ""
    note = (f"{path}: not UTF-8 (byte 0x{first_bad:02X} on line {line}), so it was read as cp1252, "
            f"Excel's Western encoding{gaps}; check accented names, or save it as 'CSV UTF-8'")
    return _no_nul(path, text), "cp1252", (note,)


def _no_nul(path: Path, text: str) -> str:
    """`text`, unless it holds NUL characters: then the file is binary (or UTF-16 without BOM)."""
    if "\x00" in text:
        line = _line_at(text[: text.index("\x00")])
        raise DataError(f"{path}, line {line}: holds NUL bytes, so it is not "
                        f"CSV text; expected comma-separated text (save it from Excel as 'CSV UTF-8')")
    return text


def _line_at(before: str) -> int:
    """1-based line number of the character after `before`, counting line ends as csv does."""
    return len(re.findall(r"\r\n|\r|\n", before)) + 1


def _records(path: Path, text: str) -> list[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of each CSV row that holds something. Rows with nothing
    but spaces and commas are skipped, as Excel writes them for formatted empty rows."""
    reader = csv.reader(io.StringIO(text, newline=""))  # newline="": quoted line breaks stay in values
    records, first = [], 1
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                records.append((first, reader.line_num, fields))
            first = reader.line_num + 1
    except csv.Error as error:  # e.g. a field past csv's size limit: an open quote running on
        raise DataError(f"{path}, line {first}: not readable as CSV ({error}); is a quote left open?") from None
    return records


def _trim(fields: list[str]) -> list[str]:
    """`fields` without the empty ones at the end (a trailing comma)."""
    end = len(fields)
    while end and not fields[end - 1].strip():
        end -= 1
    return fields[:end]


def _fitted_rows(path: Path, records: list[tuple[int, int, list[str]]], width: int) -> list[list[str]]:
    """Each row cut to `width` fields: extra empty ones (trailing commas) are dropped; extra
    values, or missing fields, are a DataError naming the line."""
    rows = []
    for first, last, fields in records:
        if len(fields) > width and not any(field.strip() for field in fields[width:]):
            fields = fields[:width]
        if len(fields) != width:
            why = (" (a comma inside a value must be quoted)" if len(fields) > width
                   else " (every row needs one field per column, empty ones included)")
            runs_on = f"; the row runs on to line {last}: is a quote left open?" if last > first else ""
            raise DataError(f"{path}, line {first}: {len(fields)} fields, but the header has {width}{why}{runs_on}")
        rows.append(fields)
    return rows


def _check_ids(path: Path, raw: pd.DataFrame, lines: list[int]) -> None:
    """Every row has an id, and no id is listed twice (`lines`: each row's line in the file)."""
    blank = [line for line, id_ in zip(lines, raw["id"]) if not id_]
    if blank:
        raise DataError(f"{path}, line {blank[0]}: the id is empty; every row needs the image id in column 'id'")
    duplicated = raw["id"][raw["id"].duplicated()].unique().tolist()
    if duplicated:
        raise DataError(f"{path}: id(s) listed more than once: {duplicated[:20]}")


def unreadable_values(raw: pd.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    """Per normalised column, the distinct non-blank values that could not be understood.

    Args:
        raw: read_raw_metadata's table.
        columns: the columns kept; only gender, age and ptb (NORMALISERS) are checked.

    Returns:
        {column: its unreadable values, in order of appearance}, for the columns that have any.
    """
    result = {}
    for column in columns:
        if column not in NORMALISERS or column not in raw.columns:
            continue
        values = raw[column][raw[column].map(_clean) != ""]
        bad = values[values.map(NORMALISERS[column]).isin(["", "unknown"])].unique().tolist()
        if bad:
            result[column] = bad
    return result
