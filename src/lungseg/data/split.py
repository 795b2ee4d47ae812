"""Seeded train/val/test split, stratified by data folder and by a metadata column.

Stratifying by hospital (the `county` column: Montgomery or Shenzhen) keeps each hospital's
share the same in every part, so the test score is not skewed by which site landed where.
When data.dir names several folders, the index's `source` column is a stratum too (combined
with the metadata column: each source's counties are cut apart), so every folder keeps its
share in train, val and test whatever split.stratify_by says.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungseg.core.errors import DataError
from lungseg.data.processed import PARTS


def part_sizes(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Split n items into three counts in proportion to `fractions`, rounding by largest remainder.

    Args:
        n: the number of items.
        fractions: (train, val, test) shares; they need not sum to 1.

    Returns:
        [train, val, test] counts, summing to n.
    """
    exact = np.asarray(fractions, dtype=float) / sum(fractions) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def split_ids(index: pd.DataFrame, fractions: tuple[float, float, float], seed: int, stratify_by: str | None) -> pd.DataFrame:
    """Table id -> split ('train', 'val' or 'test'), in the order of `index`.

    Rows are grouped by `source` (when it holds several values) and by `stratify_by` (when
    that column exists and is filled); each group is shuffled with the seed and cut by
    `fractions`. Empty values form a group of their own.

    Args:
        index: the processed set's index (id, and the columns to stratify by).
        fractions: (train, val, test) shares, each positive.
        seed: seed of the shuffle.
        stratify_by: a metadata column; None or "" for none.

    Returns:
        Table with columns id (as text) and split.

    Raises:
        ValueError: `fractions` are not three positive numbers.
        DataError: the split leaves a part empty.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions):
        raise ValueError(f"split fractions must be three positive numbers (train, val, test), got {fractions}")
    groups = _strata(index, stratify_by)
    rng = np.random.default_rng(seed)
    assignment = pd.Series("", index=index.index, dtype=object)
    for _, rows in sorted(groups.items()):
        shuffled = rng.permutation(np.asarray(rows))
        bounds = np.cumsum(part_sizes(len(shuffled), fractions))
        for part, chunk in zip(PARTS, np.split(shuffled, bounds[:-1])):
            assignment.loc[chunk] = part
    table = pd.DataFrame({"id": index["id"].astype(str), "split": assignment.values})
    counts = {part: int((table["split"] == part).sum()) for part in PARTS}
    if min(counts.values()) == 0:
        raise DataError(f"the split of {len(table)} images leaves a part empty ({counts}); "
                        f"use more images or larger split fractions (split.train/val/test = {fractions})")
    return table


def _strata(index: pd.DataFrame, column: str | None) -> dict[str, list]:
    """Row labels of `index` per stratum, keyed by the stratum's values joined with '|'."""
    columns = ["source"] if "source" in index.columns and index["source"].nunique() > 1 else []
    if column and column != "source" and column in index.columns and (index[column].astype(str).str.len() > 0).any():
        columns.append(column)
    if not columns:
        return {"all": list(index.index)}
    keys = index[columns].astype(str).agg("|".join, axis=1)
    return {str(k): list(v) for k, v in index.groupby(keys).groups.items()}
