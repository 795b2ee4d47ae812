"""(d) inference images/s: lungseg's Predictor against a seed-style loop (one image at a time, fp32).

    python bench/inference_speed.py [--width 8] [--images 256]

Both run the same randomly initialised U-Net (speed does not depend on the weights), saved and
loaded through a real checkpoint file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import peak_rss_mb, print_table, synchronize, write_results

from lungseg.inference.predictor import Predictor
from lungseg.model.checkpoint import build_model, load_checkpoint, make_checkpoint, save_checkpoint
from lungseg.model.unet import UNet


def seed_style_predict(model, images: np.ndarray) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for image in images:
            x = torch.from_numpy(image.astype(np.float32) / 255).view(1, 1, *image.shape)
            out.append((torch.sigmoid(model(x)) > 0.5).numpy()[0, 0])
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (args.images, 128, 128), dtype=np.uint8)
    model_args = {"in_channels": 1, "out_channels": 1, "depth": 4, "base_width": args.width}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.pth"
        save_checkpoint(make_checkpoint(UNet(**model_args), model_args, {"image_size": 128}, 0.5), path)
        predictor = Predictor.from_checkpoint(path)
        seed_model = build_model(load_checkpoint(path))
    predictor.masks(images[: args.batch_size], args.batch_size)  # warm-up
    synchronize(predictor.device)
    started = time.perf_counter()
    predictor.masks(images, args.batch_size)
    synchronize(predictor.device)
    lungseg_rate = args.images / (time.perf_counter() - started)
    subset = images[: max(16, args.images // 4)]
    started = time.perf_counter()
    seed_style_predict(seed_model, subset)
    seed_rate = len(subset) / (time.perf_counter() - started)
    rows = [{"variant": "seed-style (batch 1, fp32, CPU)", "width": args.width, "images_per_s": seed_rate, "vs_seed": 1.0},
            {"variant": f"lungseg Predictor ({predictor.device.type}, batch {args.batch_size})", "width": args.width,
             "images_per_s": lungseg_rate, "vs_seed": lungseg_rate / seed_rate}]
    print_table("inference at 128 px (images/s)", rows)
    write_results("inference_speed", rows, peak_rss_mb=peak_rss_mb())


if __name__ == "__main__":
    main()
