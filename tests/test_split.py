"""Tests for lungseg.data.split: sizes, determinism, stratification and lookups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungseg.core.errors import DataError
from lungseg.data.processed import ids_in
from lungseg.data.split import PARTS, part_sizes, split_ids

FRACTIONS = (0.8, 0.1, 0.1)


def _index(n: int, counties: list[str] | None = None) -> pd.DataFrame:
    table = pd.DataFrame({"id": [str(1000 + i) for i in range(n)]})
    if counties is not None:
        table["county"] = counties
    return table


def _counts(split: pd.DataFrame) -> dict[str, int]:
    return {part: int((split["split"] == part).sum()) for part in PARTS}


# --------------------------------------------------------------------------- part_sizes


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 99, 100, 101, 704, 1000])
@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (1, 1, 1), (0.6, 0.3, 0.1)])
def test_part_sizes_sum_to_n_and_follow_the_fractions(n, fractions):
    sizes = part_sizes(n, fractions)
    assert len(sizes) == 3 and sum(sizes) == n
    exact = np.asarray(fractions) / sum(fractions) * n
    assert all(abs(size - e) < 1 for size, e in zip(sizes, exact))  # largest remainder: within 1 of exact


def test_part_sizes_known_cases():
    assert part_sizes(100, (0.8, 0.1, 0.1)) == [80, 10, 10]
    # 0.8 * 7 = 5.6, 0.1 * 7 = 0.7, 0.7: floors 5, 0, 0 leave 2 to the largest remainders (0.7, 0.7)
    assert part_sizes(7, (0.8, 0.1, 0.1)) == [5, 1, 1]
    # 10 / 3 = 3.33 each: one extra item goes to the first (stable order on ties)
    assert part_sizes(10, (1, 1, 1)) == [4, 3, 3]


# --------------------------------------------------------------------------- split_ids


@pytest.mark.parametrize("n", [100, 1000])
def test_split_sizes_match_the_fractions(n):
    split = split_ids(_index(n), FRACTIONS, seed=0, stratify_by=None)
    counts = _counts(split)
    for part, fraction in zip(PARTS, FRACTIONS):
        assert abs(counts[part] - fraction * n) <= 1
    assert set(split["split"]) == set(PARTS)


def test_split_keeps_every_id_once_in_index_order():
    index = _index(50)
    split = split_ids(index, FRACTIONS, seed=1, stratify_by=None)
    assert list(split.columns) == ["id", "split"]
    assert split["id"].tolist() == index["id"].tolist()
    assert split["split"].isin(PARTS).all()


def test_same_seed_same_table_and_another_seed_differs():
    index = _index(100, ["A"] * 60 + ["B"] * 40)
    first = split_ids(index, FRACTIONS, seed=7, stratify_by="county")
    again = split_ids(index, FRACTIONS, seed=7, stratify_by="county")
    other = split_ids(index, FRACTIONS, seed=8, stratify_by="county")
    pd.testing.assert_frame_equal(first, again)
    assert not first["split"].equals(other["split"])
    assert _counts(first) == _counts(other)  # only who goes where changes, not how many


def test_split_is_shuffled_not_cut_in_order():
    split = split_ids(_index(100), FRACTIONS, seed=0, stratify_by=None)
    assert split["split"].tolist() != ["train"] * 80 + ["val"] * 10 + ["test"] * 10


@pytest.mark.parametrize("n_a, n_b", [(80, 20), (192, 48), (37, 13)])
def test_stratification_keeps_each_county_share_in_every_part(n_a, n_b):
    counties = ["Shenxhen"] * n_a + ["Montgomery"] * n_b
    rng = np.random.default_rng(3)
    index = _index(n_a + n_b, list(rng.permutation(counties)))
    split = split_ids(index, FRACTIONS, seed=42, stratify_by="county")
    table = pd.crosstab(index["county"], split["split"])
    for county, n in (("Shenxhen", n_a), ("Montgomery", n_b)):
        expected = part_sizes(n, FRACTIONS)  # each county is cut on its own
        assert [table.loc[county, part] for part in PARTS] == expected


def test_stratification_beats_chance_on_a_small_minority():
    # 10 B out of 100: stratified, val and test each get exactly one B whatever the seed
    index = _index(100, ["A"] * 90 + ["B"] * 10)
    for seed in range(5):
        split = split_ids(index, FRACTIONS, seed=seed, stratify_by="county")
        b = split["split"][index["county"] == "B"]
        assert (b == "val").sum() == 1 and (b == "test").sum() == 1


def test_missing_or_empty_column_means_no_stratification():
    index = _index(100, [""] * 100)
    unstratified = split_ids(index.drop(columns="county"), FRACTIONS, seed=5, stratify_by=None)
    for column in ("county", "no_such_column", ""):
        split = split_ids(index, FRACTIONS, seed=5, stratify_by=column)
        pd.testing.assert_frame_equal(split, unstratified)


def test_empty_values_form_their_own_stratum():
    index = _index(20, ["A"] * 10 + [""] * 10)
    split = split_ids(index, FRACTIONS, seed=0, stratify_by="county")
    for value in ("A", ""):
        parts = split["split"][index["county"] == value]
        assert [int((parts == p).sum()) for p in PARTS] == part_sizes(10, FRACTIONS)


def test_split_works_with_a_non_default_row_index():
    index = _index(30, ["A", "B", "C"] * 10)
    index.index = range(100, 130)
    split = split_ids(index, FRACTIONS, seed=0, stratify_by="county")
    assert split["split"].isin(PARTS).all()
    assert _counts(split) == {"train": 24, "val": 3, "test": 3}


@pytest.mark.parametrize("fractions", [(0.8, 0.2), (0.8, 0.1, 0.1, 0.0), (0.9, 0.1, 0.0), (1.0, -0.1, 0.1)])
def test_invalid_fractions_raise(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_ids(_index(10), fractions, seed=0, stratify_by=None)


# --------------------------------------------------------------------------- ids_in


def test_ids_in_returns_the_part_in_table_order():
    table = pd.DataFrame({"id": ["3", "1", "2", "5"], "split": ["train", "test", "train", "val"]})
    assert ids_in(table, "train") == ["3", "2"]
    assert ids_in(table, "val") == ["5"]
    assert ids_in(table, "test") == ["1"]


def test_ids_in_returns_strings_even_for_numeric_ids():
    table = pd.DataFrame({"id": [10, 2], "split": ["train", "train"]})
    assert ids_in(table, "train") == ["10", "2"]


def test_ids_in_rejects_an_unknown_part():
    table = pd.DataFrame({"id": ["1"], "split": ["train"]})
    with pytest.raises(ValueError, match="validation"):
        ids_in(table, "validation")


def test_parts_partition_the_ids():
    index = _index(57, ["A"] * 30 + ["B"] * 27)
    split = split_ids(index, FRACTIONS, seed=0, stratify_by="county")
    parts = [ids_in(split, part) for part in PARTS]
    assert sorted(sum(parts, [])) == sorted(index["id"])
    assert not (set(parts[0]) & set(parts[1])) and not (set(parts[0]) & set(parts[2])) and not (set(parts[1]) & set(parts[2]))


def test_a_split_that_leaves_a_part_empty_is_refused_with_the_counts():
    index = pd.DataFrame({"id": [str(i) for i in range(5)]})
    with pytest.raises(DataError, match=r"leaves a part empty \({'train': 4, 'val': 1, 'test': 0}\)"):
        split_ids(index, (0.8, 0.1, 0.1), 0, None)
