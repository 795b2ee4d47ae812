"""Peak memory of `lungseg predict` on one huge 8-bit X-ray, against the old float64 overlay.

    python bench/predict_memory.py [--height 10000] [--width 8000]

Writes a smooth synthetic chest phantom (8-bit greyscale PNG) and a tiny untrained checkpoint
into a temporary folder, then measures, each in a fresh process:

  lungseg predict                the command, with overlays (the new uint8 overlay)
  lungseg predict --no-overlays  the same without overlays: the masks, table and lung sides alone
  overlay step, new              read the X-ray for display + lungseg.inference.overlay.overlay + save the PNG
  overlay step, old (baseline)   the same step as predict did it before: the X-ray as float32,
                                 the overlay built as a full-size float64 RGB array

Peak RSS is the child's ru_maxrss, read with getrusage(RUSAGE_CHILDREN) by a small measuring
process that starts nothing else, so every number belongs to one child alone. The overlay steps
use the mask `lungseg predict` wrote, and the last column compares each overlay with the old one.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 1.5 * 1024  # the budget predict must stay under at 10000 x 8000
ROWS = 500  # rows generated or compared at a time


# --------------------------------------------------------------------------- inputs


def phantom(height: int, width: int) -> np.ndarray:
    """A smooth uint8 chest-like image: a bright body, two dark lungs, faint ribs; built in row
    blocks so that making it costs little memory.

    height, width: the image size in pixels.
    """
    image = np.empty((height, width), dtype=np.uint8)
    cols = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    all_rows = np.linspace(-1, 1, height, dtype=np.float32)
    for start in range(0, height, ROWS):
        rows = all_rows[start:start + ROWS, None]
        body = np.exp(-(cols**2 / 0.5 + rows**2 / 0.9))
        lungs = sum(np.exp(-((((cols - centre) / 0.24) ** 2 + ((rows + 0.05) / 0.5) ** 2) ** 2)) for centre in (-0.38, 0.38))
        ribs = 6 * np.sin(rows * 40 + cols * 3) ** 2
        image[start:start + ROWS] = np.clip(40 + 190 * body - 120 * lungs + ribs, 0, 255)
    return image


def write_model(path: Path, xray: Path) -> None:
    """A tiny untrained U-Net checkpoint whose threshold is its median probability on `xray`, so
    that the mask covers about half the image (an untrained model is close to constant)."""
    import torch

    from lungseg.core.config import PreprocessConfig
    from lungseg.data.preprocess import prepare_image
    from lungseg.inference.predictor import Predictor
    from lungseg.model.checkpoint import make_checkpoint, save_checkpoint
    from lungseg.model.unet import UNet

    torch.manual_seed(0)
    model_args, preprocess = {"depth": 2, "base_width": 4}, {"image_size": 64, "normalize": "minmax"}
    model = UNet(**model_args)
    save_checkpoint(make_checkpoint(model, model_args, preprocess, 0.5), path)
    predictor = Predictor.from_checkpoint(path, "cpu", precision="fp32")
    image, _ = prepare_image(xray, PreprocessConfig(**preprocess))
    threshold = float(np.median(predictor.probabilities(image[None])))
    save_checkpoint(make_checkpoint(model, model_args, preprocess, threshold), path)


# --------------------------------------------------------------------------- the overlay steps (run as children)


def read_mask(path: Path) -> np.ndarray:
    return (np.asarray(Image.open(path)) > 0).astype(np.uint8)


def old_overlay_step(xray: Path, mask_path: Path, out: Path) -> None:
    """The overlay as lungseg predict made it before: display grey as float32 in [0, 1], then
    viz.overlay's float64 formula (a full-size float64 RGB array and its copies)."""
    import lungseg.inference.predict  # noqa: F401  (the new step's imports, torch included: only the overlay differs)
    from lungseg.data.images import read_grayscale

    mask = read_mask(mask_path).astype(bool)
    grey = read_grayscale(xray)
    low, high = float(grey.min()), float(grey.max())
    grey = np.clip((grey - low) / max(high - low, 1e-6), 0.0, 1.0)
    rgb = np.repeat((grey.astype(np.float64) * 255.0)[..., None], 3, axis=-1)
    rgb[mask] = (1.0 - 0.4) * rgb[mask] + 0.4 * np.array([255.0, 0.0, 0.0])
    Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)).save(out, format="PNG")


def new_overlay_step(xray: Path, mask_path: Path, out: Path) -> None:
    """The overlay as lungseg predict makes it now (predict.display_grey, viz.overlay_image)."""
    from lungseg.inference.overlay import overlay_image
    from lungseg.inference.predict import display_grey, save_rgb_png

    mask = read_mask(mask_path)
    grey = display_grey(str(xray), "minmax")
    save_rgb_png(overlay_image(grey, mask, alpha=0.4), out)


# --------------------------------------------------------------------------- measuring


def measure(command: list[str]) -> dict:
    """Run `command` under a fresh measuring process; its peak RSS, seconds and exit status."""
    probe = [sys.executable, __file__, "measure", "--", *command]
    done = subprocess.run(probe, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_and_report(command: list[str]) -> None:
    """The measuring process: run `command` as its only child and print what it used as JSON."""
    started = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
    print(json.dumps({"rc": done.returncode, "seconds": seconds, "peak_rss_mb": peak_kib / 1024}))


def max_difference(a: Path, b: Path) -> int:
    """The largest difference, in grey levels, between two RGB PNGs of the same size."""
    first, second = np.asarray(Image.open(a)), np.asarray(Image.open(b))
    return max(int(np.abs(first[s:s + ROWS].astype(np.int16) - second[s:s + ROWS]).max())
               for s in range(0, len(first), ROWS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=10000)
    parser.add_argument("--width", type=int, default=8000)
    args = parser.parse_args()
    from common import print_table, write_results

    Image.MAX_IMAGE_PIXELS = None  # our own phantom; lungseg applies its own limit when reading
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        xray, model = folder / "phantom.png", folder / "model.pth"
        Image.fromarray(phantom(args.height, args.width)).save(xray)
        write_model(model, xray)
        predict = [sys.executable, "-m", "lungseg.cli", "predict", str(model), str(xray), "--device", "cpu", "-q"]
        step = [sys.executable, __file__]
        runs = {
            "lungseg predict": predict + ["--out", str(folder / "with")],
            "lungseg predict --no-overlays": predict + ["--out", str(folder / "without"), "--no-overlays"],
            "overlay step, new (uint8)": step + ["new-overlay", str(xray), str(folder / "with/masks/phantom.png"), str(folder / "new.png")],
            "overlay step, old (float64 baseline)": step + ["old-overlay", str(xray), str(folder / "with/masks/phantom.png"), str(folder / "old.png")],
        }
        rows = []
        for name, command in runs.items():
            result = measure(command)
            if result["rc"] != 0:
                sys.exit(f"{name} failed (exit {result['rc']})")
            rows.append({"run": name, "peak_rss_mb": result["peak_rss_mb"], "seconds": result["seconds"]})
        overlays = {"lungseg predict": folder / "with/overlays/phantom.png",
                    "overlay step, new (uint8)": folder / "new.png", "overlay step, old (float64 baseline)": folder / "old.png"}
        for row in rows:
            path = overlays.get(row["run"])
            row["max_diff_vs_old"] = max_difference(path, folder / "old.png") if path else ""
            row["under_1.5_GB"] = "yes" if row["peak_rss_mb"] < LIMIT_MB else "no"
    print_table(f"peak RSS of one {args.height} x {args.width} 8-bit X-ray (MiB; max_diff_vs_old in grey levels)", rows)
    write_results("predict_memory", rows, height=args.height, width=args.width, limit_mb=LIMIT_MB)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "measure":
        run_and_report(sys.argv[3:])  # after "measure --"
    elif len(sys.argv) > 1 and sys.argv[1] in ("old-overlay", "new-overlay"):
        step_function = old_overlay_step if sys.argv[1] == "old-overlay" else new_overlay_step
        step_function(*map(Path, sys.argv[2:5]))
    else:
        main()
