"""(a) training images/s of lungseg's own train step against the seed-style loop, and
(b) the same model stepping on one static batch, to show what the real loop adds.

    python bench/train_throughput.py [--widths 16 32 64] [--seconds 8]

Runs on CUDA when present, else CPU. The project side is lungseg.training.loop.train_epoch on
device-resident tensors with the same runtime choices as the train stage (channels_last,
bf16 autocast where native, torch.compile where it pays).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import peak_rss_mb, print_table, synchronize, write_results
from seed_style import seed_epoch, seed_loader

from lungseg.core.config import ModelConfig, TrainConfig
from lungseg.core.runtime import configure, resolve_device
from lungseg.model.losses import BceDiceLoss
from lungseg.model.unet import UNet
from lungseg.training.loop import TensorPair, train_epoch, train_step
from lungseg.training.recipe import new_model, runtime_for, tensors

SIZE = 128


def random_set(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8), (rng.random((n, SIZE, SIZE)) > 0.7).astype(np.uint8)


def timed(run, device) -> float:
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


def seed_style(width: int, images, masks, device, seconds: float) -> dict:
    torch.manual_seed(0)
    model = UNet(depth=4, base_width=width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    loader = seed_loader(images, masks, batch_size=2)
    seed_epoch(model, optimizer, loader, device, max_steps=2)  # warm-up
    per_step = timed(lambda: seed_epoch(model, optimizer, loader, device, max_steps=3), device) / 3
    steps = max(3, int(seconds / per_step))
    elapsed = timed(lambda: seed_epoch(model, optimizer, loader, device, max_steps=steps), device)
    return {"variant": "seed-style (fp32, NCHW, batch 2, DataLoader)", "batch": 2, "images_per_s": 2 * steps / elapsed}


def project(width: int, images, masks, device, batch: int, seconds: float, precision: str = "auto") -> list[dict]:
    """The real epoch loop and, for comparison, the same steps on one static batch."""
    runtime = runtime_for(device, TrainConfig(precision=precision, compile="auto"))  # the train stage's choices
    dtype, compiled, layout = runtime.dtype, runtime.compile, runtime.layout
    model, _ = new_model(ModelConfig(depth=4, base_width=width), 0, runtime)
    network = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss_fn, generator = BceDiceLoss(0.5, 0.5), torch.Generator().manual_seed(0)
    data = tensors(images, masks, device, layout)
    warm = TensorPair(data.images[: 2 * batch], data.masks[: 2 * batch])
    first = timed(lambda: train_epoch(network, loss_fn, optimizer, scheduler, warm, batch, generator, dtype), device)
    per_image = timed(lambda: train_epoch(network, loss_fn, optimizer, scheduler, warm, batch, generator, dtype), device) / len(warm)
    n = min(len(data), max(2 * batch, int(seconds / per_image) // batch * batch))
    subset = TensorPair(data.images[:n], data.masks[:n])
    loop = timed(lambda: train_epoch(network, loss_fn, optimizer, scheduler, subset, batch, generator, dtype), device)
    steps = n // batch
    static = timed(lambda: [train_step(network, loss_fn, optimizer, warm.images[:batch], warm.masks[:batch], dtype) for _ in range(steps)], device)
    layout_name = "channels_last" if layout == torch.channels_last else "NCHW"
    label = f"lungseg ({'bf16' if dtype else 'fp32'}, {layout_name}{', compiled' if compiled else ''}, batch {batch})"
    return [{"variant": label, "batch": batch, "images_per_s": n / loop, "first_steps_s": first},
            {"variant": label.replace("lungseg", "static tensors"), "batch": batch, "images_per_s": steps * batch / static}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="project batch sizes (default: 2 16 on CPU, 256 on CUDA)")
    parser.add_argument("--seconds", type=float, default=8.0, help="rough time per measurement")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="as train.precision")
    parser.add_argument("--name", default="train_throughput", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    device = resolve_device("auto")
    configure(device)
    batches = args.batches or ([256] if device.type == "cuda" else [2, 16])
    images, masks = random_set(max(batches) * 16 if device.type == "cuda" else 512)
    rows = []
    for width in args.widths:
        baseline = seed_style(width, images, masks, device, args.seconds)
        rows.append({"device": device.type, "width": width, **baseline, "vs_seed": 1.0})
        for batch in batches:
            for row in project(width, images, masks, device, batch, args.seconds, args.precision):
                rows.append({"device": device.type, "width": width, **row, "vs_seed": row["images_per_s"] / baseline["images_per_s"]})
    memory = {"peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        memory["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print_table(f"training throughput at {SIZE} px on {device.type} (images/s)", rows)
    print(f"peak memory: {memory}")
    write_results(args.name, rows, memory=memory)


if __name__ == "__main__":
    main()
