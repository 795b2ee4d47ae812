"""Training on synthetic phantoms: it must learn, beat the threshold baseline, and be reproducible."""

import numpy as np
import pytest
import torch

from lungseg.core.config import PreprocessConfig, TrainConfig
from lungseg.core.errors import TrainingError
from lungseg.core.runtime import images_to_tensor
from lungseg.data.preprocess import preprocess_folder
from lungseg.data.synthetic import generate_dataset
from lungseg.evaluation.baseline import fit_threshold, threshold_masks
from lungseg.model.metrics import dice_per_image
from lungseg.model.unet import UNet
from lungseg.training import recipe
from lungseg.training.loop import TensorPair, fit, is_out_of_memory
from lungseg.training.recipe import downsampled, out_of_memory_advice, plan


def fit_with(model, train, val, config, threshold=0.5, worker=None, **options):
    """loop.fit with the train stage's recipe for `config` (lungseg.training.recipe.plan)."""
    return fit(model, train, val, plan(model, train, config, worker), threshold, worker=worker, **options)

SIZE = 64


@pytest.fixture(scope="module")
def raw_phantoms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms") / "raw"
    generate_dataset(folder, n_images=48, seed=3, min_size=96, max_size=160, workers=1)
    return folder


def parts(folder, size):
    """48 phantoms preprocessed to `size` px: 36 to train, 6 to validate, 6 to test."""
    images, masks, _ = preprocess_folder(folder, PreprocessConfig(image_size=size, workers=1))
    return {"train": (images[:36], masks[:36]), "val": (images[36:42], masks[36:42]), "test": (images[42:], masks[42:])}


@pytest.fixture(scope="module")
def phantoms(raw_phantoms):
    return parts(raw_phantoms, SIZE)


def tensors(pair):
    return recipe.tensors(*pair)


def train(phantoms, epochs=8, seed=0, dtype=None):
    torch.manual_seed(seed)
    model = UNet(depth=3, base_width=8)
    config = TrainConfig(epochs=epochs, batch_size=4, seed=seed)
    return model, fit_with(model, tensors(phantoms["train"]), tensors(phantoms["val"]), config, threshold=0.5,
                      dtype=dtype, show_progress=False)


@pytest.fixture(scope="module")
def trained(phantoms):
    return train(phantoms)


def test_history_has_one_row_per_epoch_with_every_column(trained):
    _, result = trained
    assert list(result.history["epoch"]) == list(range(1, 9))
    assert {"train_loss", "val_loss", "val_dice", "val_iou", "lr", "seconds"} <= set(result.history.columns)
    assert np.isfinite(result.history[["train_loss", "val_loss"]].to_numpy()).all()


def test_on_epoch_sees_each_row_as_it_ends_with_the_best_epoch_so_far(phantoms):
    seen = []
    config = TrainConfig(epochs=3, batch_size=4, seed=0)
    result = fit_with(UNet(depth=3, base_width=4), tensors(phantoms["train"]), tensors(phantoms["val"]), config, threshold=0.5,
                 show_progress=False, on_epoch=lambda row, best_epoch, best_dice: seen.append((dict(row), best_epoch, best_dice)))
    assert [row["epoch"] for row, _, _ in seen] == [1, 2, 3]
    assert [row for row, _, _ in seen] == result.history.to_dict("records")
    for k, (_, best_epoch, best_dice) in enumerate(seen, start=1):
        so_far = result.history.iloc[:k]
        assert best_dice == so_far["val_dice"].max() and best_epoch == int(so_far.loc[so_far["val_dice"].idxmax(), "epoch"])


def test_loss_falls_and_the_best_epoch_is_the_best_val_dice(trained):
    _, result = trained
    history = result.history
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert result.best_dice == pytest.approx(history["val_dice"].max())
    assert result.best_epoch == int(history.loc[history["val_dice"].idxmax(), "epoch"])


def test_trained_model_beats_the_tuned_threshold_baseline(phantoms, trained):
    model, result = trained
    model.load_state_dict(result.best_state)
    model.eval()
    images, masks = phantoms["test"]
    with torch.no_grad():
        predicted = (torch.sigmoid(model(images_to_tensor(images, torch.device("cpu")))) > 0.5)[:, 0].numpy()
    model_dice = dice_per_image(predicted, masks).mean()
    threshold = fit_threshold(*phantoms["train"], steps=32)
    baseline_dice = dice_per_image(threshold_masks(images, threshold), masks).mean()
    assert model_dice > 0.8
    assert model_dice > baseline_dice + 0.1, f"model {model_dice:.3f} vs threshold baseline {baseline_dice:.3f}"


def test_same_seed_gives_the_same_history(phantoms):
    _, first = train(phantoms, epochs=2, seed=5)
    _, second = train(phantoms, epochs=2, seed=5)
    columns = ["train_loss", "val_loss", "val_dice", "val_iou"]
    np.testing.assert_array_equal(first.history[columns].to_numpy(), second.history[columns].to_numpy())


def test_bf16_and_fp32_runs_with_the_same_seed_end_within_001_val_dice(raw_phantoms):
    """bf16 autocast keeps fp32 weights, so it must not cost accuracy. (On CPUs without AMX bf16
    is emulated and slow, hence the smaller 48 px images here.)"""
    small = parts(raw_phantoms, 48)
    _, fp32 = train(small, epochs=8, seed=0)
    _, bf16 = train(small, epochs=8, seed=0, dtype=torch.bfloat16)
    assert fp32.history["val_dice"].iloc[-1] > 0.8  # both really learned something
    assert abs(fp32.history["val_dice"].iloc[-1] - bf16.history["val_dice"].iloc[-1]) < 0.01
    assert abs(fp32.best_dice - bf16.best_dice) < 0.01


def test_scheduler_decays_the_learning_rate_to_near_zero(trained):
    _, result = trained
    lrs = result.history["lr"].tolist()
    assert lrs[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] < 1e-4


def test_downsampled_keeps_masks_binary_and_the_memory_layout(phantoms):
    full = tensors(phantoms["train"])
    for layout in (torch.contiguous_format, torch.channels_last):
        pair = TensorPair(full.images.contiguous(memory_format=layout), full.masks.contiguous(memory_format=layout))
        small = downsampled(pair, SIZE // 2)
        assert small.images.shape == small.masks.shape == (36, 1, SIZE // 2, SIZE // 2)
        assert small.images.stride() == torch.empty_like(small.images).contiguous(memory_format=layout).stride()
        assert set(small.masks.unique().tolist()) == {0.0, 1.0}
        # area averaging: the mean intensity and the lung share stay as they were
        assert small.images.mean().item() == pytest.approx(full.images.mean().item(), abs=1e-5)
        assert small.masks.mean().item() == pytest.approx(full.masks.mean().item(), abs=0.02)


def test_low_res_epochs_train_on_the_small_images_and_validate_on_the_full_ones(phantoms):
    seen = []

    def observe(images, masks):  # the augment hook: sees every training batch
        seen.append(images.shape[-1])
        return images, masks

    torch.manual_seed(0)
    config = TrainConfig(epochs=3, batch_size=12, seed=0, low_res_epochs=2, low_res_size=SIZE // 2)
    result = fit_with(UNet(depth=3, base_width=8), tensors(phantoms["train"]), tensors(phantoms["val"]), config, threshold=0.5,
                 show_progress=False, augment=observe)
    assert seen == [SIZE // 2] * 6 + [SIZE] * 3  # 36 images, batch 12: 3 steps an epoch
    assert list(result.history["epoch"]) == [1, 2, 3] and result.history["val_dice"].notna().all()


def test_a_non_finite_loss_stops_training_naming_the_epoch_and_step(phantoms):
    images, masks = tensors(phantoms["train"]).images.clone(), tensors(phantoms["train"]).masks
    images[:] = float("nan")  # every batch is broken, so the first step of the first epoch is
    torch.manual_seed(0)
    with pytest.raises(TrainingError, match=r"epoch 1, step 1 of 9.*train\.lr"):
        fit_with(UNet(depth=3, base_width=8), TensorPair(images, masks), tensors(phantoms["val"]),
            TrainConfig(epochs=2, batch_size=4), threshold=0.5, show_progress=False)


def test_out_of_memory_errors_are_recognised_and_name_the_params_to_lower():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    advice = out_of_memory_advice(torch.device("cuda"), batch_size=256, base_width=64)
    assert "train.batch_size (now 256)" in advice and "model.base_width (now 64)" in advice
