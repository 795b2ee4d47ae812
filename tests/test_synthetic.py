"""Tests for the synthetic chest X-ray phantoms and their Kaggle-layout writer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import lungseg.data.synthetic as synthetic
from lungseg.data.synthetic import METADATA_COLUMNS, SITES, HardCases, generate_dataset, make_phantom

PAIRS = ("Chest-X-Ray", "Chest-X-Ray")


def _image_dir(root):
    return root.joinpath(*PAIRS, "image")


def _mask_dir(root):
    return root.joinpath(*PAIRS, "mask")


def _all_files(root):
    """Relative path -> bytes of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    table = generate_dataset(out, n_images=8, seed=3, min_size=40, max_size=72, workers=1)
    return out, table


def test_layout_and_metadata_columns(dataset):
    out, table = dataset
    assert sorted(p.name for p in out.iterdir()) == ["Chest-X-Ray", "MetaData.csv"]
    metadata = pd.read_csv(out / "MetaData.csv", dtype=str, keep_default_na=False)
    assert list(metadata.columns) == ["id", "gender", "age", "county", "ptb", "remarks"]
    assert list(table.columns) == METADATA_COLUMNS
    assert metadata["id"].tolist() == [str(i) for i in range(8)]
    assert set(metadata["county"]) <= set(SITES)
    assert set(metadata["ptb"]) <= {"0", "1"}
    assert sorted(p.name for p in _image_dir(out).iterdir()) == sorted(f"{i}.png" for i in range(8))
    assert sorted(p.name for p in _mask_dir(out).iterdir()) == sorted(f"{i}.png" for i in range(8))


def test_images_and_masks_are_valid_pairs(dataset):
    out, _ = dataset
    for image_path in _image_dir(out).iterdir():
        with Image.open(image_path) as image, Image.open(_mask_dir(out) / image_path.name) as mask:
            assert image.mode == "L" and mask.mode == "L"
            assert image.size == mask.size
            pixels, labels = np.asarray(image), np.asarray(mask)
        assert set(np.unique(labels).tolist()) == {0, 255}
        assert pixels.dtype == np.uint8
        assert np.percentile(pixels, 95) - np.percentile(pixels, 5) > 60, "image has no real contrast"


def test_sizes_within_range_and_not_all_square(dataset):
    out, _ = dataset
    sizes = [Image.open(p).size for p in _image_dir(out).iterdir()]
    assert all(40 <= w <= 72 and 40 <= h <= 72 for w, h in sizes)
    assert all(0.74 <= h / w <= 1.34 for w, h in sizes)
    assert any(w != h for w, h in sizes)


def test_metadata_is_messy_like_the_real_file(tmp_path):
    table = generate_dataset(tmp_path / "d", n_images=60, seed=11, min_size=16, max_size=20, workers=1)
    assert table["county"].nunique() == 2
    assert 0.1 < (table["ptb"] == 1).mean() < 0.7
    # more spellings than the two clean ones, and ages with units: the loader must cope
    assert table["gender"].nunique() > 2
    assert table["age"].str.contains(r"[A-Za-z]").any()
    # ptb=1 cases carry a finding in their remarks, normal cases don't
    assert not table.loc[table["ptb"] == 1, "remarks"].str.contains("normal").any()


def test_same_seed_gives_identical_files_whatever_the_workers(tmp_path):
    args = dict(n_images=5, seed=21, min_size=32, max_size=64)
    generate_dataset(tmp_path / "a", workers=1, **args)
    generate_dataset(tmp_path / "b", workers=2, **args)
    generate_dataset(tmp_path / "c", workers=1, **{**args, "seed": 22})
    a, b, c = (_all_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a) >= 5, "a different seed should change most files"


def test_make_phantom_is_a_function_of_the_generator_state():
    first = make_phantom(np.random.default_rng(5), 50, 60, "PhantomB", ptb=True)
    again = make_phantom(np.random.default_rng(5), 50, 60, "PhantomB", ptb=True)
    other = make_phantom(np.random.default_rng(6), 50, 60, "PhantomB", ptb=True)
    assert first[0].shape == (50, 60) and first[1].shape == (50, 60)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def _largest_regions(mask):
    """Sizes of the 4-connected foreground regions of a small boolean mask (flood fill)."""
    seen = np.zeros_like(mask)
    sizes = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, size = [start], 0
        seen[start] = True
        while stack:
            r, c = stack.pop()
            size += 1
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    stack.append((nr, nc))
        sizes.append(size)
    return sorted(sizes, reverse=True)


@pytest.mark.parametrize("site", SITES)
def test_masks_are_two_plausible_lungs(site):
    for i in range(6):
        _, mask = make_phantom(np.random.default_rng([1, i]), 96, 88, site, ptb=i % 2 == 0)
        lung = mask > 0
        assert 0.10 < lung.mean() < 0.50
        regions = _largest_regions(lung)
        # two big fields (the heart may nick off a crumb, nothing more)
        assert len(regions) >= 2 and regions[1] > 0.25 * regions[0]
        assert sum(regions[2:]) < 0.02 * lung.sum()
        left, right = lung[:, :44].sum(), lung[:, 44:].sum()
        assert left > 0 and right > 0


def _best_threshold_dice(image, mask):
    """Best Dice over all thresholds t in 0..255, both 'lung = image <= t' and 'lung = image >= t'."""
    lung = mask > 0
    inside = np.bincount(image[lung], minlength=256).astype(float)
    outside = np.bincount(image[~lung], minlength=256).astype(float)
    darker_tp, darker_fp = np.cumsum(inside), np.cumsum(outside)
    brighter_tp, brighter_fp = np.cumsum(inside[::-1])[::-1], np.cumsum(outside[::-1])[::-1]
    darker = 2 * darker_tp / (darker_tp + darker_fp + lung.sum())
    brighter = 2 * brighter_tp / (brighter_tp + brighter_fp + lung.sum())
    return max(darker.max(), brighter.max())


def test_best_threshold_dice_helper_is_right_on_an_easy_image():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 255
    image = np.where(mask > 0, 40, 200).astype(np.uint8)
    assert _best_threshold_dice(image, mask) == pytest.approx(1.0)


def test_a_global_threshold_cannot_segment_the_phantoms():
    scores = []
    for i in range(12):
        rng = np.random.default_rng([2024, i])
        image, mask = make_phantom(rng, 96, 104, SITES[i % 2], ptb=i % 3 == 0)
        scores.append(_best_threshold_dice(image, mask))
    # an oracle threshold chosen per image, with the mask known, still falls well short
    assert np.mean(scores) < 0.85
    # ... yet the lungs are visibly darker than the body (the task is learnable, not noise)
    assert np.mean(scores) > 0.45


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_images=0), "n_images"),
        (dict(min_size=15), "min_size"),
        (dict(min_size=64, max_size=32), "max_size"),
        (dict(seed=-1), "seed"),
        (dict(workers=-2), "workers"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(tmp_path, kwargs, name):
    args = dict(n_images=2, seed=0, min_size=16, max_size=32, workers=1) | kwargs
    with pytest.raises(ValueError, match=name):
        generate_dataset(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_unknown_site_is_rejected():
    with pytest.raises(ValueError, match="site"):
        make_phantom(np.random.default_rng(0), 32, 32, "Montgomery")


def test_regenerating_replaces_the_dataset_atomically(tmp_path):
    out = tmp_path / "data"
    generate_dataset(out, n_images=4, seed=1, min_size=24, max_size=40, workers=1)
    (out / "stale.txt").write_text("left over from an older dataset")
    generate_dataset(out, n_images=2, seed=2, min_size=24, max_size=40, workers=2)
    assert [p.name for p in tmp_path.iterdir()] == ["data"], "no temp or backup folders left behind"
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in _image_dir(out).iterdir()) == ["0.png", "1.png"]
    assert len(pd.read_csv(out / "MetaData.csv")) == 2


def test_failed_run_leaves_the_old_dataset_and_no_temp_dir(tmp_path, monkeypatch):
    import lungseg.data.synthetic as synthetic

    out = tmp_path / "data"
    generate_dataset(out, n_images=3, seed=1, min_size=24, max_size=40, workers=1)
    before = _all_files(out)

    def explode(case):
        if case.index == 1:
            raise RuntimeError("interrupted")
        return original(case)

    original = synthetic._write_case
    monkeypatch.setattr(synthetic, "_write_case", explode)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_dataset(out, n_images=3, seed=9, min_size=24, max_size=40, workers=1)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert _all_files(out) == before


# ----------------------------------------------------------------------------- hard cases

HARD = HardCases(text=0.5, low_contrast=0.5, dense_opacity=0.5, rotated=0.5, cropped=0.5)


def _phantom(case: str, index: int = 0):
    """The same phantom (same generator seed) without and with one hard case."""
    plain = make_phantom(np.random.default_rng([7, index]), 120, 110, SITES[index % 2])
    hard = make_phantom(np.random.default_rng([7, index]), 120, 110, SITES[index % 2], hard=frozenset({case}))
    return plain, hard


def test_hard_cases_are_byte_identical_on_rerun_whatever_the_workers(tmp_path):
    args = dict(n_images=6, seed=4, min_size=48, max_size=80, hard=HARD)
    generate_dataset(tmp_path / "a", workers=1, **args)
    generate_dataset(tmp_path / "b", workers=2, **args)
    generate_dataset(tmp_path / "c", workers=1, **{**args, "hard": HardCases()})
    a, b, c = (_all_files(tmp_path / name) for name in "abc")
    assert a == b
    assert sum(a[k] != c[k] for k in a if k.startswith("Chest")) >= 4, "hard cases should change most images"


def test_zero_fractions_draw_nothing_so_old_datasets_stay_the_same():
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert HardCases().draw(rng) == frozenset()
    assert rng.bit_generator.state == state
    drawn = [HardCases(text=1.0, cropped=0.5).draw(np.random.default_rng(i)) for i in range(40)]
    assert all("text" in d and d <= {"text", "cropped"} for d in drawn)
    assert 5 < sum("cropped" in d for d in drawn) < 35


def test_burned_in_text_is_bright_and_leaves_the_mask():
    for index in range(4):
        (image, mask), (marked, marked_mask) = _phantom("text", index)
        assert np.array_equal(mask, marked_mask)
        changed = marked != image
        assert changed.any() and (marked[changed] >= 225).all()


def test_low_contrast_narrows_the_grey_range():
    for index in range(4):
        (image, _), (grey, _) = _phantom("low_contrast", index)
        spread = np.percentile(image, 99) - np.percentile(image, 1)
        assert np.percentile(grey, 99) - np.percentile(grey, 1) < 0.6 * spread


def test_dense_opacity_is_a_bright_patch_in_the_lower_lung():
    grid = synthetic.Grid.of(80, 60)
    mask = np.zeros((80, 60), bool)
    mask[10:70, 8:26] = True  # one lung field
    for seed in range(4):
        density = np.zeros((80, 60), np.float32)
        synthetic._add_dense_opacity(np.random.default_rng(seed), density, mask, grid)
        row, col = np.unravel_index(np.argmax(density), density.shape)
        assert density.max() > 0.2  # about the lung's air depth: the field turns tissue-bright there
        assert mask[row, col] and row >= 40  # centred in the lower half of the lung


def test_rotation_turns_image_and_mask_together():
    for index in range(4):
        (image, mask), (turned, turned_mask) = _phantom("rotated", index)
        assert not np.array_equal(mask, turned_mask)
        assert set(np.unique(turned_mask).tolist()) == {0, 255}
        assert abs(int((turned_mask > 0).sum()) / int((mask > 0).sum()) - 1) < 0.1  # a turn keeps the area
        lung = turned_mask > 0
        assert turned[lung].mean() < turned[~lung].mean()  # the dark fields are still where the mask is


def test_cropped_field_enlarges_the_lungs_and_keeps_the_size():
    for index in range(4):
        (image, mask), (cropped, cropped_mask) = _phantom("cropped", index)
        assert cropped.shape == image.shape and cropped_mask.shape == mask.shape
        assert set(np.unique(cropped_mask).tolist()) == {0, 255}
        assert (cropped_mask > 0).mean() > (mask > 0).mean()


def _shared_threshold_dice(pairs):
    """Best mean Dice of one threshold (0..255, lung darker or brighter) used for every image."""
    best = 0.0
    for t in range(0, 256, 4):
        for lung_is_dark in (True, False):
            scores = []
            for image, mask in pairs:
                found, lung = (image <= t) if lung_is_dark else (image >= t), mask > 0
                scores.append(2 * (found & lung).sum() / (found.sum() + lung.sum()))
            best = max(best, float(np.mean(scores)))
    return best


def test_hard_cases_defeat_one_threshold_for_all_images_even_more():
    def phantoms(cases):
        return [make_phantom(np.random.default_rng([99, i]), 96, 104, SITES[i % 2], hard=frozenset(cases)) for i in range(12)]

    plain = _shared_threshold_dice(phantoms(()))
    assert _shared_threshold_dice(phantoms(("low_contrast",))) < plain - 0.1  # grey levels no longer mean the same
    assert _shared_threshold_dice(phantoms(vars(HardCases()))) < plain - 0.02


def test_bad_hard_cases_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="hard.rotated"):
        generate_dataset(tmp_path / "out", 2, 0, 16, 32, workers=1, hard=HardCases(rotated=1.5))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="flipped"):
        make_phantom(np.random.default_rng(0), 32, 32, "PhantomA", hard=frozenset({"flipped"}))
