"""params.yaml -> typed, checked config objects: the only module that knows the file's shape.

Each section of params.yaml maps to one frozen dataclass below. A stage loads only the sections
it reads (and dvc.yaml declares exactly those keys for it), so editing one section reruns only
the stages that depend on it. Every problem found is reported at once, each with its key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from lungseg.errors import ParamsError  # re-exported: config.ParamsError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class DataConfig:
    dir: str  # a folder in the Kaggle layout or with image/ and mask/ inside


@dataclass(frozen=True)
class SyntheticConfig:
    n_images: int = 200
    seed: int = 0
    min_size: int = 512
    max_size: int = 1500

    def problems(self) -> list[str]:
        out = _at_least(self, n_images=1, min_size=16)
        if self.max_size < self.min_size:
            out.append(f"synthetic.max_size={self.max_size}: must be >= synthetic.min_size ({self.min_size})")
        return out


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 128
    mask_threshold: int = 127  # 0..255 scale: a resized mask pixel is lung when above it
    normalize: str = "minmax"  # minmax: stretch each image to the full range; none: keep values
    metadata_columns: tuple[str, ...] = ("county", "ptb")  # carried into the index; nothing else is kept
    workers: int = 0  # processes; 0 = every core
    max_pixels: int = 200_000_000  # larger images are refused unread: a guard against decompression bombs

    def problems(self) -> list[str]:
        out = _at_least(self, image_size=8, workers=0, max_pixels=1)
        if not 0 <= self.mask_threshold < 255:
            out.append(f"preprocess.mask_threshold={self.mask_threshold}: must be in 0..254")
        out += _one_of(self, normalize=("minmax", "none"))
        return out


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 42
    stratify_by: str = "county"  # a metadata column; "" or a column the data lacks: no stratification

    @property
    def fractions(self) -> tuple[float, float, float]:
        return (self.train, self.val, self.test)

    def problems(self) -> list[str]:
        out = [f"split.{k}={v}: must be > 0" for k, v in zip(("train", "val", "test"), self.fractions) if v <= 0]
        if abs(sum(self.fractions) - 1) > 1e-6:
            out.append(f"split.train + split.val + split.test = {sum(self.fractions):g}: must be 1")
        return out


@dataclass(frozen=True)
class ModelConfig:
    depth: int = 4  # number of 2x poolings
    base_width: int = 16  # channels at full resolution; doubles at each level

    def problems(self) -> list[str]:
        return _at_least(self, depth=1, base_width=1)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # cosine: decay lr to 0 over the run; constant: keep lr
    bce_weight: float = 0.5
    dice_weight: float = 0.5
    seed: int = 42
    device: str = "auto"  # auto: CUDA, then Apple MPS, then CPU
    precision: str = "auto"  # auto: bf16 autocast where the hardware runs it natively, else fp32
    compile: str = "auto"  # torch.compile: auto (CUDA only), always or never
    nproc: int = 1  # training processes on this machine (one per GPU), with torchrun and DDP

    def problems(self) -> list[str]:
        out = _at_least(self, epochs=1, batch_size=1, nproc=1)
        out += [f"train.{k}={getattr(self, k)}: must be > 0" for k in ("lr",) if getattr(self, k) <= 0]
        out += [f"train.{k}={getattr(self, k)}: must be >= 0" for k in ("bce_weight", "dice_weight") if getattr(self, k) < 0]
        if self.bce_weight + self.dice_weight <= 0:
            out.append("train.bce_weight + train.dice_weight must be > 0")
        return out + _one_of(self, device=DEVICES, precision=PRECISIONS, lr_schedule=("cosine", "constant"),
                          compile=("auto", "always", "never"))


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes to each training batch (lungseg.augment); all ranges are symmetric."""

    enabled: bool = True
    probability: float = 0.8  # share of images changed at all; the rest are seen as they are
    rotate_degrees: float = 10.0
    scale: float = 0.1  # zoom drawn in [1 - scale, 1 + scale]
    shift: float = 0.05  # translation, as a fraction of the image side
    brightness: float = 0.1  # added, on the [0, 1] intensity scale
    contrast: float = 0.2  # multiplies the deviation from the image's mean by [1 - c, 1 + c]
    gamma: float = 0.2  # exponent drawn log-uniformly in [1 - gamma, 1 + gamma]
    noise: float = 0.02  # Gaussian noise, standard deviation up to this

    def problems(self) -> list[str]:
        out = [] if 0 <= self.probability <= 1 else [f"augment.probability={self.probability}: must be in [0, 1]"]
        out += [f"augment.{k}={getattr(self, k)}: must be >= 0" for k in ("rotate_degrees", "shift", "brightness", "noise")
                if getattr(self, k) < 0]
        out += [f"augment.{k}={getattr(self, k)}: must be in [0, 1)" for k in ("scale", "contrast", "gamma")
                if not 0 <= getattr(self, k) < 1]
        if self.rotate_degrees > 45:
            out.append(f"augment.rotate_degrees={self.rotate_degrees}: must be <= 45 (chest X-rays are taken upright)")
        return out


@dataclass(frozen=True)
class InferConfig:
    threshold: float = 0.5  # on sigmoid(logits)
    batch_size: int = 32
    device: str = "auto"

    def problems(self) -> list[str]:
        out = [] if 0 < self.threshold < 1 else [f"infer.threshold={self.threshold}: must be in (0, 1)"]
        return out + _at_least(self, batch_size=1) + _one_of(self, device=DEVICES)


@dataclass(frozen=True)
class EvaluateConfig:
    subgroups: tuple[str, ...] = ("county", "ptb")  # metadata columns to report means per value of
    baseline_steps: int = 64  # intensity thresholds tried by the threshold baseline
    native: bool = True  # also score at each image's original resolution (reads the original masks)
    bootstrap_samples: int = 2000  # resamples for the confidence intervals of the means
    confidence: float = 0.95
    bootstrap_seed: int = 0

    def problems(self) -> list[str]:
        out = _at_least(self, baseline_steps=2, bootstrap_samples=100)
        if not 0 < self.confidence < 1:
            out.append(f"evaluate.confidence={self.confidence}: must be in (0, 1)")
        return out


@dataclass(frozen=True)
class VisualizeConfig:
    n_examples: int = 6  # montage rows: best, median, worst, then evenly spaced by Dice
    overlay_alpha: float = 0.4
    dpi: int = 100

    def problems(self) -> list[str]:
        out = _at_least(self, n_examples=1, dpi=10)
        if not 0 < self.overlay_alpha <= 1:
            out.append(f"visualize.overlay_alpha={self.overlay_alpha}: must be in (0, 1]")
        return out


SECTIONS = {
    "data": DataConfig, "synthetic": SyntheticConfig, "preprocess": PreprocessConfig, "split": SplitConfig,
    "model": ModelConfig, "train": TrainConfig, "augment": AugmentConfig, "infer": InferConfig, "evaluate": EvaluateConfig,
    "visualize": VisualizeConfig,
}


def _section_name(config) -> str:
    return next(name for name, cls in SECTIONS.items() if isinstance(config, cls))


def _at_least(config, **minimums) -> list[str]:
    name = _section_name(config)
    return [f"{name}.{k}={getattr(config, k)}: must be >= {m}" for k, m in minimums.items() if getattr(config, k) < m]


def _one_of(config, **choices) -> list[str]:
    name = _section_name(config)
    return [f"{name}.{k}={getattr(config, k)!r}: must be one of {list(allowed)}" for k, allowed in choices.items() if getattr(config, k) not in allowed]


def read_params(path: str | Path = "params.yaml") -> dict:
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
    """Build the config objects for sections `names`; raise one ParamsError listing every problem."""
    problems: list[str] = []
    configs = [_build(params, name, problems) for name in names]
    for config in configs:
        if config is not None and hasattr(config, "problems"):
            problems += config.problems()
    problems += _cross_problems({type(c): c for c in configs if c is not None})
    if problems:
        raise ParamsError(f"{source} has {len(problems)} problem(s):" + "".join(f"\n  - {p}" for p in problems))
    return configs[0] if len(configs) == 1 else tuple(configs)


def validate(params: dict, source: str = "params.yaml") -> None:
    """Check the whole file at once (every stage does this first, so a bad value anywhere stops
    `dvc repro` before any work, with every problem listed)."""
    unknown = [f"{name}: unknown section" + _did_you_mean(name, SECTIONS) for name in params if name not in SECTIONS]
    try:
        load(params, *SECTIONS, source=source)
    except ParamsError as error:
        listed = str(error).split("\n")[1:]
        unknown += [line.strip()[2:] for line in listed]
    if unknown:
        raise ParamsError(f"{source} has {len(unknown)} problem(s):" + "".join(f"\n  - {p}" for p in unknown))


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else f"; allowed: {sorted(choices)}"


def _cross_problems(configs: dict) -> list[str]:
    """Rules that tie two sections together."""
    preprocess, model = configs.get(PreprocessConfig), configs.get(ModelConfig)
    if preprocess and model and preprocess.image_size % 2**model.depth:
        return [f"preprocess.image_size={preprocess.image_size}: must be divisible by 2**model.depth = {2**model.depth} "
                f"(model.depth={model.depth}); e.g. {preprocess.image_size // 2**model.depth * 2**model.depth or 2**model.depth}"]
    return []


def _build(params: dict, name: str, problems: list[str]):
    cls = SECTIONS[name]
    raw = params.get(name, {})
    if not isinstance(raw, dict):
        problems.append(f"{name}: must be a mapping of keys, got {raw!r}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in sorted(raw.keys() - fields.keys()):
        problems.append(f"{name}.{key}: unknown key" + _did_you_mean(key, fields).replace("mean ", f"mean {name}."))
    values, complete = {}, True
    for key, field in fields.items():
        if key not in raw:
            if field.default is dataclasses.MISSING:
                problems.append(f"{name}.{key}: missing (required)")
                complete = False
            continue
        value, error = _coerce(raw[key], hints[key])
        if error:
            problems.append(f"{name}.{key}={raw[key]!r}: {error}")
            # keep the default in its place, so the range checks of the other keys still run
            complete = complete and field.default is not dataclasses.MISSING
            continue
        values[key] = value
    return cls(**values) if complete else None


def _coerce(value, hint):
    """Return (value converted to the declared type, error message or None)."""
    if hint is bool:
        return (value, None) if isinstance(value, bool) else (value, "expected true or false")
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (value, "expected an integer")
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text; accept it as the number it means
            try:
                value = float(value)
            except ValueError:
                return value, "expected a number"
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return value, "expected a number"
        # NaN passes every range check (all its comparisons are false), so it is refused here
        return (float(value), None) if math.isfinite(value) else (value, "expected a finite number")
    if hint is str:
        if value is None:  # an empty YAML value, e.g. `stratify_by:`
            return "", None
        return (value, None) if isinstance(value, str) else (value, "expected text")
    if typing.get_origin(hint) is tuple:
        items = [] if value is None else value
        ok = isinstance(items, list) and all(isinstance(v, str) for v in items)
        return (tuple(items), None) if ok else (value, "expected a list of names")
    raise TypeError(f"unsupported config type {hint}")
