"""Tests for lungseg.provenance: what a model was trained on, and the phantom warning."""

from __future__ import annotations

import pandas as pd

from lungseg import paths
from lungseg.provenance import synthetic_warning, training_data


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

    from lungseg.checkpoint import make_checkpoint, save_checkpoint
    from lungseg.cli import main
    from lungseg.model import UNet

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
    from lungseg.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from lungseg.model import UNet

    for data_dir, counties in (("/hospital/xrays", ["Montgomery", "Shenxhen"]), ("/copy", ["PhantomA"])):
        record = training_data((data_dir,), index(counties))
        model_args = {"depth": 2, "base_width": 4}
        save_checkpoint(make_checkpoint(UNet(**model_args), model_args, {"image_size": 32}, 0.5, training_data=record),
                        tmp_path / "m.pth")
        assert load_checkpoint(tmp_path / "m.pth")["info"]["training_data"] == record
