"""Which training recipe reaches the accuracy the real data allows, reliably? An ablation over
split seeds on the real sample (or any preprocessed folder).

Each job splits the data with one seed (80/10/10, stratified by county, exactly as the split
stage does), trains one variant with the train stage's own recipe (lungseg.training.recipe.train_model),
which picks post-processing on validation only, and scores the test part. Every choice is made
on validation; the test scores are only reported. Jobs run in parallel processes (a GPU is shared by all of them).

    python bench/recipe_ablation.py                      # the real sample, every variant, seeds 1-5
    python bench/recipe_ablation.py --save-processed DIR # write the preprocessed sample (to carry elsewhere)
    python bench/recipe_ablation.py --processed DIR --jobs 8 --device cuda
    python bench/recipe_ablation.py --variants recipe --seeds 1 --tile 3 --jobs 1 --name recipe_timing
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import numpy as np
import pandas as pd
import torch
from common import print_table, require_real_sample, write_results

from lungseg.core.config import AugmentConfig, InferConfig, ModelConfig, PreprocessConfig, TrainConfig
from lungseg.core.runtime import resolve_device
from lungseg.data.preprocess import preparation, preprocess_folder
from lungseg.data.processed import ProcessedSet, ids_in, load_processed, save_processed
from lungseg.data.split import split_ids
from lungseg.model.metrics import dice_per_image
from lungseg.postprocessing import postprocess
from lungseg.training.loop import predicted_masks
from lungseg.training.recipe import tensors, train_model

PLAIN = {"epochs": 8, "augment": False, "postprocess": False, "base_width": 8, "batch_size": 2}  # the default before issue 5
# README's real-data recipe: 20 epochs of 563 images fit in 10 minutes on 2 CPU cores (24 s an epoch)
RECIPE = {"epochs": 20, "augment": True, "postprocess": True, "base_width": 8, "batch_size": 2}
VARIANTS = {
    "plain": PLAIN,
    "recipe": RECIPE,
    "recipe_no_augment": {**RECIPE, "augment": False},
    "recipe_no_postprocess": {**RECIPE, "postprocess": False},
    "recipe_40_epochs": {**RECIPE, "epochs": 40},
    "recipe_base16": {**RECIPE, "base_width": 16},
    # GPU candidates: larger batches, so a run takes seconds rather than minutes
    "gpu_b8_w16_e30": {**RECIPE, "batch_size": 8, "base_width": 16, "epochs": 30},
    "gpu_b16_w16_e40": {**RECIPE, "batch_size": 16, "base_width": 16, "epochs": 40},
    "gpu_b32_w32_e60": {**RECIPE, "batch_size": 32, "base_width": 32, "epochs": 60},
}


def load_data(args) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    if args.processed:
        data = load_processed(args.processed)
        return data.images, data.masks, data.index
    return preprocess_folder(require_real_sample(), PreprocessConfig())


def run_job(job: dict) -> dict:
    """Train one variant on one split seed with lungseg.training.recipe.train_model; score validation and test."""
    torch.set_num_threads(job["threads"])
    device, variant = resolve_device(job["device"]), VARIANTS[job["variant"]]
    index = job["index"].assign(id=job["index"]["id"].astype(str))
    processed = ProcessedSet(job["images"], job["masks"], index, {})
    split = tiled_train(pd.DataFrame({"id": index["id"], "split": job["parts"]}), job["tile"])
    # fp32 and no torch.compile, as the results in bench/results were measured (jobs share one GPU)
    config = TrainConfig(epochs=job["epochs"] or variant["epochs"], batch_size=variant["batch_size"], seed=42,
                         precision="fp32", compile="never")
    started = time.perf_counter()
    trained = train_model(processed, split, ModelConfig(depth=4, base_width=variant["base_width"]), config,
                          AugmentConfig(enabled=variant["augment"]), InferConfig(threshold=0.5), device, verbose=False)
    seconds = time.perf_counter() - started
    test = processed.subset(ids_in(split, "test"))
    test_masks = predicted_masks(trained.model, tensors(test.images, test.masks, device).images, 0.5, 32)
    chosen = trained.postprocess if variant["postprocess"] else "none"
    test_dice = dice_per_image(postprocess.apply(test_masks, chosen), test.masks)
    return {"variant": job["variant"], "seed": job["seed"], "test_dice": float(test_dice.mean()), "test_worst": float(test_dice.min()),
            "val_dice": trained.best_dice, "best_epoch": trained.best_epoch, "postprocess": chosen,
            "train_images": len(ids_in(split, "train")), "epochs": config.epochs, "train_seconds": seconds}


def tiled_train(split: pd.DataFrame, tile: int) -> pd.DataFrame:
    """`split` with its train rows repeated `tile` times (timing at full-data size)."""
    train = split[split["split"] == "train"]
    return pd.concat([train] * tile + [split[split["split"] != "train"]], ignore_index=True)


def summarise(rows: list[dict]) -> list[dict]:
    """Per variant: mean and spread over seeds, the worst seed, and the paired gain over plain."""
    table = pd.DataFrame(rows)
    plain = table[table["variant"] == "plain"].set_index("seed")["test_dice"]
    out = []
    for name, group in table.groupby("variant", sort=False):
        gain = (group.set_index("seed")["test_dice"] - plain).dropna()
        out.append({"variant": name, "seeds": len(group), "test_dice_mean": group["test_dice"].mean(),
                    "test_dice_std": group["test_dice"].std(ddof=0), "test_dice_lowest_seed": group["test_dice"].min(),
                    "worst_image_lowest_seed": group["test_worst"].min(), "gain_vs_plain": gain.mean() if len(gain) else float("nan"),
                    "train_seconds_mean": group["train_seconds"].mean()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processed", help="a preprocessed folder (images.npy, masks.npy, index.csv); default: the real sample")
    parser.add_argument("--save-processed", help="preprocess the real sample into this folder and stop")
    parser.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if not v.startswith("gpu")], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="parallel training processes")
    parser.add_argument("--tile", type=int, default=1, help="repeat the training images this many times (timing at full-data size)")
    parser.add_argument("--epochs", type=int, default=0, help="override every variant's epochs (quick checks)")
    parser.add_argument("--name", default="recipe_ablation")
    args = parser.parse_args()
    if args.save_processed:
        save_processed(*preprocess_folder(require_real_sample(), PreprocessConfig()), preparation(PreprocessConfig()), args.save_processed)
        return print(f"wrote {args.save_processed}")
    images, masks, index = load_data(args)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    # seeds in the outer loop: the first results to finish cover every variant
    jobs = [{"variant": v, "seed": s, "device": args.device, "threads": threads, "tile": args.tile, "epochs": args.epochs, "images": images, "masks": masks, "index": index,
             "parts": split_ids(index, (0.8, 0.1, 0.1), s, "county")["split"].to_numpy()}
            for s in args.seeds for v in args.variants]
    started, rows = time.perf_counter(), []
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        for done in as_completed([pool.submit(run_job, job) for job in jobs]):
            rows.append(done.result())
            print(f"{len(rows)}/{len(jobs)} done: {rows[-1]['variant']} seed {rows[-1]['seed']} test Dice {rows[-1]['test_dice']:.4f}", flush=True)
            # written after every job, so a run cut short still leaves what it finished
            write_results(args.name, rows, summary=summarise(rows), variants=VARIANTS, wall_seconds=time.perf_counter() - started,
                          data=str(args.processed or "real sample"), n_images=len(index), complete=len(rows) == len(jobs), quiet=True)
    rows.sort(key=lambda row: (args.variants.index(row["variant"]), row["seed"]))
    print_table("runs", rows)
    print_table("per variant (over split seeds)", summarise(rows))


if __name__ == "__main__":
    main()
