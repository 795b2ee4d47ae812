"""params.yaml -> typed, checked config objects: the only module that knows the file's shape.

Each section of params.yaml maps to one frozen pydantic dataclass below, whose defaults are the
values in params.yaml (tests/test_config.py keeps them equal) and whose constraints are declared
once, at the field. A stage loads only the sections it reads (and dvc.yaml declares exactly those
keys for it), so editing one section reruns only the stages that depend on it. Every problem
found is reported at once, each as `section.key=value: what is expected`.

pydantic dataclasses rather than BaseModels: they stay standard dataclasses, so callers'
dataclasses.replace() keeps working (and validates the new values).
"""

from __future__ import annotations

import difflib
import numbers
import re
import typing
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError, PydanticKnownError

from lungseg.core.errors import ParamsError

Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16"]
DEVICES = typing.get_args(Device)


def _integer(value):
    """Whole numbers only: YAML's true/false, 2.0 and "2" are refused (lax pydantic takes them)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PydanticKnownError("int_type")
    return int(value)  # numpy integers too


def _number(value):
    """Any real number but a boolean; text too, as YAML 1.1 reads 1e-4 (no dot) as text.
    NaN and infinities are refused by allow_inf_nan=False: NaN would pass every range check."""
    if isinstance(value, bool):
        raise PydanticKnownError("float_type")
    return value


def _text(value):
    if value is None:  # an empty YAML value, e.g. `stratify_by:`
        return ""
    if not isinstance(value, str):
        raise PydanticKnownError("string_type")
    return value


def _names(value):
    items = [] if value is None else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise PydanticCustomError("names_type", "expected a list of names")
    return tuple(items)


Int = Annotated[int, BeforeValidator(_integer)]
Number = Annotated[float, BeforeValidator(_number)]
Text = Annotated[str, BeforeValidator(_text)]
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
Flag = Annotated[bool, Strict()]  # not 1, "yes" or "true"
DeviceName = Annotated[Device, BeforeValidator(_text)]


def _rule(problem: str, *keys: str) -> PydanticCustomError:
    """A rule over `keys` of one section, already worded as `section.key...: what is expected`."""
    return PydanticCustomError("section_rule", "{problem}", {"problem": problem, "keys": keys})


_section = dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))


def _folder(value):
    """data.dir: one folder. A list (accepted before data.extra_dirs existed) is refused with the fix."""
    if isinstance(value, (list, tuple)):
        raise PydanticCustomError("folder_list", "expected one folder; name further folders under data.extra_dirs, "
                                  "e.g. extra_dirs: {covid: ../covid-cxr}")
    if not _text(value).strip():
        raise PydanticCustomError("folder_type", "expected a folder")
    return value


SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # it names a DVC stage (extra_sources@<name>) and a file


def _named_folders(value):
    """data.extra_dirs: {name: folder}, each name a plain word, each folder non-empty text."""
    items = {} if value is None else value
    if not isinstance(items, dict) or not all(isinstance(name, str) and SOURCE_NAME.fullmatch(name)
                                              and isinstance(folder, str) and folder.strip()
                                              for name, folder in items.items()):
        raise PydanticCustomError("named_folders_type", "expected named folders, e.g. {covid: ../covid-cxr} "
                                  "(names of letters, digits, '.', '_' and '-'; {} = none)")
    return dict(items)


def _labels(value):
    """data.lung_labels: a list of whole numbers from 1 to 15 (the label maps lungseg reads)."""
    items = [] if value is None else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, int) and not isinstance(item, bool)
                                                      and 1 <= item <= 15 for item in items):
        raise PydanticCustomError("labels_type", "expected a list of labels, whole numbers from 1 to 15 ([] = every label)")
    return tuple(sorted(set(items)))


@_section
class DataConfig:
    """params.yaml's `data` section: the data folders, and which labels of a label map are lung.

    Each field is described by the comment beside it.
    """

    # a folder in the Kaggle layout or with image/ and mask/ inside
    dir: Annotated[str, BeforeValidator(_folder)] = "data/raw/synthetic"
    # further such folders, each under a name of its own: the source name of its images
    extra_dirs: Annotated[dict[str, str], BeforeValidator(_named_folders)] = Field(default_factory=dict)
    # label-map masks (1 = right lung, 2 = left lung, ...): which labels are lung; () = every label
    lung_labels: Annotated[tuple[int, ...], BeforeValidator(_labels)] = ()

    @property
    def dirs(self) -> tuple[str, ...]:
        """Every data folder: data.dir, then data.extra_dirs in the order written."""
        return (self.dir, *self.extra_dirs.values())

    @property
    def names(self) -> tuple[str, ...]:
        """Each folder's source name: data.dir's own folder name, then data.extra_dirs' names."""
        return (Path(self.dir).resolve().name or "data", *self.extra_dirs)

    @model_validator(mode="after")
    def _distinct(self):
        if self.names[0] in self.extra_dirs:
            raise _rule(f"data.extra_dirs: the name {self.names[0]!r} is already data.dir's (its folder's name); "
                        "choose another", "dir", "extra_dirs")
        resolved = [Path(folder).resolve() for folder in self.dirs]
        twice = sorted({folder for folder, path in zip(self.dirs, resolved) if resolved.count(path) > 1})
        if twice:
            raise _rule(f"data.extra_dirs: names the same folder more than once: {twice}; list each folder once",
                        "dir", "extra_dirs")
        return self


@_section
class SyntheticConfig:
    """params.yaml's `synthetic` section: the phantom data set (lungseg.data.synthetic.generate_dataset).

    Fields with a comment beside them are described there; the others:

    Attributes:
        n_images: phantoms to write.
        seed: seed of the phantoms' random generators (each image's comes from seed and its index).
        min_size: smallest image side in px.
        max_size: largest image side in px (>= min_size).
        low_contrast_fraction: share of phantoms with low contrast (a grey, washed-out picture).
        rotated_fraction: share of phantoms with a rotated patient.
    """

    n_images: Int = Field(200, ge=1)
    seed: Int = 0
    min_size: Int = Field(512, ge=16)
    max_size: Int = 1500
    # share of phantoms with each of what breaks models on real X-rays (lungseg.data.synthetic.HardCases)
    text_fraction: Number = Field(0.15, ge=0, le=1)  # burned-in text and L/R markers
    low_contrast_fraction: Number = Field(0.15, ge=0, le=1)
    dense_opacity_fraction: Number = Field(0.15, ge=0, le=1)  # a consolidation inside a lung (still lung in the mask)
    rotated_fraction: Number = Field(0.15, ge=0, le=1)
    cropped_fraction: Number = Field(0.15, ge=0, le=1)  # a field that cuts through the lungs

    @model_validator(mode="after")
    def _sizes(self):
        if self.max_size < self.min_size:
            raise _rule(f"synthetic.max_size={self.max_size}: must be >= synthetic.min_size ({self.min_size})",
                        "min_size", "max_size")
        return self


@_section
class PreprocessConfig:
    """params.yaml's `preprocess` section: how a data folder becomes training arrays (lungseg.data.preprocess).

    Fields with a comment beside them are described there; the others:

    Attributes:
        image_size: side in px of the square arrays the model sees (S).
    """

    image_size: Int = Field(128, ge=8)
    mask_threshold: Int = Field(127, ge=0, le=254)  # 0..255 scale: a resized mask pixel is lung when above it
    # how intensities become 0..255 (lungseg.data.normalize): minmax, percentile, equalize, clahe or none
    normalize: Annotated[Literal["minmax", "percentile", "equalize", "clahe", "none"], BeforeValidator(_text)] = "percentile"
    percentile_low: Number = Field(1.0, ge=0, le=100)  # percentile: this percentile becomes 0 ...
    percentile_high: Number = Field(99.0, ge=0, le=100)  # ... and this one 255
    clahe_clip_limit: Number = Field(2.0, gt=0)  # clahe: histogram clip, in multiples of a tile's mean count
    clahe_tiles: Int = Field(8, ge=1)  # clahe: tiles per side
    metadata_columns: Names = ("county", "ptb")  # carried into the index; nothing else is kept
    workers: Int = Field(0, ge=0)  # processes; 0 = every core
    max_pixels: Int = Field(200_000_000, ge=1)  # larger images are refused unread: a guard against decompression bombs

    @model_validator(mode="after")
    def _percentiles_in_order(self):
        if self.percentile_low >= self.percentile_high:
            raise _rule(f"preprocess.percentile_low={self.percentile_low:g}: must be below preprocess.percentile_high "
                        f"({self.percentile_high:g})", "percentile_low", "percentile_high")
        if self.clahe_tiles > self.image_size:
            raise _rule(f"preprocess.clahe_tiles={self.clahe_tiles}: must be at most preprocess.image_size ({self.image_size})",
                        "clahe_tiles", "image_size")
        return self


@_section
class SplitConfig:
    """params.yaml's `split` section: the train/val/test split (lungseg.data.split).

    Fields with a comment beside them are described there; the others:

    Attributes:
        train: share of the images in the training part (train + val + test = 1).
        val: share in the validation part.
        test: share in the test part.
        seed: seed of the shuffle within each stratum.
    """

    train: Number = Field(0.8, gt=0)
    val: Number = Field(0.1, gt=0)
    test: Number = Field(0.1, gt=0)
    seed: Int = 42
    stratify_by: Text = "county"  # a metadata column; "" or a column the data lacks: none (several data folders: by folder still)

    @property
    def fractions(self) -> tuple[float, float, float]:
        """(train, val, test) shares."""
        return (self.train, self.val, self.test)

    @model_validator(mode="after")
    def _sum_to_one(self):
        if abs(sum(self.fractions) - 1) > 1e-6:
            raise _rule(f"split.train + split.val + split.test = {sum(self.fractions):g}: must be 1", "train", "val", "test")
        return self


@_section
class ModelConfig:
    """params.yaml's `model` section: the U-Net's shape.

    Each field is described by the comment beside it.
    """

    depth: Int = Field(4, ge=1)  # number of 2x poolings
    base_width: Int = Field(8, ge=1)  # channels at full resolution; doubles at each level


@_section
class TrainConfig:
    """params.yaml's `train` section: how the model is trained (lungseg.training).

    Fields with a comment beside them are described there; the others:

    Attributes:
        epochs: passes over the training part.
        batch_size: images per step, the global batch however many processes train (nproc).
        lr: the Adam learning rate (where a cosine schedule starts).
        bce_weight: weight of the binary cross-entropy term of the loss.
        dice_weight: weight of the Dice term of the loss (bce_weight + dice_weight > 0).
        seed: seed of the initial weights, the image order and the augmentations (+ rank under DDP).
    """

    epochs: Int = Field(8, ge=1)
    batch_size: Int = Field(2, ge=1)
    lr: Number = Field(1e-3, gt=0)
    lr_schedule: Annotated[Literal["cosine", "constant"], BeforeValidator(_text)] = "cosine"  # cosine: decay lr to 0 over the run; constant: keep lr
    bce_weight: Number = Field(0.5, ge=0)
    dice_weight: Number = Field(0.5, ge=0)
    seed: Int = 42
    device: DeviceName = "auto"  # auto: CUDA, then Apple MPS, then CPU
    precision: Annotated[Precision, BeforeValidator(_text)] = "auto"  # auto: bf16 autocast where the hardware runs it natively, else fp32
    compile: Annotated[Literal["auto", "always", "never"], BeforeValidator(_text)] = "auto"  # torch.compile: auto (CUDA only), always or never
    nproc: Int = Field(1, ge=1)  # training processes on this machine (one per GPU), with torchrun and DDP
    low_res_epochs: Int = Field(0, ge=0)  # the first epochs train at low_res_size px (progressive resizing); 0: none
    low_res_size: Int = Field(64, ge=8)  # below preprocess.image_size and divisible by 2**model.depth (low_res_problems)

    @model_validator(mode="after")
    def _some_loss(self):
        if self.bce_weight + self.dice_weight <= 0:
            raise _rule("train.bce_weight + train.dice_weight must be > 0", "bce_weight", "dice_weight")
        return self

    @model_validator(mode="after")
    def _full_size_last(self):
        if self.low_res_epochs >= self.epochs:
            raise _rule(f"train.low_res_epochs={self.low_res_epochs}: must be < train.epochs ({self.epochs}), "
                        "so that the last epochs train at full size", "low_res_epochs", "epochs")
        return self


@_section
class AugmentConfig:
    """Random changes to each training batch (lungseg.training.augment); all ranges are symmetric."""

    enabled: Flag = True
    probability: Number = Field(0.8, ge=0, le=1)  # share of images changed at all; the rest are seen as they are
    rotate_degrees: Number = Field(10.0, ge=0, le=45, json_schema_extra={"why": "chest X-rays are taken upright"})
    scale: Number = Field(0.1, ge=0, lt=1)  # zoom drawn in [1 - scale, 1 + scale]
    shift: Number = Field(0.05, ge=0)  # translation, as a fraction of the image side
    brightness: Number = Field(0.1, ge=0)  # added, on the [0, 1] intensity scale
    contrast: Number = Field(0.4, ge=0, lt=1)  # multiplies the deviation from the image's mean by [1 - c, 1 + c]
    gamma: Number = Field(0.4, ge=0, lt=1)  # exponent drawn log-uniformly in [1 - gamma, 1 + gamma]
    noise: Number = Field(0.02, ge=0)  # Gaussian noise, standard deviation up to this
    # site appearance (other hospitals; chosen in BENCHMARKS.md); each is off at 0
    blur: Number = Field(1.0, ge=0, le=4)  # Gaussian sigma in [0, blur] px at training size; 0 also turns sharpening off
    sharpen: Number = Field(1.0, ge=0, le=3)  # detail weight drawn in [-sharpen, 1]: < 0 sharpens, > 0 blurs
    border_probability: Number = Field(0.3, ge=0, le=1)  # share of changed images given collimation bands
    border_width: Number = Field(0.1, ge=0, lt=0.5)  # each edge's band up to this fraction of the side
    text_probability: Number = Field(0.3, ge=0, le=1)  # share of changed images given burned-in text/markers
    text_count: Int = Field(3, ge=1, le=10)  # up to this many marks on an image
    text_size: Number = Field(0.1, gt=0, le=0.5)  # mark height up to this fraction of the side
    opacity_probability: Number = Field(0.3, ge=0, le=1)  # share of changed images given a dense opacity in a lung
    opacity_size: Number = Field(0.25, gt=0, le=0.5)  # its radius up to this fraction of the side


@_section
class InferConfig:
    """params.yaml's `infer` section: how predictions are made.

    Attributes:
        threshold: on sigmoid(logits): a pixel is lung above it.
        batch_size: images per forward pass.
        device: as train.device (auto: CUDA, then Apple MPS, then CPU).
    """

    threshold: Number = Field(0.5, gt=0, lt=1)  # on sigmoid(logits)
    batch_size: Int = Field(32, ge=1)
    device: DeviceName = "auto"


@_section
class EvaluateConfig:
    """params.yaml's `evaluate` section: how the test part is scored (lungseg.evaluation).

    Fields with a comment beside them are described there; the others:

    Attributes:
        confidence: level of the bootstrap confidence intervals of the means.
        bootstrap_seed: seed of the bootstrap resampling.
    """

    subgroups: Names = ("county", "ptb")  # metadata columns to report means per value of
    baseline_steps: Int = Field(64, ge=2)  # intensity thresholds tried by the threshold baseline
    native: Flag = True  # also score at each image's original resolution (reads the original masks)
    bootstrap_samples: Int = Field(2000, ge=100)  # resamples for the confidence intervals of the means
    confidence: Number = Field(0.95, gt=0, lt=1)
    bootstrap_seed: Int = 0


@_section
class QualityConfig:
    """Each prediction's estimated Dice and when it is flagged (lungseg.postprocessing.quality)."""

    min_dice: Number = Field(0.925, ge=0, le=1)  # flag a mask whose estimated Dice is below this
    min_piece: Number = Field(0.01, ge=0, lt=1)  # a component below this share of the lung is a speck, not a piece
    calibration_draws: Int = Field(8, ge=0, le=100)  # degraded copies of each validation image the estimate is fitted on


@_section
class VisualizeConfig:
    """params.yaml's `visualize` section: the pictures of the results.

    Fields with a comment beside them are described there; the others:

    Attributes:
        overlay_alpha: opacity of the mask overlays in the montage.
        dpi: resolution of the saved figures.
    """

    n_examples: Int = Field(6, ge=1)  # montage rows: best, median, worst, then evenly spaced by Dice
    overlay_alpha: Number = Field(0.4, gt=0, le=1)
    dpi: Int = Field(100, ge=10)


SECTIONS = {
    "data": DataConfig, "synthetic": SyntheticConfig, "preprocess": PreprocessConfig, "split": SplitConfig,
    "model": ModelConfig, "train": TrainConfig, "augment": AugmentConfig, "infer": InferConfig, "evaluate": EvaluateConfig,
    "quality": QualityConfig, "visualize": VisualizeConfig,
}


def _cross_problems(configs: dict) -> list[str]:
    """The rules that tie two sections together (checked when both are loaded)."""
    preprocess, model, train = configs.get("preprocess"), configs.get("model"), configs.get("train")
    if not (preprocess and model):
        return []
    if preprocess.image_size % 2**model.depth:
        step = 2**model.depth
        return [f"preprocess.image_size={preprocess.image_size}: must be divisible by 2**model.depth = {step} "
                f"(model.depth={model.depth}); e.g. {preprocess.image_size // step * step or step}"]
    return low_res_problems(train, preprocess.image_size, model.depth) if train else []


def low_res_problems(train: TrainConfig, image_size: int, depth: int) -> list[str]:
    """What keeps the U-Net from training at train.low_res_size on images of image_size px with `depth` poolings.

    Args:
        train: the train section (low_res_epochs, low_res_size).
        image_size: preprocess.image_size.
        depth: model.depth, the number of 2x poolings.

    Returns:
        One `section.key=value: what is expected` line per problem; empty when train.low_res_epochs is 0 or all is well.
    """
    size, step = train.low_res_size, 2**depth
    if not train.low_res_epochs:
        return []
    if size >= image_size:
        return [f"train.low_res_size={size}: must be smaller than the preprocessed images ({image_size} px, "
                f"preprocess.image_size), or set train.low_res_epochs to 0"]
    if size % step:
        return [f"train.low_res_size={size}: must be divisible by 2**model.depth = {step} "
                f"(model.depth={depth}); e.g. {max(size // step * step, step)}"]
    return []


def read_params(path: str | Path = "params.yaml") -> dict:
    """Read params.yaml as it is written, unchecked (load and validate check it).

    Args:
        path: the params file.

    Returns:
        The mapping of section names to their raw values.

    Raises:
        ParamsError: the file is missing, unreadable, not YAML, or not a mapping of sections.
    """
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the project folder, or pass --params") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    except OSError as error:
        raise ParamsError(f"{path} cannot be read: {error}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def load(params: dict, *names: str, source: str = "params.yaml"):
    """Build the config objects for sections `names`.

    Args:
        params: read_params' mapping; a missing section takes every default.
        *names: the sections to build (keys of SECTIONS).
        source: the file named in the error message.

    Returns:
        The config object of one section, or a tuple of them in the order of `names`.

    Raises:
        ParamsError: one, listing every problem in those sections and the rules between them.
    """
    configs, problems = _check(params, names)
    _raise_if(problems, source)
    return configs[0] if len(configs) == 1 else tuple(configs)


def validate(params: dict, source: str = "params.yaml") -> None:
    """Check the whole file at once.

    Every stage does this first, so a bad value anywhere stops `dvc repro` before any work, with every problem listed.

    Args:
        params: read_params' mapping.
        source: the file named in the error message.

    Raises:
        ParamsError: one, listing every problem, unknown sections included.
    """
    unknown = [f"{name}: unknown section" + _did_you_mean(str(name), SECTIONS) for name in params if name not in SECTIONS]
    _raise_if(unknown + _check(params, SECTIONS)[1], source)


def _raise_if(problems: list[str], source: str) -> None:
    if problems:
        raise ParamsError(f"{source} has {len(problems)} problem(s):" + "".join(f"\n  - {p}" for p in problems))


def _check(params: dict, names) -> tuple[list, list[str]]:
    """(the config of each section in `names`, None where it has a problem; every problem found)."""
    built, problems = {}, []
    for name in names:
        built[name] = _build(name, params.get(name, {}), problems)
    return [built[name] for name in names], problems + _cross_problems(built)


@cache
def _adapter(cls) -> TypeAdapter:
    return TypeAdapter(cls)


def _build(name: str, raw, problems: list[str]):
    if not isinstance(raw, dict):
        problems.append(f"{name}: must be a mapping of keys, got {raw!r}")
        return None
    cls = SECTIONS[name]
    try:
        return _adapter(cls).validate_python(raw)
    except ValidationError as error:
        errors = error.errors(include_url=False)
    # pydantic checks a section's rules only once all its keys are valid: check them again without
    # the bad keys, and report those that do not involve one (so every problem is listed at once)
    bad = {str(e["loc"][0]) for e in errors if e["loc"]}
    if bad:
        try:
            _adapter(cls).validate_python({key: value for key, value in raw.items() if str(key) not in bad})
        except ValidationError as again:
            errors += [e for e in again.errors(include_url=False) if e["type"] == "section_rule" and not bad & set(e["ctx"]["keys"])]
    problems += [_describe(name, cls, e) for e in errors]
    return None


# pydantic's error types -> what the user is told; ranges and choices are read from the field itself
_EXPECTED = {
    "int_type": "expected an integer", "int_from_float": "expected an integer", "int_parsing": "expected an integer",
    "float_type": "expected a number", "float_parsing": "expected a number", "finite_number": "expected a finite number",
    "string_type": "expected text", "bool_type": "expected true or false", "names_type": "expected a list of names",
}
_RANGE = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_UNKNOWN = {"extra_forbidden", "unexpected_keyword_argument", "invalid_key"}


def _describe(name: str, cls, error: dict) -> str:
    """One pydantic error as `section.key=value: what is expected`."""
    kind, loc = error["type"], error["loc"]
    if kind == "section_rule" or not loc:
        return error["ctx"]["problem"] if kind == "section_rule" else f"{name}: {error['msg']}"
    key, fields = str(loc[0]), cls.__pydantic_fields__
    if kind in _UNKNOWN or key not in fields:
        return f"{name}.{key}: unknown key" + _did_you_mean(key, fields, prefix=f"{name}.")
    field, value = fields[key], error["input"]
    if kind in _RANGE:
        value = float(value) if field.annotation is float else value  # as it was read: 2 -> 2.0, "1e-4" -> 0.0001
        expected = _expected_range(field)
    elif kind == "literal_error":
        expected = f"must be one of {list(typing.get_args(field.annotation))}"
    else:
        expected = _EXPECTED.get(kind, error["msg"])
    return f"{name}.{key}={value!r}: {expected}"


def _expected_range(field) -> str:
    """The field's declared bounds in words: `must be >= 1`, `must be in (0, 1)`, `must be in 0..254`."""
    bounds = {kind: getattr(m, kind) for m in field.metadata for kind in ("ge", "gt", "le", "lt") if hasattr(m, kind)}
    low = ("[", ">=", bounds["ge"]) if "ge" in bounds else ("(", ">", bounds["gt"]) if "gt" in bounds else None
    high = ("]", "<=", bounds["le"]) if "le" in bounds else (")", "<", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        whole = field.annotation is int and low[0] + high[0] == "[]"
        text = f"must be in {low[2]}..{high[2]}" if whole else f"must be in {low[0]}{low[2]}, {high[2]}{high[0]}"
    else:
        text = f"must be {(low or high)[1]} {(low or high)[2]}"
    why = (field.json_schema_extra or {}).get("why")
    return f"{text} ({why})" if why else text


def _did_you_mean(name: str, choices, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else f"; allowed: {sorted(choices)}"
