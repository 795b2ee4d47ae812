"""Shared fixtures: where the real samples live, and a writer of small image/mask folders.

Only fixtures here; each test module keeps its own helpers.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

KAGGLE_SAMPLE = "lungs-kaggle-layout-sample"
COVID_SAMPLE = "covid-cxr-sample"

METADATA_COLUMNS = ["id", "gender", "age", "county", "ptb", "remarks"]
LAYOUT_ROOTS = {"kaggle": Path("Chest-X-Ray/Chest-X-Ray"), "plain": Path(".")}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project checkout (may not exist)."""
    return SHARED_DATA


def _sample(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real sample ../shared/data/{name} not found: it sits beside the project checkout (see its README for what it holds)")
    return path


@pytest.fixture(scope="session")
def kaggle_sample() -> Path:
    """240 real pairs in the Kaggle layout, with MetaData.csv."""
    return _sample(KAGGLE_SAMPLE)


@pytest.fixture(scope="session")
def covid_sample() -> Path:
    """42 real pairs in the plain image/ + mask/ layout, no MetaData.csv."""
    return _sample(COVID_SAMPLE)


@pytest.fixture
def restore_max_pixels():
    """The image reader's pixel limit holds for the whole process (set_max_pixels, --max-pixels):
    put it back after the test."""
    from lungseg.data.images import max_pixels, set_max_pixels

    before = max_pixels()
    yield
    set_max_pixels(before)


# --------------------------------------------------------------------------- synthetic pair folders


@dataclass
class PairFolder:
    root: Path  # the data folder to hand to find_layout / preprocess_folder
    image_dir: Path
    mask_dir: Path
    ids: list[str]
    image_paths: dict[str, Path] = field(default_factory=dict)
    mask_paths: dict[str, Path] = field(default_factory=dict)
    metadata_path: Path | None = None


def make_image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A uint8 height x width image: a horizontal gradient 0..255 plus a little seeded noise."""
    height, width = size
    ramp = np.tile(np.linspace(0, 255, width), (height, 1))
    noise = np.random.default_rng(seed).integers(-10, 11, size=(height, width))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def make_mask(size: tuple[int, int]) -> np.ndarray:
    """A 0/1 uint8 height x width mask: a centred rectangle covering half of each side."""
    height, width = size
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = 1
    return mask


def write_pair_folder(
    root: Path,
    layout: str = "kaggle",
    n: int = 3,
    size: tuple[int, int] = (40, 30),
    ids: list[str] | None = None,
    metadata: bool | list[dict] = True,
    mask_value: int = 255,
    suffix: str = ".png",
) -> PairFolder:
    """Write n PNG image/mask pairs under `root` in `layout` ("kaggle" or "plain").

    size is (height, width). Images are 8-bit greyscale gradients (see make_image); masks are
    make_mask(size) * mask_value (0/255 by default, 0/1 with mask_value=1).
    metadata: True writes MetaData.csv (columns id,gender,age,county,ptb,remarks) at `root`
    with alternating counties Shenxhen/Montgomery; a list of dicts writes those rows instead;
    False writes none. Returns a PairFolder describing what was written.
    """
    if layout not in LAYOUT_ROOTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUT_ROOTS)}, got {layout!r}")
    root = Path(root)
    ids = [str(i) for i in (ids if ids is not None else range(1, n + 1))]
    pair_root = root / LAYOUT_ROOTS[layout]
    image_dir, mask_dir = pair_root / "image", pair_root / "mask"
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    folder = PairFolder(root, image_dir, mask_dir, ids)
    for k, id_ in enumerate(ids):
        image_path, mask_path = image_dir / f"{id_}{suffix}", mask_dir / f"{id_}{suffix}"
        Image.fromarray(make_image(size, seed=k)).save(image_path)
        Image.fromarray((make_mask(size) * mask_value).astype(np.uint8)).save(mask_path)
        folder.image_paths[id_], folder.mask_paths[id_] = image_path, mask_path
    if metadata is not False:
        if metadata is True:
            rows = [
                {"id": id_, "gender": "Male" if k % 2 else "Female", "age": str(30 + k),
                 "county": "Shenxhen" if k % 2 == 0 else "Montgomery", "ptb": str(k % 2), "remarks": ""}
                for k, id_ in enumerate(ids)
            ]
        else:
            rows = metadata
        columns = METADATA_COLUMNS if not rows else list(dict.fromkeys(c for row in rows for c in row))
        folder.metadata_path = root / "MetaData.csv"
        with open(folder.metadata_path, "w", newline="") as handle:  # csv quotes values holding commas
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows([[str(row.get(c, "")) for c in columns] for row in rows])
    return folder


@pytest.fixture(name="write_pair_folder")
def write_pair_folder_fixture():
    """The write_pair_folder function: write_pair_folder(tmp_path / "data", layout="plain", n=3, ...)."""
    return write_pair_folder


@pytest.fixture
def small_disk(tmp_path):
    """small_disk("256k"): a real file system of that size (tmpfs), where writes fail with
    ENOSPC once it is full; unmounted after the test. Skips where none can be mounted."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if shutil.which("mount") is None:
            pytest.skip("no mount command here to make a small full file system")
        point = tmp_path / f"disk-{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=True)  # lazy: never busy


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's `chromium` package) driven by playwright; skipped where either
    is missing (`.ci/run` installs the browser)."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on PATH: apt-get install chromium")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()
