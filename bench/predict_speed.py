"""Images per second of `lungseg predict`, against the code path it replaced, in the same run.

    python bench/predict_speed.py [--small 300] [--large 8] [--workers N]

Writes synthetic chest phantoms (lungseg.data.synthetic, 8-bit PNG) into a temporary folder:
a set of 512 x 512 X-rays and a smaller set of Kaggle-size 3000 x 2600 ones. The model is
results/best_unet.pth when it exists, else a tiny untrained U-Net (the plumbing is what is timed).
Each set goes through eight runs, in one process, on the same files:

  baseline     predict_all as it was before (kept below): each image read twice, once for the model
               and once for the overlay, everything on one thread, PNGs at zlib's default level 6
  no_estimate  lungseg.inference.predict.predict_all with --no-estimate --no-report: read once, worker
               threads beside the model, level 1
  no_report    the same with each mask's dice_estimate (lungseg.postprocessing.quality)
  lungseg      the same with the review page's thumbnails and X-ray views too, as predict runs by default

each with and without overlays; estimate_cost is no_report's time over no_estimate's, report_cost
lungseg's over no_report's. Then `lungseg evaluate`'s external-folder path on phantom
image/mask pairs (lungseg.data.synthetic.generate_dataset) of both sizes: evaluate_folder scoring
at native resolution on one thread with torch's own threads (baseline), against worker threads
with one torch thread each (lungseg evaluate now). The last columns check that the masks and overlays hold the same
pixels as the baseline's (the files differ only in their zlib level) and the tables are equal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import ROOT, print_table, write_results
from PIL import Image

from lungseg.core.config import EvaluateConfig, PreprocessConfig
from lungseg.core.errors import ImageReadError
from lungseg.data.images import pixel_spacing
from lungseg.data.preprocess import prepare_image
from lungseg.data.synthetic import SITES, generate_dataset, make_phantom
from lungseg.evaluation.scores import evaluate_folder
from lungseg.inference import predict
from lungseg.inference.formats import load_predictor
from lungseg.inference.overlay import overlay
from lungseg.inference.predictor import Predictor, default_workers, torch_threads
from lungseg.postprocessing import quality

MODEL = ROOT / "results" / "best_unet.pth"


# --------------------------------------------------------------------------- inputs


def write_phantoms(folder: Path, count: int, height: int, width: int) -> list[str]:
    """`count` phantoms of height x width as 8-bit PNGs in `folder`; their paths, sorted."""
    folder.mkdir(parents=True)
    for index in range(count):
        image, _ = make_phantom(np.random.default_rng(index), height, width, SITES[index % 2], ptb=index % 3 == 0)
        Image.fromarray(image).save(folder / f"cxr{index:04d}.png", compress_level=1)
    return sorted(str(path) for path in folder.iterdir())


def write_pairs(folder: Path, count: int, smallest: int, largest: int) -> Path:
    """`count` phantom image/mask pairs, sides between `smallest` and `largest`, in the Kaggle layout."""
    generate_dataset(folder / "data", n_images=count, seed=3, min_size=smallest, max_size=largest)
    return folder / "data"


def model_file(folder: Path) -> Path:
    """The trained model when there is one, else a tiny untrained checkpoint."""
    if MODEL.is_file():
        return MODEL
    from lungseg.model.checkpoint import make_checkpoint, save_checkpoint
    from lungseg.model.unet import UNet

    torch.manual_seed(0)
    path, model_args = folder / "tiny.pth", {"depth": 3, "base_width": 8}
    save_checkpoint(make_checkpoint(UNet(**model_args), model_args, {"image_size": 128, "normalize": "minmax"}, 0.5), path)
    return path


# --------------------------------------------------------------------------- the baseline (predict_all before)


def baseline_predict_all(predictor: Predictor, jobs: list[predict.Job], outputs: predict.Outputs, batch_size: int) -> list[dict]:
    """predict_all as it was: batch by batch on one thread, the X-ray read again for the overlay."""
    settings = PreprocessConfig(**predictor.preprocess)
    rows = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        prepared = []
        for job in batch:
            try:
                prepared.append(prepare_image(job.source, settings))
            except ImageReadError as problem:
                prepared.append(problem)
        readable = [item for item in prepared if not isinstance(item, ImageReadError)]
        probabilities = iter(predictor.probabilities(np.stack([image for image, _ in readable]), len(readable)) if readable else [])
        for job, item in zip(batch, prepared):
            if isinstance(item, ImageReadError):
                rows.append(predict.error_row(job, item))
                continue
            probability = next(probabilities)
            mask = predictor.native_mask(probability, item[1])
            rows.append(baseline_write_result(job, mask, outputs, probability, predictor.threshold))
    return rows


def baseline_write_result(job: predict.Job, mask: np.ndarray, outputs: predict.Outputs, probability: np.ndarray,
                          threshold: float) -> dict:
    """write_result as it was: display grey read from the file, overlay as an array, default PNG level."""
    grey = predict.display_grey(job.source, outputs.normalize) if outputs.overlays else None
    spacing = pixel_spacing(job.source)
    mask_file = Path("masks") / f"{job.name}.png"
    (outputs.folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(outputs.folder / mask_file, format="PNG")
    overlay_file = ""
    if grey is not None:
        overlay_file = str(Path("overlays") / f"{job.name}.png")
        (outputs.folder / "overlays").mkdir(parents=True, exist_ok=True)
        Image.fromarray(overlay(grey, mask, alpha=outputs.alpha)).save(outputs.folder / overlay_file, format="PNG")
        del grey
    report = quality.assess(mask)
    right_cm2, left_cm2 = predict.areas_cm2(report, spacing)
    return {"input": job.source, "mask_file": str(mask_file), "overlay_file": overlay_file,
            "height": mask.shape[0], "width": mask.shape[1], "lung_fraction": report.lung_fraction,
            "right_lung_px": report.right_px, "left_lung_px": report.left_px,
            "right_lung_cm2": right_cm2, "left_lung_cm2": left_cm2,
            "n_components": report.n_components, "error": "", **report.columns()}


# --------------------------------------------------------------------------- measuring


def timed(run, out: Path) -> tuple[float, float, list[dict]]:
    """Wall seconds, CPU seconds of this process (all threads) and rows of one run writing into a
    fresh `out`. CPU seconds say what a run costs even while other work shares the cores."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cpu, started = os.times(), time.perf_counter()
    rows = run(out)
    wall, done = time.perf_counter() - started, os.times()
    return wall, (done.user - cpu.user) + (done.system - cpu.system), rows


def same_pixels(first: Path, second: Path) -> bool:
    """Whether two image files hold the same pixels (their zlib levels may differ)."""
    with Image.open(first) as one, Image.open(second) as other:
        return one.mode == other.mode and np.array_equal(np.asarray(one), np.asarray(other))


def same_outputs(rows: list[dict], base_rows: list[dict], out: Path, base_out: Path) -> tuple[bool, bool, bool]:
    """(masks, overlays pixel-identical, tables equal) against the baseline's."""
    masks = all(same_pixels(out / r["mask_file"], base_out / b["mask_file"]) for r, b in zip(rows, base_rows))
    overlays = all(same_pixels(out / r["overlay_file"], base_out / b["overlay_file"])
                   for r, b in zip(rows, base_rows) if r["overlay_file"] or b["overlay_file"])
    tables = pd.DataFrame(rows, columns=predict.COLUMNS).equals(pd.DataFrame(base_rows, columns=predict.COLUMNS))
    return masks, overlays, tables


def measure_set(name: str, sources: list[str], model: Path, scratch: Path, batch_size: int, workers: int | None) -> list[dict]:
    """The four runs on one set of images; a row for each overlay setting."""
    predictor = load_predictor(model, "cpu")
    jobs = [predict.Job(source, stem) for source, stem in zip(sources, predict.unique_names(sources))]
    normalize = predictor.preprocess["normalize"]
    rows = []
    for overlays in (True, False):
        def baseline(out: Path, overlays: bool = overlays) -> list[dict]:
            return baseline_predict_all(predictor, jobs, predict.Outputs(out, 0.4, overlays, normalize), batch_size)

        def lungseg(out: Path, overlays: bool = overlays, estimate: bool = True, report: bool = True) -> list[dict]:
            outputs = predict.Outputs(out, 0.4, overlays, normalize, estimate, review=report)
            return predict.predict_all(predictor, jobs, outputs, batch_size, True, workers)

        base_s, base_cpu, base_rows = timed(baseline, scratch / "base")
        plain_s, _, plain_rows = timed(lambda out: lungseg(out, estimate=False, report=False), scratch / "plain")
        bare_s, _, _ = timed(lambda out: lungseg(out, report=False), scratch / "bare")
        new_s, new_cpu, _ = timed(lungseg, scratch / "new")
        masks, pictures, tables = same_outputs(plain_rows, base_rows, scratch / "plain", scratch / "base")
        n = len(jobs)
        rows.append({"images": name, "overlays": "yes" if overlays else "no", "n": n,
                     "baseline_img_s": n / base_s, "no_estimate_img_s": n / plain_s, "lungseg_img_s": n / new_s,
                     "speedup": base_s / plain_s, "estimate_cost": bare_s / plain_s, "report_cost": new_s / bare_s,
                     "baseline_cpu_ms_img": 1000 * base_cpu / n, "lungseg_cpu_ms_img": 1000 * new_cpu / n,
                     "masks_same": masks, "overlays_same": pictures if overlays else "", "table_same": tables})
        print(f"{name}, overlays {overlays}: {base_s:.1f} s -> {new_s:.1f} s", file=sys.stderr)
    return rows


def measure_evaluate(name: str, data: Path, model: Path, workers: int | None) -> dict:
    """lungseg evaluate on one folder of pairs, as before and now; the scores must be equal."""
    predictor, workers = load_predictor(model, "cpu"), workers or default_workers()

    def baseline(_: Path) -> list:
        return [evaluate_folder(predictor, data, EvaluateConfig(), 32, (), False)]

    def lungseg(_: Path) -> list:
        with torch_threads(1 if workers > 1 else None):
            return [evaluate_folder(predictor, data, EvaluateConfig(), 32, (), False, workers)]

    base_s, _, (before,) = timed(baseline, data.parent / "scratch")
    new_s, _, (after,) = timed(lungseg, data.parent / "scratch")
    n = len(after.scores)
    print(f"evaluate {name}: {base_s:.1f} s -> {new_s:.1f} s", file=sys.stderr)
    return {"images": name, "n": n, "baseline_img_s": n / base_s, "lungseg_img_s": n / new_s, "speedup": base_s / new_s,
            "scores_same": before.scores.equals(after.scores) and before.metrics == after.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=300, help="512 px images (default: 300)")
    parser.add_argument("--large", type=int, default=8, help="3000 x 2600 px images (default: 8)")
    parser.add_argument("--batch-size", type=int, default=16, help="as lungseg predict's default")
    parser.add_argument("--workers", type=int, default=None, help="lungseg's threads (default: one per core)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        model = model_file(scratch)
        sets = {"512 x 512": write_phantoms(scratch / "small", args.small, 512, 512),
                "3000 x 2600": write_phantoms(scratch / "large", args.large, 3000, 2600)}
        rows = [row for name, sources in sets.items() if sources
                for row in measure_set(name, sources, model, scratch, args.batch_size, args.workers)]
        pairs = {"512 x 512": (args.small // 2, 512, 512), "3000 x 2600": (args.large, 2600, 3000)}
        evaluated = [measure_evaluate(name, write_pairs(scratch / f"pairs{size}", count, size, largest), model, args.workers)
                     for name, (count, size, largest) in pairs.items() if count]
    cores = default_workers()
    print_table(f"lungseg predict, images per second on {cores} cores (model: {model.name})", rows)
    print_table(f"lungseg evaluate on an external folder, images per second on {cores} cores", evaluated)
    write_results("predict_speed", rows, evaluate=evaluated, workers=args.workers or cores, batch_size=args.batch_size,
                  model=str(model.relative_to(ROOT)) if model == MODEL else "tiny untrained U-Net")


if __name__ == "__main__":
    main()
