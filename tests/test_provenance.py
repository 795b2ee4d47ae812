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
    real = training_data("/hospital/xrays/2024", index(["Montgomery", "Shenxhen"]))
    assert real == {"data": "2024", "n_images": 2, "synthetic": False, "fingerprint": real["fingerprint"]}
    other = training_data("/hospital/xrays/2024", index(["Montgomery", "Shenxhen", "Montgomery"]))
    assert other["fingerprint"] != real["fingerprint"] and len(real["fingerprint"]) == 16


def test_phantoms_are_recognised_by_folder_or_by_their_counties():
    assert training_data(paths.SYNTHETIC_DIR, index(["A", "B"]))["synthetic"]
    assert training_data("/elsewhere/copy", index(["PhantomA", "PhantomB"]))["synthetic"]
    assert not training_data("/elsewhere/copy", index(["PhantomA", "Montgomery"]))["synthetic"]


def test_a_model_trained_on_phantoms_gets_a_warning_naming_it():
    info = {"training_data": training_data(paths.SYNTHETIC_DIR, index(["PhantomA"] * 3))}
    warning = synthetic_warning("results/best_unet.pth", info)
    assert warning.startswith("warning: results/best_unet.pth was trained on synthetic phantoms (synthetic, 3 images)")
    assert synthetic_warning("m.pth", {"training_data": training_data("/x", index(["Montgomery"]))}) is None
    assert synthetic_warning("old.pth", {}) is None  # checkpoints from before the record say nothing
