"""Tests for lungseg.model.checkpoint (safe save/load, what a model was trained on) and lungseg.inference.predictor (Predictor)."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import perturbed_unet

from lungseg.core import paths
from lungseg.core.errors import CheckpointError
from lungseg.inference.formats import load_predictor
from lungseg.inference.predictor import Predictor
from lungseg.model.checkpoint import (
    NOT_A_MODEL,
    build_model,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    synthetic_warning,
    training_data,
)
from lungseg.model.unet import UNet

MODEL_ARGS = {"depth": 2, "base_width": 4}
SIZE = 16


def _trained_model(seed: int = 0) -> UNet:
    return perturbed_unet(MODEL_ARGS, SIZE, seed)


def _save(model: UNet, path, threshold: float = 0.5) -> dict:
    checkpoint = make_checkpoint(model, MODEL_ARGS, {"image_size": SIZE, "normalize": "minmax"}, threshold, epoch=3, val_dice=0.9)
    save_checkpoint(checkpoint, path)
    return checkpoint


class _WritesMarker:
    """Unpickling this object calls open(marker, "w"): loading it runs code that creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------- save / load


def test_round_trip_rebuilds_a_model_with_identical_outputs(tmp_path):
    model = _trained_model()
    path = tmp_path / "model.pth"
    _save(model, path, threshold=0.4)
    checkpoint = load_checkpoint(path)
    assert checkpoint["format"] == "lungseg-checkpoint" and checkpoint["version"] == 1
    assert checkpoint["model"] == MODEL_ARGS
    assert checkpoint["preprocess"]["image_size"] == SIZE
    assert checkpoint["threshold"] == 0.4
    assert checkpoint["info"] == {"epoch": 3, "val_dice": 0.9}
    rebuilt = build_model(checkpoint).eval()
    x = torch.rand(3, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    # and it is not just a fresh model that happens to agree
    with torch.no_grad():
        assert not torch.allclose(UNet(**MODEL_ARGS).eval()(x), model(x))


def test_checkpoint_weights_are_copies_on_the_cpu():
    model = _trained_model()
    checkpoint = make_checkpoint(model, MODEL_ARGS, {"image_size": SIZE}, 0.5)
    name = next(iter(checkpoint["state_dict"]))
    with torch.no_grad():
        model.state_dict()[name].add_(1.0)  # later training must not change a saved checkpoint
    assert not torch.equal(checkpoint["state_dict"][name], model.state_dict()[name])
    assert all(t.device.type == "cpu" for t in checkpoint["state_dict"].values())


def test_save_leaves_no_temporary_file(tmp_path):
    _save(_trained_model(), tmp_path / "best.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]


def test_the_same_checkpoint_saved_twice_has_the_same_bytes(tmp_path):
    """DVC compares outputs by hash: a rerun with the same seed must not look like a new model."""
    model = _trained_model()
    _save(model, tmp_path / "a" / "best.pth")
    _save(model, tmp_path / "b" / "best.pth")
    assert (tmp_path / "a" / "best.pth").read_bytes() == (tmp_path / "b" / "best.pth").read_bytes()


def test_missing_checkpoint_is_named(tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value) and "not found" in str(caught.value)


def _random_zip(path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")
        archive.writestr("weights/data.bin", np.random.default_rng(0).bytes(64))


def _truncated_checkpoint(path) -> None:
    _save(_trained_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("content", [b"hello, I am a text file\n", b"", b"PK\x03\x04 broken zip"])
def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, content):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == f"{path}: {NOT_A_MODEL}"


def test_a_torch_file_without_our_marker_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": UNet(**MODEL_ARGS).state_dict()}, path)  # e.g. someone else's bare weights
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == f"{path}: {NOT_A_MODEL}"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a lungseg model"):
        load_checkpoint(path)


@pytest.mark.parametrize("suffix", [".pth", ".ts", ".pt", ".onnx"])
@pytest.mark.parametrize("writer", ["text", "random zip", "truncated checkpoint", "foreign torch file"])
def test_any_model_file_lungseg_did_not_write_says_so(tmp_path, writer, suffix):
    """Whatever the suffix, load_predictor (predict, evaluate) gives the one message, not e.g. 'KeyError: 101'."""
    if suffix == ".onnx":
        pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
    path = tmp_path / f"model{suffix}"
    {"text": lambda p: p.write_text("hello, I am a text file\n"), "random zip": _random_zip,
     "truncated checkpoint": _truncated_checkpoint,
     "foreign torch file": lambda p: torch.save({"weights": torch.zeros(3)}, p)}[writer](path)
    with pytest.raises(CheckpointError) as caught:
        load_predictor(path, device="cpu")
    assert str(caught.value) == f"{path}: {NOT_A_MODEL}"


def test_a_folder_given_as_the_model_says_it_cannot_be_read(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path}: cannot read the model file"):
        load_checkpoint(tmp_path)


def test_an_unsupported_version_is_refused(tmp_path):
    path = tmp_path / "future.pth"
    checkpoint = make_checkpoint(UNet(**MODEL_ARGS), MODEL_ARGS, {"image_size": SIZE}, 0.5)
    checkpoint["version"] = 99
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)


def test_payload_really_runs_code_when_loaded_unsafely(tmp_path):
    """Control for the next test: the malicious file does create the marker under plain pickle."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"format": "lungseg-checkpoint", "payload": _WritesMarker(marker)}, path)
    torch.load(path, weights_only=False).get("payload").close()
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_a_pickle_carrying_code_is_refused_and_never_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"format": "lungseg-checkpoint", "version": 1, "payload": _WritesMarker(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)
    assert not marker.exists()


# --------------------------------------------------------------------------- Predictor


def test_predictor_masks_are_binary_uint8_of_the_input_shape(tmp_path):
    model = _trained_model()
    path = tmp_path / "model.pth"
    _save(model, path, threshold=0.5)
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert predictor.image_size == SIZE and predictor.threshold == 0.5 and predictor.device.type == "cpu"
    images = np.random.default_rng(0).integers(0, 256, size=(5, SIZE, SIZE), dtype=np.uint8)
    masks = predictor.masks(images, batch_size=2)
    assert masks.shape == (5, SIZE, SIZE) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    # the masks are the model's own: sigmoid(logits) > threshold on images / 255
    with torch.no_grad():
        logits = model(torch.from_numpy(images).float().div(255).unsqueeze(1))
    expected = (torch.sigmoid(logits)[:, 0] > 0.5).numpy().astype(np.uint8)
    np.testing.assert_array_equal(masks, expected)
    probabilities = predictor.probabilities(images)
    assert probabilities.dtype == np.float32 and probabilities.min() >= 0 and probabilities.max() <= 1


def test_predictor_threshold_can_be_overridden(tmp_path):
    path = tmp_path / "model.pth"
    _save(_trained_model(), path, threshold=0.5)
    images = np.random.default_rng(1).integers(0, 256, size=(3, SIZE, SIZE), dtype=np.uint8)
    low = Predictor.from_checkpoint(path, device="cpu", threshold=0.0).masks(images)
    high = Predictor.from_checkpoint(path, device="cpu", threshold=1.0).masks(images)
    assert low.all() and not high.any()


@pytest.mark.parametrize("shape", [(2, SIZE, SIZE * 2), (2, 32, 32), (SIZE, SIZE), (2, 1, SIZE, SIZE)])
def test_predictor_rejects_a_wrong_input_size(tmp_path, shape):
    path = tmp_path / "model.pth"
    _save(_trained_model(), path)
    predictor = Predictor.from_checkpoint(path, device="cpu")
    with pytest.raises(ValueError, match=rf"\(N, {SIZE}, {SIZE}\)"):
        predictor.masks(np.zeros(shape, dtype=np.uint8))


def test_predictor_from_a_bad_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_text("nope")
    with pytest.raises(CheckpointError, match="bad.pth"):
        Predictor.from_checkpoint(path, device="cpu")


def test_weights_of_another_architecture_are_refused_with_the_keys_that_differ(tmp_path):
    deeper = UNet(in_channels=1, out_channels=1, depth=3, base_width=4)
    checkpoint = make_checkpoint(deeper, {"in_channels": 1, "out_channels": 1, "depth": 3, "base_width": 4}, {"image_size": 32}, 0.5)
    checkpoint["model"]["depth"] = 2  # the description no longer matches the weights
    with pytest.raises(CheckpointError) as caught:
        build_model(checkpoint)
    message = str(caught.value)
    assert "unexpected: downs.2." in message and "model.depth" in message


def test_weights_of_another_width_name_the_shapes(tmp_path):
    wide = UNet(depth=2, base_width=8)
    checkpoint = make_checkpoint(wide, {"in_channels": 1, "out_channels": 1, "depth": 2, "base_width": 4}, {"image_size": 32}, 0.5)
    with pytest.raises(CheckpointError, match=r"different shape: .*checkpoint \(16, 8, 3, 3\) vs model \(8, 4, 3, 3\)"):
        build_model(checkpoint)


# --------------------------------------------------------------------------- what a model was trained on



def index(counties: list[str]) -> pd.DataFrame:
    ids = [str(k) for k in range(len(counties))]
    return pd.DataFrame({"id": ids, "image_file": [f"image/{i}.png" for i in ids], "mask_file": [f"mask/{i}.png" for i in ids],
                         "height": 512, "width": 480, "county": counties})


def test_the_record_names_the_folder_not_its_path_and_tells_data_sets_apart():
    real = training_data(("/hospital/xrays/2024",), index(["Montgomery", "Shenxhen"]))
    assert real == {"data": "2024", "n_images": 2, "synthetic": False, "fingerprint": real["fingerprint"]}
    other = training_data(("/hospital/xrays/2024",), index(["Montgomery", "Shenxhen", "Montgomery"]))
    assert other["fingerprint"] != real["fingerprint"] and len(real["fingerprint"]) == 16


def test_phantoms_are_recognised_by_folder_or_by_their_counties():
    assert training_data((paths.SYNTHETIC_DIR,), index(["A", "B"]))["synthetic"]
    assert training_data(("/elsewhere/copy",), index(["PhantomA", "PhantomB"]))["synthetic"]
    assert not training_data(("/elsewhere/copy",), index(["PhantomA", "Montgomery"]))["synthetic"]


def test_a_model_trained_on_phantoms_gets_a_warning_naming_it():
    info = {"training_data": training_data((paths.SYNTHETIC_DIR,), index(["PhantomA"] * 3))}
    warning = synthetic_warning("results/best_unet.pth", info)
    assert warning.startswith("warning: results/best_unet.pth was trained on synthetic phantoms (synthetic, 3 images)")
    assert synthetic_warning("m.pth", {"training_data": training_data(("/x",), index(["Montgomery"]))}) is None
    assert synthetic_warning("old.pth", {}) is None  # checkpoints from before the record say nothing


def test_predict_and_evaluate_warn_when_the_model_was_trained_on_phantoms(tmp_path, write_pair_folder, capsys):
    import torch

    from lungseg.cli import main
    from lungseg.model.checkpoint import make_checkpoint, save_checkpoint
    from lungseg.model.unet import UNet

    torch.manual_seed(0)
    model_args = {"depth": 2, "base_width": 4}
    on_phantoms = training_data((paths.SYNTHETIC_DIR,), index(["PhantomA"] * 4))
    model = tmp_path / "phantom.pth"
    save_checkpoint(make_checkpoint(UNet(**model_args), model_args, {"image_size": 32, "normalize": "minmax"}, 0.5,
                                    training_data=on_phantoms), model)
    data = write_pair_folder(tmp_path / "xrays", layout="plain", n=2, size=(48, 40), metadata=False)
    assert main(["predict", str(model), str(data.image_dir), "--out", str(tmp_path / "p"), "-q"]) == 0
    assert f"warning: {model} was trained on synthetic phantoms" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model), "--data", str(data.root), "--out", str(tmp_path / "e"),
                 "--params", str(tmp_path / "absent.yaml"), "-q"]) == 0
    assert f"warning: {model} was trained on synthetic phantoms" in capsys.readouterr().err


def test_the_record_survives_a_checkpoint_round_trip(tmp_path):
    """Checkpoints load weights_only: the record must hold plain Python values, no numpy ones."""
    from lungseg.model.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from lungseg.model.unet import UNet

    for data_dir, counties in (("/hospital/xrays", ["Montgomery", "Shenxhen"]), ("/copy", ["PhantomA"])):
        record = training_data((data_dir,), index(counties))
        model_args = {"depth": 2, "base_width": 4}
        save_checkpoint(make_checkpoint(UNet(**model_args), model_args, {"image_size": 32}, 0.5, training_data=record),
                        tmp_path / "m.pth")
        assert load_checkpoint(tmp_path / "m.pth")["info"]["training_data"] == record
