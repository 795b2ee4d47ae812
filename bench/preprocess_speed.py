"""(c) preprocess speed at Kaggle size: 704 image/mask pairs of about 3000 x 3000 px, 8-bit PNG.

    python bench/preprocess_speed.py [--pairs 704] [--unique 88] [--baseline-pairs 24]

The pairs are synthetic phantoms drawn at 2900-3000 px. To save disk and generation time,
--unique distinct phantoms are written once (kept in bench/.cache) and hard-linked under new
ids up to --pairs; every pair is still opened, decoded and resized. Baseline, in the same run:
the straightforward way (decode, convert the whole image to float, resize, one process).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
from common import ROOT, peak_rss_mb, print_table, write_results
from PIL import Image

from lungseg.core.config import PreprocessConfig
from lungseg.data.images import open_image, to_float_gray
from lungseg.data.preprocess import preprocess_folder
from lungseg.data.synthetic import generate_dataset

CACHE = ROOT / "bench" / ".cache"
PAIRS = Path("Chest-X-Ray/Chest-X-Ray")


def unique_phantoms(n: int) -> Path:
    folder = CACHE / f"kaggle-size-{n}"
    if not folder.is_dir():
        print(f"generating {n} full-size phantoms into {folder} (once) ...", flush=True)
        generate_dataset(folder, n_images=n, seed=7, min_size=2900, max_size=3000)
    return folder


def linked_set(source: Path, pairs: int, target: Path) -> Path:
    """A Kaggle-layout folder of `pairs` ids whose files hard-link to the unique phantoms."""
    n = len(list((source / PAIRS / "image").glob("*.png")))
    for kind in ("image", "mask"):
        (target / PAIRS / kind).mkdir(parents=True)
        for i in range(pairs):
            os.link(source / PAIRS / kind / f"{i % n}.png", target / PAIRS / kind / f"{i}.png")
    return target


def naive_pair(image_path: Path, mask_path: Path, size: int) -> None:
    """What a first implementation does: full-size float arrays, then a float resize."""
    for path in (image_path, mask_path):
        values = to_float_gray(open_image(path)[0])
        np.asarray(Image.fromarray(values).resize((size, size), Image.Resampling.LANCZOS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=704)
    parser.add_argument("--unique", type=int, default=88)
    parser.add_argument("--baseline-pairs", type=int, default=24)
    args = parser.parse_args()
    source = unique_phantoms(args.unique)
    target = CACHE / "linked"
    shutil.rmtree(target, ignore_errors=True)
    linked_set(source, args.pairs, target)
    sizes = [Image.open(p).size for p in sorted((source / PAIRS / "image").glob("*.png"))[:5]]

    started = time.perf_counter()
    images, _, _ = preprocess_folder(target, PreprocessConfig())
    lungseg_s = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(args.baseline_pairs):
        naive_pair(target / PAIRS / "image" / f"{i}.png", target / PAIRS / "mask" / f"{i}.png", 128)
    naive_rate = args.baseline_pairs / (time.perf_counter() - started)
    shutil.rmtree(target)

    rows = [
        {"variant": "naive (full-size float, one process)", "pairs": args.baseline_pairs, "pairs_per_s": naive_rate,
         "seconds_for_704": 704 / naive_rate, "vs_naive": 1.0},
        {"variant": f"lungseg preprocess ({os.cpu_count()} processes)", "pairs": len(images), "pairs_per_s": len(images) / lungseg_s,
         "seconds_for_704": 704 * lungseg_s / len(images), "vs_naive": len(images) / lungseg_s / naive_rate},
    ]
    print_table(f"preprocess of Kaggle-size pairs (first sizes {sizes}) to 128 px", rows)
    write_results("preprocess_speed", rows, measured_seconds=lungseg_s, peak_rss_mb=peak_rss_mb())


if __name__ == "__main__":
    main()
