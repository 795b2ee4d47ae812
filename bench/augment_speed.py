"""Cost of the training-batch augmentations on the CPU: images per second of lungseg.training.augment's
Augmenter at batch 2 (the default) and 16: the ops before issue 14 (the baseline, measured in
the same run) against those plus the site-appearance ops (blur/sharpen, collimation bands,
burned-in text), plus the opacity too (the default), and every site op on every image.

    python bench/augment_speed.py [--size 128] [--seconds 2] [--threads 1]

Every image is changed (probability 1) so the ops are timed at their worst; the best of
several timed rounds is kept, as other processes may share the cores.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from common import print_table, write_results

from lungseg.core.config import AugmentConfig
from lungseg.training.augment import Augmenter

# the ops before issue 14, as the baseline
TODAY = replace(AugmentConfig(), probability=1.0, contrast=0.2, gamma=0.2, blur=0.0, border_probability=0.0, text_probability=0.0,
                opacity_probability=0.0)
SITE = replace(TODAY, contrast=0.4, gamma=0.4, blur=1.0, sharpen=1.0, border_probability=0.3, text_probability=0.3)
ALL_SITE = replace(SITE, border_probability=1.0, text_probability=1.0)
DEFAULT = replace(SITE, opacity_probability=0.3)
CONFIGS = {"previous ops": TODAY, "site": SITE, "site + opacity (the default)": DEFAULT,
           "site, every op on every image": ALL_SITE}


def images_per_second(config: AugmentConfig, batch: int, size: int, seconds: float, rounds: int = 5) -> float:
    """Best of `rounds` timings of as many calls as fit in `seconds` each."""
    images = torch.rand(batch, 1, size, size)
    masks = (torch.rand(batch, 1, size, size) > 0.5).float()
    augment = Augmenter(config, 0, torch.device("cpu"))
    augment(images, masks)  # warm-up
    best = 0.0
    for _ in range(rounds):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / rounds:
            augment(images, masks)
            calls += 1
        best = max(best, calls * batch / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="image side (preprocess.image_size)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per configuration and batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for batch in (2, 16):
        baseline = None
        for name, config in CONFIGS.items():
            speed = images_per_second(config, batch, args.size, args.seconds)
            baseline = baseline or speed
            rows.append({"batch": batch, "ops": name, "images_per_s": speed, "ms_per_image": 1000 / speed,
                         "speed_vs_previous": speed / baseline})
    print_table(f"augmentation speed, CPU, {torch.get_num_threads()} threads, {args.size} px", rows)
    write_results("augment_speed", rows, size=args.size, threads=torch.get_num_threads(),
                  configs={name: vars(config) for name, config in CONFIGS.items()})


if __name__ == "__main__":
    main()
