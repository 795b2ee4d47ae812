"""Tests for lungseg.core.config: params.yaml -> checked pydantic dataclasses, every problem reported at once."""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys

import pytest
import yaml

from lungseg.core import config
from lungseg.core.config import SECTIONS, load, read_params, validate
from lungseg.core.errors import ParamsError


@pytest.fixture(scope="module")
def repo_params(repo_root) -> dict:
    return read_params(repo_root / "params.yaml")


def _problems(error: ParamsError) -> list[str]:
    return [line[4:] for line in str(error).splitlines() if line.startswith("  - ")]


def test_every_section_of_the_repo_params_loads(repo_params):
    assert set(repo_params) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        loaded = load(repo_params, name)
        assert isinstance(loaded, cls)
    everything = load(repo_params, *SECTIONS)
    assert [type(c) for c in everything] == list(SECTIONS.values())


def test_repo_params_values_come_through_typed(repo_params):
    data, preprocess, split, train, infer = load(repo_params, "data", "preprocess", "split", "train", "infer")
    assert data.dir == repo_params["data"]["dir"]
    assert preprocess.image_size == repo_params["preprocess"]["image_size"]
    assert preprocess.metadata_columns == tuple(repo_params["preprocess"]["metadata_columns"])
    assert split.fractions == (repo_params["split"]["train"], repo_params["split"]["val"], repo_params["split"]["test"])
    assert isinstance(train.lr, float) and train.lr == repo_params["train"]["lr"]
    assert 0 < infer.threshold < 1


def test_missing_sections_and_keys_take_the_defaults():
    assert load({}, "train") == config.TrainConfig()
    assert load({"split": {"seed": 3}}, "split") == config.SplitConfig(seed=3)


def test_integer_is_accepted_where_a_number_is_expected():
    train = load({"train": {"lr": 1}}, "train")
    assert train.lr == 1.0 and isinstance(train.lr, float)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ParamsError) as caught:
        load({"train": {"epochz": 3}}, "train")
    assert "train.epochz: unknown key (did you mean train.epochs?)" in str(caught.value)


def test_unknown_key_without_a_close_match_lists_the_allowed_keys():
    with pytest.raises(ParamsError) as caught:
        load({"model": {"colour": "red"}}, "model")
    message = str(caught.value)
    assert "model.colour: unknown key" in message and "base_width" in message and "depth" in message


@pytest.mark.parametrize("section, key, value, expected", [
    ("train", "epochs", "ten", "expected an integer"),
    ("train", "epochs", 2.5, "expected an integer"),
    ("train", "epochs", True, "expected an integer"),
    ("train", "lr", "fast", "expected a number"),
    ("train", "lr", float("nan"), "expected a finite number"),
    ("train", "lr", "nan", "expected a finite number"),  # how `dvc exp run -S train.lr=nan` arrives
    ("augment", "noise", float("inf"), "expected a finite number"),
    ("infer", "threshold", "-inf", "expected a finite number"),
    ("train", "device", 3, "expected text"),
    ("preprocess", "metadata_columns", "county", "expected a list of names"),
    ("preprocess", "metadata_columns", [1, 2], "expected a list of names"),
])
def test_wrong_type_is_named_with_its_key(section, key, value, expected):
    with pytest.raises(ParamsError) as caught:
        load({section: {key: value}}, section)
    (problem,) = _problems(caught.value)
    assert problem.startswith(f"{section}.{key}=")
    assert expected in problem


def test_section_that_is_not_a_mapping_is_reported():
    with pytest.raises(ParamsError, match="train: must be a mapping"):
        load({"train": [1, 2]}, "train")


def test_data_dir_defaults_to_the_folder_the_synthesize_stage_makes():
    """data.dir was required before; every key now defaults to its params.yaml value."""
    assert load({"data": {}}, "data").dir == "data/raw/synthetic"


def test_all_out_of_range_values_are_reported_in_one_error(repo_params):
    params = copy.deepcopy(repo_params)
    params["train"].update(epochs=0, lr=0.0, device="tpu")
    params["split"].update(train=0.7, val=0.1, test=0.1)  # sums to 0.9
    params["infer"]["threshold"] = 1.5
    params["preprocess"]["mask_threshold"] = 255
    with pytest.raises(ParamsError) as caught:
        load(params, "preprocess", "split", "train", "infer")
    problems = _problems(caught.value)
    keys = [p.split("=")[0].split(":")[0].strip() for p in problems]
    assert "train.epochs" in keys
    assert "train.lr" in keys
    assert "train.device" in keys
    assert any(p.startswith("split.train + split.val + split.test") for p in problems)
    assert "infer.threshold" in keys
    assert "preprocess.mask_threshold" in keys
    assert len(problems) == 6
    assert "has 6 problem(s)" in str(caught.value)
    assert "'tpu'" in str(caught.value) and "cuda" in str(caught.value)  # says what is allowed


@pytest.mark.parametrize("section, values, key", [
    ("train", {"lr": -0.1}, "train.lr"),
    ("train", {"batch_size": 0}, "train.batch_size"),
    ("train", {"bce_weight": 0.0, "dice_weight": 0.0}, "train.bce_weight + train.dice_weight"),
    ("train", {"precision": "fp16"}, "train.precision"),
    ("train", {"epochs": 8, "low_res_epochs": 8}, "train.low_res_epochs"),
    ("train", {"low_res_size": 4}, "train.low_res_size"),
    ("split", {"val": 0.0, "train": 0.9}, "split.val"),
    ("infer", {"threshold": 0.0}, "infer.threshold"),
    ("infer", {"device": "gpu"}, "infer.device"),
    ("preprocess", {"image_size": 4}, "preprocess.image_size"),
    ("preprocess", {"normalize": "zscore"}, "preprocess.normalize"),
    ("model", {"depth": 0}, "model.depth"),
    ("synthetic", {"min_size": 600, "max_size": 500}, "synthetic.max_size"),
    ("visualize", {"overlay_alpha": 0.0}, "visualize.overlay_alpha"),
    ("evaluate", {"baseline_steps": 1}, "evaluate.baseline_steps"),
])
def test_each_range_check_names_its_key(section, values, key):
    with pytest.raises(ParamsError) as caught:
        load({section: values}, section)
    assert any(p.startswith(key) for p in _problems(caught.value)), str(caught.value)


def test_source_name_appears_in_the_error():
    with pytest.raises(ParamsError, match="custom.yaml has 1 problem"):
        load({"train": {"epochs": 0}}, "train", source="custom.yaml")


def test_read_params_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError) as caught:
        read_params(path)
    assert str(path) in str(caught.value) and "not found" in str(caught.value)


def test_read_params_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: [1, 2\n  lr: 0.1\n")
    with pytest.raises(ParamsError) as caught:
        read_params(path)
    assert str(path) in str(caught.value) and "not valid YAML" in str(caught.value)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"])
def test_read_params_requires_a_mapping(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as caught:
        read_params(path)
    assert str(path) in str(caught.value)


def test_read_params_returns_the_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 2\n")
    assert read_params(path) == {"train": {"epochs": 2}}
    assert load(read_params(path), "train").epochs == 2


def test_validate_lists_every_problem_of_the_whole_file_at_once(repo_params):
    params = copy.deepcopy(repo_params)
    params["trian"] = {}
    params["train"].update({"epochs": -1, "lr": "fast", "batchsize": 3})
    params["preprocess"]["image_size"] = 100
    with pytest.raises(ParamsError) as caught:
        validate(params)
    problems = _problems(caught.value)
    assert "trian: unknown section (did you mean train?)" in problems
    assert "train.batchsize: unknown key (did you mean train.batch_size?)" in problems
    assert "train.lr='fast': expected a number" in problems
    assert "train.epochs=-1: must be >= 1" in problems  # still checked although lr has the wrong type
    assert any(p.startswith("preprocess.image_size=100: must be divisible by 2**model.depth = 16") for p in problems)
    assert len(problems) == 5


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_nan_is_refused_in_every_number_of_every_section(section, repo_params):
    """NaN compares false with everything, so it slipped past every range check before."""
    numbers = [key for key, value in repo_params.get(section, {}).items()
               if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool))]
    params = copy.deepcopy(repo_params)
    params[section] = {**params.get(section, {}), **{key: float("nan") for key in numbers}}
    if not numbers:
        validate(params)
        return
    with pytest.raises(ParamsError) as caught:
        validate(params)
    assert {p.split("=")[0] for p in _problems(caught.value)} == {f"{section}.{key}" for key in numbers}


def test_validate_accepts_the_repo_params(repo_params):
    validate(repo_params)


def test_a_stage_refuses_bad_params_before_writing_anything(tmp_path, repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["train"]["epochs"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, str(repo_root / "stages" / "synthesize.py")], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert "train.epochs=0: must be >= 1" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# --------------------------------------------------------------------------- one source of truth


def test_the_defaults_are_the_repo_params(repo_params):
    """Every key of params.yaml has a default, equal to its value there: the two cannot drift."""
    for name, cls in SECTIONS.items():
        assert {f.name for f in dataclasses.fields(cls)} == set(repo_params[name]), name
        assert load(repo_params, name) == cls(), name


def _keys_whose_default_is(kind) -> list[tuple[str, str]]:
    return [(name, f.name) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)
            if type(getattr(cls(), f.name)) is kind]


FLOATS, INTS = _keys_whose_default_is(float), _keys_whose_default_is(int)


def test_the_key_lists_cover_every_number_of_the_repo_params(repo_params):
    numbers = {(name, key) for name, section in repo_params.items() for key, value in section.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    assert set(FLOATS) | set(INTS) == numbers and not set(FLOATS) & set(INTS)
    assert ("augment", "rotate_degrees") in FLOATS  # written 10 in params.yaml, read as 10.0


@pytest.mark.parametrize("section, key", FLOATS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "-inf"])
def test_nan_and_infinity_are_refused_in_every_float(section, key, value):
    with pytest.raises(ParamsError) as caught:
        load({section: {key: value}}, section)
    assert _problems(caught.value) == [f"{section}.{key}={value!r}: expected a finite number"]


@pytest.mark.parametrize("section, key", INTS)
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_an_integer(section, key, value):
    with pytest.raises(ParamsError) as caught:
        load({section: {key: value}}, section)
    assert _problems(caught.value) == [f"{section}.{key}={value}: expected an integer"]


@pytest.mark.parametrize("section, key", FLOATS)
def test_a_boolean_is_not_a_number(section, key):
    with pytest.raises(ParamsError) as caught:
        load({section: {key: True}}, section)
    assert _problems(caught.value) == [f"{section}.{key}=True: expected a number"]


@pytest.mark.parametrize("value", [2.0, "2", None])
def test_integers_are_not_read_from_floats_or_text(value):
    with pytest.raises(ParamsError) as caught:
        load({"train": {"epochs": value}}, "train")
    assert _problems(caught.value) == [f"train.epochs={value!r}: expected an integer"]


def test_yaml_1_1_exponent_without_a_dot_is_still_a_number():
    params = yaml.safe_load("train:\n  lr: 1e-4\naugment:\n  noise: -1e-2\n")
    assert params["train"]["lr"] == "1e-4"  # what YAML 1.1 makes of it
    assert load(params, "train").lr == 1e-4
    with pytest.raises(ParamsError) as caught:
        load(params, "augment")
    assert _problems(caught.value) == ["augment.noise=-0.01: must be >= 0"]  # shown as the number it means


def test_empty_yaml_values_mean_empty_text_and_no_names():
    params = yaml.safe_load("split:\n  stratify_by:\nevaluate:\n  subgroups:\n")
    split, evaluate = load(params, "split", "evaluate")
    assert split.stratify_by == "" and evaluate.subgroups == ()


def test_lists_of_names_become_tuples_and_configs_are_frozen_and_hashable():
    preprocess = load({"preprocess": {"metadata_columns": ["ptb"]}}, "preprocess")
    assert preprocess.metadata_columns == ("ptb",)
    assert hash(preprocess) == hash(config.PreprocessConfig(metadata_columns=("ptb",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        preprocess.image_size = 64


def test_range_messages_say_the_declared_bounds():
    params = {"train": {"epochs": -1, "lr": 0}, "infer": {"threshold": 2}, "preprocess": {"mask_threshold": 255},
              "augment": {"probability": 1.5, "scale": 1, "rotate_degrees": 90}, "visualize": {"overlay_alpha": 0}}
    with pytest.raises(ParamsError) as caught:
        load(params, "train", "infer", "preprocess", "augment", "visualize")
    assert _problems(caught.value) == [
        "train.epochs=-1: must be >= 1",
        "train.lr=0.0: must be > 0",
        "infer.threshold=2.0: must be in (0, 1)",
        "preprocess.mask_threshold=255: must be in 0..254",
        "augment.probability=1.5: must be in [0, 1]",
        "augment.rotate_degrees=90.0: must be in [0, 45] (chest X-rays are taken upright)",
        "augment.scale=1.0: must be in [0, 1)",
        "visualize.overlay_alpha=0.0: must be in (0, 1]",
    ]


def test_choice_and_type_messages():
    params = {"train": {"device": "tpu", "compile": 1, "precision": None}, "augment": {"enabled": "yes"}}
    with pytest.raises(ParamsError) as caught:
        load(params, "train", "augment")
    assert _problems(caught.value) == [
        "train.device='tpu': must be one of ['auto', 'cpu', 'cuda', 'mps']",
        "train.precision='': must be one of ['auto', 'fp32', 'bf16']",
        "train.compile=1: expected text",
        "augment.enabled='yes': expected true or false",
    ]


def test_a_rule_over_several_keys_is_still_checked_when_another_key_is_bad():
    with pytest.raises(ParamsError) as caught:
        load({"train": {"lr": "fast", "bce_weight": 0, "dice_weight": 0}}, "train")
    assert _problems(caught.value) == ["train.lr='fast': expected a number", "train.bce_weight + train.dice_weight must be > 0"]


def test_a_rule_is_not_checked_with_a_bad_key_it_involves():
    with pytest.raises(ParamsError) as caught:
        load({"split": {"train": "x", "val": 0.5}}, "split")
    assert _problems(caught.value) == ["split.train='x': expected a number"]  # not also "sum = 1.4"


def test_the_exact_rule_messages():
    with pytest.raises(ParamsError) as caught:
        validate({"synthetic": {"min_size": 600, "max_size": 500}, "split": {"train": 0.7},
                  "preprocess": {"image_size": 30}, "model": {"depth": 2}})
    assert _problems(caught.value) == [
        "synthetic.max_size=500: must be >= synthetic.min_size (600)",
        "split.train + split.val + split.test = 0.9: must be 1",
        "preprocess.image_size=30: must be divisible by 2**model.depth = 4 (model.depth=2); e.g. 28",
    ]


def test_the_size_and_depth_rule_needs_both_sections():
    assert load({"preprocess": {"image_size": 30}}, "preprocess").image_size == 30
    with pytest.raises(ParamsError, match=r"preprocess\.image_size=30: must be divisible by 2\*\*model\.depth = 16"):
        load({"preprocess": {"image_size": 30}}, "preprocess", "model")


def test_a_key_that_is_not_text_is_an_unknown_key():
    with pytest.raises(ParamsError) as caught:
        load({"model": {7: 1}}, "model")
    assert _problems(caught.value) == ["model.7: unknown key; allowed: ['base_width', 'depth']"]


def test_direct_construction_and_replace_check_the_values_too():
    assert dataclasses.replace(config.AugmentConfig(), probability=1.0).probability == 1.0
    assert config.TrainConfig(epochs=3, batch_size=4, seed=0).lr == 1e-3
    with pytest.raises(ValueError):
        dataclasses.replace(config.TrainConfig(), epochs=0)
    with pytest.raises(ValueError):
        config.InferConfig(threshold=math.nan)
    with pytest.raises(ValueError):
        config.ModelConfig(colour="red")


@pytest.mark.parametrize("size, expected", [
    (128, "train.low_res_size=128: must be smaller than the preprocessed images (128 px"),
    (72, "train.low_res_size=72: must be divisible by 2**model.depth = 16 (model.depth=4); e.g. 64"),
])
def test_a_low_res_size_the_model_cannot_train_at_stops_the_params_check(size, expected):
    """check_params catches it, so `dvc repro` stops before any stage removes its outputs."""
    with pytest.raises(ParamsError) as caught:
        validate({"train": {"low_res_epochs": 2, "low_res_size": size}})
    assert any(problem.startswith(expected) for problem in _problems(caught.value))
    validate({"train": {"low_res_epochs": 0, "low_res_size": size}})  # unused while low_res_epochs is 0


@pytest.mark.parametrize("labels", [[0], [16], ["1"], [True], 2])
def test_lung_labels_are_whole_numbers_from_1_to_15(labels):
    with pytest.raises(ParamsError, match=r"data\.lung_labels"):
        config.load({"data": {"lung_labels": labels}}, "data")


def test_lung_labels_are_kept_sorted_once_each():
    data = config.load({"data": {"lung_labels": [2, 1, 2]}}, "data")
    assert data.lung_labels == (1, 2) and config.DataConfig().lung_labels == ()
