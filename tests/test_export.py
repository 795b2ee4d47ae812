"""Tests for lungseg.inference.export (TorchScript and ONNX export with a parity check), lungseg.inference.formats
(the formats' metadata and loaders), its onnxruntime wrapper and
lungseg.inference.formats' loaders of exports (onnx_predictor, torchscript_predictor, load_predictor)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from tiny_models import perturbed_unet, tiny_estimator

from lungseg.core.errors import CheckpointError, ExportError, LungsegError
from lungseg.inference.export import (
    PARITY_TOLERANCE,
    check_parity,
    export_model,
    export_onnx,
    export_torchscript,
)
from lungseg.inference.formats import (
    is_exported,
    is_torchscript,
    load_onnx,
    load_predictor,
    load_torchscript,
    metadata,
    onnx_predictor,
    parse_metadata,
    require,
    torchscript_predictor,
)
from lungseg.inference.predictor import Predictor
from lungseg.model.checkpoint import NOT_A_MODEL, load_checkpoint, make_checkpoint, save_checkpoint
from lungseg.model.unet import UNet

MODEL_ARGS = {"depth": 2, "base_width": 4}
SIZE = 32
POSTPROCESS = "fill_holes"  # not the default, so the round trip shows it travelled


def _trained_model(seed: int) -> UNet:
    return perturbed_unet(MODEL_ARGS, SIZE, seed)


def _write_checkpoint(path, seed: int = 0) -> None:
    model = _trained_model(seed)
    with torch.no_grad():  # threshold at the median probability, so masks are neither empty nor full
        probabilities = torch.sigmoid(model(torch.rand(4, 1, SIZE, SIZE)))
    checkpoint = make_checkpoint(model, MODEL_ARGS, {"image_size": SIZE, "normalize": "minmax"},
                                 float(probabilities.median()), dice_estimator=tiny_estimator(SIZE).to_dict(),
                                 epoch=2, val_dice=0.75)
    checkpoint["postprocess"] = POSTPROCESS
    save_checkpoint(checkpoint, path)


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "tiny_unet.pth"
    _write_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def torchscript_path(checkpoint_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("torchscript") / "tiny_unet.ts"
    export_torchscript(checkpoint_path, path)
    return path


@pytest.fixture(scope="module")
def onnx_path(checkpoint_path, tmp_path_factory):
    """The ONNX export, made once for the module: the dynamo exporter takes 5-20 s."""
    for package in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(package, reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")
    path = tmp_path_factory.mktemp("onnx") / "tiny_unet.onnx"
    export_onnx(checkpoint_path, path)
    return path


def _random_images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, SIZE, SIZE), dtype=np.uint8)


def _files_in(folder) -> list:
    return sorted(folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- export and parity


@pytest.mark.parametrize("batch", [1, 3])
def test_torchscript_matches_pytorch_at_any_batch_size(checkpoint_path, torchscript_path, batch):
    assert check_parity(checkpoint_path, torchscript_path, n=batch) <= PARITY_TOLERANCE


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_pytorch_at_any_batch_size(checkpoint_path, onnx_path, batch):
    assert check_parity(checkpoint_path, onnx_path, n=batch) <= PARITY_TOLERANCE


def test_onnx_batch_dimension_is_dynamic_and_spatial_size_fixed(onnx_path):
    import onnxruntime

    (image,) = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()
    assert isinstance(image.shape[0], str)  # a named symbol, not a number
    assert image.shape[1:] == [1, SIZE, SIZE]


def test_check_parity_detects_a_model_from_another_checkpoint(torchscript_path, tmp_path):
    other = tmp_path / "other.pth"
    _write_checkpoint(other, seed=1)
    assert check_parity(other, torchscript_path) > PARITY_TOLERANCE


def test_export_model_writes_each_format_with_its_parity(checkpoint_path, tmp_path):
    results = export_model(checkpoint_path, tmp_path / "exported", formats=("torchscript",))
    assert list(results) == ["torchscript"]
    written = results["torchscript"]
    assert written["path"] == str(tmp_path / "exported" / "tiny_unet.ts")
    assert 0 <= written["max_abs_diff"] <= PARITY_TOLERANCE
    assert _files_in(tmp_path / "exported") == [tmp_path / "exported" / "tiny_unet.ts"]


def test_export_model_rejects_an_unknown_format_before_writing(checkpoint_path, tmp_path):
    with pytest.raises(ExportError, match="'tflite'"):
        export_model(checkpoint_path, tmp_path / "exported", formats=("torchscript", "tflite"))
    assert _files_in(tmp_path / "exported") == []


@pytest.mark.parametrize("broken", ["missing", "garbage"])
def test_broken_checkpoint_raises_and_writes_nothing(tmp_path, broken):
    path = tmp_path / "best_unet.pth"
    if broken == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="best_unet.pth"):
        export_model(path, tmp_path / "exported")
    assert _files_in(tmp_path / "exported") == []


def test_export_that_fails_parity_leaves_no_file(tmp_path):
    # NaN weights: the exported logits can never be within tolerance (NaN compares false)
    path = tmp_path / "nan.pth"
    _write_checkpoint(path)
    checkpoint = load_checkpoint(path)
    checkpoint["state_dict"]["head.bias"].fill_(float("nan"))
    save_checkpoint(checkpoint, path)
    out = tmp_path / "exported" / "nan.ts"
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_torchscript(path, out)
    assert _files_in(out.parent) == []  # neither the file nor its temporary


def test_missing_onnx_packages_name_the_extra_to_install():
    with pytest.raises(ExportError, match=r"pip install -e '\.\[onnx\]'") as raised:
        require("numpy", "lungseg_no_such_package")
    assert "lungseg_no_such_package" in str(raised.value) and "numpy" not in str(raised.value)


# --------------------------------------------------------------------------- metadata


def test_metadata_round_trips_through_both_formats(checkpoint_path, torchscript_path, onnx_path):
    checkpoint = load_checkpoint(checkpoint_path)
    expected = metadata(checkpoint)
    assert expected["threshold"] == checkpoint["threshold"] and expected["postprocess"] == POSTPROCESS
    assert expected["preprocess"] == checkpoint["preprocess"] and expected["model"] == MODEL_ARGS
    assert expected["info"] == {"epoch": 2, "val_dice": 0.75}
    assert load_torchscript(torchscript_path)[1] == expected
    assert load_onnx(onnx_path)[1] == expected


def test_onnx_file_without_lungseg_metadata_is_refused(onnx_path, tmp_path):
    import onnx

    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save_model(proto, str(foreign))
    with pytest.raises(CheckpointError, match="foreign.onnx.*no 'lungseg' metadata"):
        onnx_predictor(foreign)


def test_an_onnx_file_lungseg_did_not_write_is_not_a_lungseg_model(onnx_path, tmp_path):
    import onnx

    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save_model(proto, str(foreign))
    text = tmp_path / "notes.onnx"
    text.write_text("hello, I am a text file\n")
    for path in (foreign, text):
        with pytest.raises(CheckpointError) as caught:
            load_predictor(path, device="cpu")
        assert str(caught.value) == f"{path}: {NOT_A_MODEL}"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated in torch 2.x, still what we read
def test_a_torchscript_file_lungseg_did_not_write_is_not_a_lungseg_model(tmp_path):
    path = tmp_path / "someone_elses.ts"
    torch.jit.save(torch.jit.trace(torch.nn.Conv2d(1, 1, 3), torch.rand(1, 1, 8, 8)), str(path))
    with pytest.raises(CheckpointError) as caught:
        load_predictor(path, device="cpu")
    assert str(caught.value) == f"{path}: {NOT_A_MODEL}"


def test_export_takes_a_checkpoint_not_an_export(torchscript_path, tmp_path):
    with pytest.raises(ExportError, match="not an exported model"):
        export_model(torchscript_path, tmp_path / "exported", formats=("torchscript",))
    assert _files_in(tmp_path / "exported") == []


def test_missing_or_unreadable_onnx_file_is_a_checkpoint_error(torchscript_path, tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(CheckpointError, match="not found"):
        onnx_predictor(tmp_path / "absent.onnx")
    not_onnx = tmp_path / "model.onnx"
    shutil.copy(torchscript_path, not_onnx)
    with pytest.raises(CheckpointError, match="not a loadable ONNX model"):
        onnx_predictor(not_onnx)


# --------------------------------------------------------------------------- inference from exports


def _assert_same_masks(reference: Predictor, other: Predictor, images: np.ndarray) -> None:
    """Masks agree except where the reference probability lies within 1e-4 of the threshold,
    where fp32 differences between runtimes may legitimately flip a pixel."""
    probabilities = reference.probabilities(images)
    assert 0 < (probabilities > reference.threshold).mean() < 1  # the comparison is not trivial
    np.testing.assert_allclose(other.probabilities(images, batch_size=2), probabilities, atol=1e-5)
    undecided = np.abs(probabilities - reference.threshold) < 1e-4
    agree = other.masks(images, batch_size=2) == reference.masks(images)
    assert agree[~undecided].all()


def test_onnx_predictor_gives_the_checkpoint_predictors_masks(checkpoint_path, onnx_path):
    reference = Predictor.from_checkpoint(checkpoint_path, device="cpu", precision="fp32")
    predictor = onnx_predictor(onnx_path)
    assert (predictor.threshold, predictor.postprocess, predictor.image_size) == (reference.threshold, POSTPROCESS, SIZE)
    assert predictor.preprocess == reference.preprocess
    _assert_same_masks(reference, predictor, _random_images(3))  # batch_size 2: a full and a partial batch


def test_onnx_predictor_threshold_can_be_overridden(onnx_path):
    assert onnx_predictor(onnx_path, threshold=0.9).threshold == 0.9


def test_load_predictor_picks_the_loader_from_the_file(checkpoint_path, torchscript_path, onnx_path, tmp_path):
    from lungseg.inference.formats import OnnxModel

    reference = Predictor.from_checkpoint(checkpoint_path, device="cpu", precision="fp32")
    torchscript_as_pt = tmp_path / "exported.pt"  # TorchScript is recognised by content, not suffix
    shutil.copy(torchscript_path, torchscript_as_pt)
    for path, kind in [(onnx_path, OnnxModel), (torchscript_as_pt, torch.jit.ScriptModule), (checkpoint_path, UNet)]:
        predictor = load_predictor(path, device="cpu", precision="fp32")  # fp32 on CPUs with bf16 too
        assert isinstance(predictor.model, kind), path
        _assert_same_masks(reference, predictor, _random_images(3, seed=2))


def test_torchscript_predictor_gives_the_checkpoint_predictors_masks(checkpoint_path, torchscript_path):
    reference = Predictor.from_checkpoint(checkpoint_path, device="cpu", precision="fp32")
    predictor = torchscript_predictor(torchscript_path, device="cpu")
    assert (predictor.threshold, predictor.postprocess, predictor.preprocess) == (reference.threshold, POSTPROCESS, reference.preprocess)
    _assert_same_masks(reference, predictor, _random_images(3))
    assert torchscript_predictor(torchscript_path, device="cpu", threshold=0.9).threshold == 0.9


def test_a_non_default_normalisation_travels_into_the_torchscript_export(tmp_path):
    """predict prepares an exported model's inputs with the settings the export carries."""
    from lungseg.core.config import PreprocessConfig

    stored = {"image_size": SIZE, "normalize": "percentile", "percentile_low": 2.0, "percentile_high": 97.0}
    save_checkpoint(make_checkpoint(_trained_model(0), MODEL_ARGS, stored, 0.5), tmp_path / "model.pth")
    export_torchscript(tmp_path / "model.pth", tmp_path / "model.ts")
    predictor = load_predictor(tmp_path / "model.ts", device="cpu")
    assert predictor.preprocess == stored
    assert PreprocessConfig(**predictor.preprocess).percentile_high == 97.0  # as predict builds its settings


def test_an_export_from_before_the_normalize_option_prepares_images_as_minmax(tmp_path):
    save_checkpoint(make_checkpoint(_trained_model(0), MODEL_ARGS, {"image_size": SIZE}, 0.5), tmp_path / "old.pth")
    export_torchscript(tmp_path / "old.pth", tmp_path / "old.ts")
    assert load_predictor(tmp_path / "old.ts", device="cpu").preprocess["normalize"] == "minmax"


@pytest.mark.parametrize("device, why", [("cuda", "onnxruntime-gpu"), ("mps", "ONNX models run on device 'auto', 'cpu' or 'cuda'")])
def test_a_device_onnxruntime_cannot_use_is_a_lungseg_error(onnx_path, device, why):
    import onnxruntime

    if device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("needs an onnxruntime without CUDA")
    with pytest.raises(LungsegError, match=rf"tiny_unet\.onnx: cannot load the model on device '{device}'.*{why}"):
        load_predictor(onnx_path, device=device)


def test_a_checkpoint_or_an_export_is_told_apart(checkpoint_path, torchscript_path, onnx_path):
    assert not is_exported(checkpoint_path) and is_exported(torchscript_path) and is_exported(onnx_path)
    assert is_torchscript(torchscript_path) and not is_torchscript(checkpoint_path)


@pytest.mark.parametrize("text, problem", [("{not json", "is not valid JSON"),
                                           ('{"threshold": 0.5, "postprocess": "none", "model": {}}', "lacks preprocess"),
                                           ('{"threshold": 0.5, "postprocess": "none", "model": {}, "preprocess": {}}',
                                            "lacks preprocess.image_size")])
def test_metadata_that_inference_cannot_use_is_refused_naming_the_file(text, problem):
    with pytest.raises(CheckpointError, match=f"model.ts: the 'lungseg' metadata {problem}"):
        parse_metadata(text, "model.ts")


def test_the_dice_calibration_travels_into_both_exports(checkpoint_path, torchscript_path, onnx_path):
    reference = Predictor.from_checkpoint(checkpoint_path, device="cpu", precision="fp32")
    probability = reference.probabilities(_random_images(1, seed=4))[0]
    expected = reference.dice_estimate(probability)
    assert expected is not None
    for predictor in (torchscript_predictor(torchscript_path, device="cpu"), onnx_predictor(onnx_path)):
        assert predictor.estimator is not None
        assert predictor.dice_estimate(probability) == pytest.approx(expected, abs=1e-6)
