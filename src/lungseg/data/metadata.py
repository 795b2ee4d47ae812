"""Read MetaData.csv into a clean table keyed by image id.

Only the columns asked for are kept (patient data beyond what evaluation needs stays out of
every output). The real file is messy ("Male,", "femal", "16month", "39yr"): gender, age and
ptb are normalised, and the value as written is kept beside it in `<column>_raw`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from lungseg.data.layout import DataError

GENDERS = {"m": "male", "male": "male", "man": "male", "f": "female", "female": "female", "femal": "female",
           "fem": "female", "woman": "female", "o": "other", "other": "other"}
AGE_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)\s*(y|yr|yrs|year|years|m|mo|mos|month|months|d|day|days)?$")
YEARS_PER_UNIT = {"": 1.0, "y": 1.0, "yr": 1.0, "yrs": 1.0, "year": 1.0, "years": 1.0,
                  "m": 1 / 12, "mo": 1 / 12, "mos": 1 / 12, "month": 1 / 12, "months": 1 / 12,
                  "d": 1 / 365.25, "day": 1 / 365.25, "days": 1 / 365.25}
PTB_VALUES = {"0": "0", "1": "1", "no": "0", "yes": "1", "false": "0", "true": "1"}


def _clean(value: str) -> str:
    """Drop surrounding spaces and the stray punctuation the real file has ('Male,')."""
    return value.strip().strip(",;.").strip()


def normalise_gender(value: str) -> str:
    """'male', 'female', 'other', '' when blank, or 'unknown' when unreadable."""
    key = _clean(value).lower()
    return GENDERS.get(key, "unknown") if key else ""


def normalise_age(value: str) -> str:
    """Age in years as text ('1.33' for '16month', '45' for '045Y'); '' when blank or unreadable."""
    match = AGE_PATTERN.match(_clean(value).lower())
    if not match:
        return ""
    years = float(match.group(1)) * YEARS_PER_UNIT[match.group(2) or ""]
    return f"{years:g}" if years == int(years) else f"{years:.2f}"


def normalise_ptb(value: str) -> str:
    """Tuberculosis flag as '0' or '1'; '' when blank or unreadable."""
    return PTB_VALUES.get(_clean(value).lower(), "")


NORMALISERS = {"gender": normalise_gender, "age": normalise_age, "ptb": normalise_ptb}


def read_metadata(path: Path | None, ids: list[str], columns: list[str]) -> pd.DataFrame:
    """Table with `id` plus `columns` for each id (and `<column>_raw` for the normalised ones);
    empty strings where there is no metadata."""
    return clean_metadata(None if path is None else read_raw_metadata(path, columns), ids, columns)


def clean_metadata(raw: pd.DataFrame | None, ids: list[str], columns: list[str]) -> pd.DataFrame:
    """The table read_metadata returns, from a MetaData table already read (None: no file)."""
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


def read_raw_metadata(path: Path, columns: list[str]) -> pd.DataFrame:
    """MetaData.csv as written (all text), checked for the asked columns and unique ids."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in ["id", *columns] if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {list(raw.columns)}")
    raw["id"] = raw["id"].map(_clean)
    duplicated = raw["id"][raw["id"].duplicated()].unique().tolist()
    if duplicated:
        raise DataError(f"{path}: id(s) listed more than once: {duplicated[:20]}")
    return raw


def unreadable_values(raw: pd.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    """Per normalised column, the distinct non-blank values that could not be understood."""
    result = {}
    for column in columns:
        if column not in NORMALISERS or column not in raw.columns:
            continue
        values = raw[column][raw[column].map(_clean) != ""]
        bad = values[values.map(NORMALISERS[column]).isin(["", "unknown"])].unique().tolist()
        if bad:
            result[column] = bad
    return result
