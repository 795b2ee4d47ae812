"""Read MetaData.csv into a clean table keyed by image id.

Only the columns asked for are kept (patient data beyond what evaluation needs stays out of
every output). Text values are stripped of the stray spaces and commas the real file has.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lungseg.data.layout import DataError


def read_metadata(path: Path | None, ids: list[str], columns: list[str]) -> pd.DataFrame:
    """Table with `id` plus `columns` for each id; empty strings where there is no metadata."""
    table = pd.DataFrame({"id": ids})
    if path is None:
        return table.assign(**{column: "" for column in columns})
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in ["id", *columns] if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {list(raw.columns)}")
    raw = raw[["id", *columns]].apply(lambda column: column.str.strip().str.strip(",").str.strip())
    duplicated = raw["id"][raw["id"].duplicated()].unique().tolist()
    if duplicated:
        raise DataError(f"{path}: id(s) listed more than once: {duplicated[:20]}")
    return table.merge(raw, on="id", how="left").fillna("")
