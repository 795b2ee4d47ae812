"""The training recipe (lungseg.training.recipe.train_model) on tiny phantoms: 32 px, depth 2, base width 4."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lungseg.core import config
from lungseg.core.config import AugmentConfig, InferConfig, ModelConfig, TrainConfig
from lungseg.core.errors import ParamsError
from lungseg.data.processed import ProcessedSet
from lungseg.data.synthetic import make_phantom
from lungseg.model.losses import BceDiceLoss
from lungseg.model.unet import UNet
from lungseg.postprocessing import postprocess
from lungseg.training.loop import predicted_masks, validate
from lungseg.training.recipe import calibrate, degraded_views, tensors, train_model

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
PARTS = {"train": 24, "val": 8, "test": 4}
MODEL = ModelConfig(depth=2, base_width=4)
INFER = InferConfig(threshold=0.5)


def phantom_set(n: int = sum(PARTS.values()), size: int = SIZE) -> tuple[ProcessedSet, pd.DataFrame]:
    """n phantoms at `size` px as the preprocess stage leaves them, and a split table (PARTS, in order)."""
    rng = np.random.default_rng(0)
    pairs = [make_phantom(rng, size, size, ("PhantomA", "PhantomB")[i % 2]) for i in range(n)]
    images, masks = np.stack([p[0] for p in pairs]), np.stack([(p[1] > 0).astype(np.uint8) for p in pairs])
    ids = [f"p{i:02d}" for i in range(n)]
    index = pd.DataFrame({"id": ids, "image_file": ids, "mask_file": ids, "height": size, "width": size})
    split = pd.DataFrame({"id": ids, "split": [part for part, count in PARTS.items() for _ in range(count)][:n]})
    return ProcessedSet(images, masks, index, {"image_size": size}), split


def train_config(**changes) -> TrainConfig:
    # lr 0.01: the phantoms are learnt within a few epochs, so the best epoch is not always the first
    settings = {"epochs": 3, "batch_size": 4, "lr": 0.01, "seed": 0, "device": "cpu", "precision": "fp32", "compile": "never"}
    return TrainConfig(**{**settings, **changes})


def run(data, seed: int = 0, augment: bool = True):
    processed, split = data
    return train_model(processed, split, MODEL, train_config(seed=seed), AugmentConfig(enabled=augment), INFER,
                       torch.device("cpu"), verbose=False)


@pytest.fixture(scope="module")
def data():
    return phantom_set()


@pytest.fixture(scope="module")
def trained(data):
    return run(data)


def val_set(data):
    processed, split = data
    val = processed.subset(split.loc[split["split"] == "val", "id"])
    return tensors(val.images, val.masks)


def test_the_returned_model_scores_the_best_validation_dice_of_the_history(trained, data):
    history = trained.history
    assert list(history["epoch"]) == [1, 2, 3]
    assert trained.best_dice == history["val_dice"].max()
    assert trained.best_epoch == int(history.loc[history["val_dice"].idxmax(), "epoch"])
    scores = validate(trained.model, BceDiceLoss(), val_set(data), 4, INFER.threshold, None)
    assert scores["val_dice"] == pytest.approx(trained.best_dice, abs=1e-9)
    assert trained.model_args == {"in_channels": 1, "out_channels": 1, "depth": 2, "base_width": 4}


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not(trained, data):
    again, other = run(data, seed=0), run(data, seed=1)
    same = again.model.state_dict()
    assert all(torch.equal(value, same[key]) for key, value in trained.model.state_dict().items())
    columns = ["train_loss", "val_loss", "val_dice", "val_iou", "lr"]  # not 'seconds'
    pd.testing.assert_frame_equal(again.history[columns], trained.history[columns])
    assert not torch.equal(other.model.state_dict()["head.weight"], trained.model.state_dict()["head.weight"])


def test_post_processing_is_one_of_the_options_chosen_by_its_validation_score(trained, data):
    assert trained.postprocess in postprocess.OPTIONS
    assert set(trained.postprocess_scores) == set(postprocess.OPTIONS)
    assert trained.postprocess_scores[trained.postprocess] >= trained.postprocess_scores["none"]
    val = val_set(data)
    masks = predicted_masks(trained.model, val.images, INFER.threshold, 4)
    assert postprocess.choose(masks, val.masks[:, 0].numpy()) == (trained.postprocess, trained.postprocess_scores)


def test_the_dice_estimate_is_fitted_on_the_validation_images_clean_and_degraded(trained, data):
    estimator = trained.dice_estimator
    assert estimator is not None
    assert estimator.calibration["images"] == PARTS["val"]
    assert estimator.calibration["n_masks"] == PARTS["val"] * (1 + estimator.calibration["draws"])
    processed, split = data
    val = processed.subset(split.loc[split["split"] == "val", "id"])
    with torch.no_grad():
        probabilities = torch.sigmoid(trained.model(tensors(val.images, val.masks).images))[:, 0].numpy()
    masks = postprocess.apply(probabilities > INFER.threshold, trained.postprocess)
    estimates = [estimator(p, m, INFER.threshold) for p, m in zip(probabilities, masks)]
    assert all(0 <= e <= 1 for e in estimates)


def test_tensors_turn_uint8_arrays_into_model_inputs():
    images, masks = np.array([[[0, 255]]], dtype=np.uint8), np.array([[[0, 1]]], dtype=np.uint8)
    pair = tensors(images, masks, torch.device("cpu"), torch.channels_last)
    assert pair.images.shape == (1, 1, 1, 2) and pair.images.tolist() == [[[[0.0, 1.0]]]]
    assert pair.masks.dtype == torch.float32 and pair.masks.tolist() == [[[[0.0, 1.0]]]]


def test_an_image_size_the_depth_cannot_halve_is_refused_by_config_and_by_the_model():
    with pytest.raises(ParamsError, match=r"preprocess\.image_size=36: must be divisible by 2\*\*model\.depth = 8"):
        config.load({"preprocess": {"image_size": 36}, "model": {"depth": 3}}, "preprocess", "model")
    # data made with other params than the model's: the U-Net itself refuses it (training adds no check of its own)
    processed, split = phantom_set(12, size=36)
    with pytest.raises(ValueError, match="divisible by 8"):
        train_model(processed, split, ModelConfig(depth=3, base_width=4), train_config(epochs=1), AugmentConfig(enabled=False),
                    INFER, torch.device("cpu"), verbose=False)


def forward_sizes(data, **changes) -> tuple[list[tuple[bool, int]], object]:
    """Train with `changes` to the train config; every U-Net forward pass as (training?, image
    side), read by a module hook (global, so it sees the model train_model builds inside)."""
    calls = []

    def record(module, inputs):
        if type(module).__name__ == "UNet":
            calls.append((module.training, inputs[0].shape[-1]))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        processed, split = data
        trained = train_model(processed, split, MODEL, train_config(**changes), AugmentConfig(), INFER,
                              torch.device("cpu"), verbose=False)
    finally:
        handle.remove()
    return calls, trained


def test_progressive_resizing_trains_the_first_epochs_small_and_validates_at_full_size(data):
    calls, trained = forward_sizes(data, epochs=3, low_res_epochs=2, low_res_size=16)
    steps = PARTS["train"] // 4  # batch 4
    assert [size for training, size in calls if training] == [16] * (2 * steps) + [SIZE] * steps
    assert {size for training, size in calls if not training} == {SIZE}  # validation, and the post-processing choice
    assert list(trained.history["epoch"]) == [1, 2, 3]
    calls, _ = forward_sizes(data, epochs=3)  # the default: every epoch at full size
    assert {size for _, size in calls} == {SIZE}


def test_progressive_resizing_is_reproducible_and_changes_the_weights(trained, data):
    runs = [run_low_res(data) for _ in range(2)]
    first, second = (r.model.state_dict() for r in runs)
    assert all(torch.equal(value, second[key]) for key, value in first.items())
    assert not torch.equal(first["head.weight"], trained.model.state_dict()["head.weight"])


def run_low_res(data):
    processed, split = data
    return train_model(processed, split, MODEL, train_config(low_res_epochs=2, low_res_size=16), AugmentConfig(), INFER,
                       torch.device("cpu"), verbose=False)


@pytest.mark.parametrize("size, expected", [
    (32, r"train\.low_res_size=32: must be smaller than the preprocessed images \(32 px"),
    (18, r"train\.low_res_size=18: must be divisible by 2\*\*model\.depth = 4 \(model\.depth=2\); e\.g\. 16"),
])
def test_a_low_res_size_training_cannot_use_is_refused_naming_the_key(data, size, expected):
    processed, split = data
    with pytest.raises(ParamsError, match=expected):
        train_model(processed, split, MODEL, train_config(low_res_epochs=1, low_res_size=size), AugmentConfig(), INFER,
                    torch.device("cpu"), verbose=False)


OUT_OF_MEMORY = textwrap.dedent("""
    import resource, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_recipe import INFER, phantom_set, train_config
    from lungseg.core.config import AugmentConfig, ModelConfig
    from lungseg.core.errors import TrainingError
    from lungseg.training.recipe import train_model

    torch.set_num_threads(1)
    processed, split = phantom_set()
    # one small run first: what training imports and sets up on first use is then in place,
    # so that only the large run below needs more memory
    train_model(processed, split, ModelConfig(depth=2, base_width=4), train_config(epochs=1), AugmentConfig(enabled=False),
                INFER, torch.device("cpu"), verbose=False)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + 40 * 2**20,) * 2)  # 40 MiB more: the model fits, a training step does not
    try:
        train_model(processed, split, ModelConfig(depth=2, base_width=64), train_config(epochs=1, batch_size=24),
                    AugmentConfig(enabled=False), INFER, torch.device("cpu"), verbose=False)
    except TrainingError as error:
        print(error)
""")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to set a memory limit")
def test_running_out_of_memory_says_what_to_lower():
    """A real allocation failure: the process's address space is capped just above what it uses."""
    code = OUT_OF_MEMORY.format(tests=str(REPO / "tests"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ran out of cpu memory while training: lower train.batch_size (now 24) or model.base_width (now 64)" in done.stdout, \
        done.stdout + done.stderr[-2000:]


# --------------------------------------------------------------------------- calibrating the Dice estimate

CAL_SIZE = 32


def validation_set(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = np.mgrid[:CAL_SIZE, :CAL_SIZE]
    masks = np.zeros((n, CAL_SIZE, CAL_SIZE), np.float32)
    for i in range(n):
        for centre in (9, 23):
            masks[i][((rows - 16) / (10 + i % 2)) ** 2 + ((cols - centre) / 5) ** 2 <= 1] = 1
    images = 0.2 + 0.6 * masks + np.random.default_rng(0).uniform(0, 0.1, masks.shape)
    return torch.from_numpy(images.astype(np.float32))[:, None], torch.from_numpy(masks)[:, None]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(1, 1, depth=2, base_width=4).eval()


def test_degraded_views_start_with_the_clean_set_and_change_the_rest_reproducibly():
    images, masks = validation_set()
    views = list(degraded_views(images, masks, draws=2, seed=3))
    assert len(views) == 3
    assert torch.equal(views[0][0], images) and torch.equal(views[0][1], masks)
    assert not torch.equal(views[1][0], images)
    again = list(degraded_views(images, masks, draws=2, seed=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(views, again))


def test_calibrate_fits_on_every_view_and_is_the_same_for_the_same_seed():
    images, masks = validation_set()
    train_masks = masks[:, 0].numpy().astype(np.uint8)
    first = calibrate(tiny_model(), images, masks, train_masks, 0.5, "none", batch_size=2, draws=3, seed=1)
    assert first.calibration == {"images": 4, "draws": 3, "seed": 1, "n_masks": 16, "fit_mae": first.calibration["fit_mae"]}
    second = calibrate(tiny_model(), images, masks, train_masks, 0.5, "none", batch_size=2, draws=3, seed=1)
    assert np.array_equal(first.weights, second.weights)


def test_calibrate_without_validation_images_gives_no_estimator():
    images, masks = validation_set()
    train_masks = masks[:, 0].numpy().astype(np.uint8)
    assert calibrate(tiny_model(), images[:0], masks[:0], train_masks, 0.5, "none", batch_size=2) is None
