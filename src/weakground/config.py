"""Typed experiment configs, loaded from YAML presets with strict key checking.

A preset is a YAML file under ``weakground/configs/`` (or any path). Every key must name a dataclass field:
a typo is an error, not a silently ignored setting. Missing keys take the dataclass default, so presets only
state what they change. The resolved config is saved as JSON beside every run's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weakground.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """Which data to train and test on. ``name`` selects a dataset from the registry."""

    name: str = "multimnist"
    layout: str = "grid"  # multimnist: "grid" (grid x grid digits) or "free" (1..4 digits, controllable overlap)
    grid: int = 2
    cell: int = 28
    jitter: int = 0
    canvas: int = 64
    min_digits: int = 1
    max_digits: int = 4
    max_overlap: float = 0.2
    noise_std: float = 0.1
    n_train: int = 8000
    n_val: int = 500
    n_test: int = 2000
    seed: int = 0
    # Caption datasets (name "scenes", generated and cached, or a reader format such as "flickr30k_entities"):
    path: str = ""  # the dataset root for a reader format; unused for the synthetic sets
    image_size: int = 128  # training images are resized to image_size x image_size
    # Caption-trained methods: eval, locate, retrieve and serve resize every image to the same image_size square
    # before the method sees it (the map is then resized back to the image), so objects have the scale and
    # aspect the method was trained on; false: images at their own size. See Grounder.input_size.
    eval_resize: bool = True
    n_test_unseen: int = 0  # scenes: images of held-out colour-category pairs, scored as a second test split


@dataclass
class BackboneConfig:
    """A ResNet-18-family backbone. The paper keeps stride 1 everywhere and drops max pooling so the feature
    map has the input's resolution; ``stem_stride``/``stage_strides`` make the cost a setting for CPUs."""

    name: str = "resnet"
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # ResNet-18
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    stem_stride: int = 1
    stage_strides: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    maxpool: bool = False
    in_channels: int = 1


@dataclass
class MethodConfig:
    """Settings of the grounding method; ``name`` selects it from the registry, ``params`` go to its own
    typed config (checked there)."""

    name: str = "mcb_attention"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainConfig:
    """Stage 1 (Fang et al.): pretrain the backbone on single-digit classification."""

    enabled: bool = True
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4


@dataclass
class TrainConfig:
    """Stage 2: end-to-end training of the grounding method."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    backbone_lr_mult: float = 0.1  # the paper keeps the pretrained backbone at 1/10 of the learning rate
    optimizer: str = "sgd"  # "sgd" (Fang et al.) or "adam" (Akbari et al., Engilberge et al., matchmap)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" or "constant"
    eval_every: int = 1  # epochs between validation passes (0: only at the end)
    seed: int = 0
    device: str = "auto"  # "auto", "cpu" or "cuda"
    # bfloat16 autocast for the training step on CUDA (convolutions and matrix products; MCB's FFT stays float32).
    # Ignored on the CPU, where bf16 is slower than float32 on most machines.
    amp: bool = False
    num_workers: int = 0
    tensorboard: bool = False
    # A trained checkpoint of the same method and architecture (another run's train_best.safetensors) to start
    # from instead of a freshly pretrained backbone: a curriculum, e.g. 2x2 grids first, then 3x3. Its data and
    # loss settings may differ from this run's. Empty: start from backbone pretraining (pretrain.enabled).
    init_from: str = ""
    # Frozen encoders' features of the training images and captions computed once, kept memory-mapped under the
    # cache directory and fed to the method instead of recomputed every epoch (engine/feature_cache.py; the same
    # results to float rounding, docs/feature_cache.md). False: every step runs the frozen encoders.
    cache_features: bool = True


@dataclass
class EvalConfig:
    """How heatmaps become boxes and how boxes are scored (printed with every number)."""

    box_threshold: float = 0.5  # a pixel belongs to a box if its value >= box_threshold * the map's maximum
    # Non-empty: after training, the candidate with the best validation mAP replaces box_threshold (the test
    # split is never used to choose it); the choice is saved in the checkpoint and the report.
    threshold_candidates: list[float] = field(default_factory=list)
    iou_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5])
    # Multi-MNIST boxes scored against: "ink" (tight box of the digit's strokes) or "patch" (the 28x28 patch it
    # was pasted into: its grid cell). Fang et al. does not say which it used; the benchmark reports both.
    ground_truth: str = "ink"
    # Multi-MNIST AP: "count" scores the boxes of every class asked, so a blob on the map of a digit that is not in
    # the image is a false positive, as in detection AP; "ignore" scores only the classes present (the protocol of
    # the tables before it existed, blind to confident answers for absent digits).
    absent_detections: str = "count"
    # [scale, bias(, threshold)]: presence probability = sigmoid(scale * presence score + bias), fitted on the
    # validation split after training (present phrases against other images' phrases); a phrase below the threshold
    # (0.5) is "not found". Empty: not calibrated (locate gives no presence).
    presence_calibration: list[float] = field(default_factory=list)
    batch_size: int = 128
    # n > 1: every heatmap is the average over n x n copies of the image shifted by 1/n of the feature map's
    # stride (Grounder.shift_average, grounding_maps): costs n^2 forward passes, lets the peak fall between cells.
    shift_average: int = 1
    # Phrase grounding: "phrase" asks each phrase text on its own; "sentence" reads each caption phrase inside its
    # caption, as Akbari et al. evaluate on Flickr30K (methods whose text encoder reads whole captions only).
    phrase_context: str = "phrase"
    # Phrase-grounding Recall@K ranks by "embedding" (encode_image . encode_text, a first-stage approximation for
    # most methods) or "score" (the method's trained score of every image with every caption; slower).
    retrieval: str = "embedding"


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if annotation is float:
        # A hand-edited config or checkpoint may hold "high" or NaN; either would only fail deep inside a run.
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation in (int, str, bool):
        if type(value) is not annotation:
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type, data: Any, where: str = "config", require_all: bool = False) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Args:
        cls: a dataclass type whose fields all have defaults.
        data: the mapping (from YAML/JSON).
        where: a location prefix for error messages, e.g. ``"configs/cpu.yaml: train"``.
        require_all: every field must be present (a checkpoint's saved config is complete by construction,
            so a missing key there means the file was damaged or hand-edited).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(names))})")
    if require_all:
        missing = sorted(names - set(data))
        if missing:
            raise ConfigError(f"{where}: missing key {missing[0]!r}")
    kwargs = {}
    for k, v in data.items():
        if require_all and dataclasses.is_dataclass(hints[k]):
            kwargs[k] = from_dict(hints[k], v, f"{where}.{k}", require_all=True)
        else:
            kwargs[k] = _coerce(v, hints[k], f"{where}.{k}")
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return data or {}


# What a preset must say explicitly rather than inherit: which data and which method it is about.
REQUIRED_PRESET_KEYS = [("data", "name"), ("method", "name")]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"unknown preset {name_or_path!r}; presets: {', '.join(preset_names())}")
    return candidate


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (["train", "epochs"], 3); the value is parsed as YAML (numbers, lists, bools)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


@dataclass(frozen=True)
class OverridePolicy:
    """Which ``--set SECTION.KEY=VALUE`` keys a command accepts, and what it says when one is refused.

    ``allowed`` holds dotted patterns; a final ``*`` matches any key below that prefix (``"data.*"``,
    ``"method.params.*"``), and the single pattern ``"*"`` accepts everything (``train``).
    """

    allowed: tuple[str, ...] = ("*",)
    refusal: str = ""

    def accepts(self, keys: list[str]) -> bool:
        dotted = ".".join(keys)
        for pattern in self.allowed:
            if pattern == "*" or pattern == dotted:
                return True
            if pattern.endswith(".*") and dotted.startswith(pattern[:-1]) and len(dotted) > len(pattern) - 1:
                return True
        return False


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], policy: OverridePolicy = OverridePolicy(),
                    command: str = "override") -> dict[str, Any]:
    """The one ``--set`` mechanism of train, eval and locate: write each ``KEY=VALUE`` into the nested mapping
    ``data`` (in place, and returned) after ``policy`` accepted its key. Values are parsed as YAML; types and
    key names are checked afterwards, when the mapping is turned into its dataclass by :func:`from_dict`."""
    for text in overrides:
        keys, value = parse_override(text)
        if not policy.accepts(keys):
            raise ConfigError(f"{command} --set {text!r}: {policy.refusal}")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return data


def load_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a preset (name or path) and apply ``KEY=VALUE`` overrides; every key is checked."""
    path = resolve_preset(preset)
    data = apply_overrides(_read_yaml(path), overrides)
    for section, key in REQUIRED_PRESET_KEYS:
        if key not in (data.get(section) or {}):
            raise ConfigError(f"{path}: missing key {section}.{key} (a preset must name it)")
    return from_dict(ExperimentConfig, data, str(path))


def override_config(config: ExperimentConfig, overrides: list[str] | tuple[str, ...], policy: OverridePolicy,
                    command: str) -> ExperimentConfig:
    """``config`` with ``overrides`` applied under ``policy`` (a loaded checkpoint's config, for eval/locate)."""
    if not overrides:
        return config
    data = apply_overrides(to_dict(config), overrides, policy, command)
    return from_dict(ExperimentConfig, data, f"{command} --set")


# Keys added after checkpoints were first written, with the value that reproduces how those older checkpoints
# behaved. A saved config must otherwise name every key (see from_dict's require_all).
LATER_KEYS: dict[tuple[str, str], Any] = {
    ("data", "eval_resize"): False,  # before it existed, evaluation read images at their own size
    ("eval", "shift_average"): 1,  # and every heatmap came from one forward pass
    ("eval", "ground_truth"): "ink",  # and multi-MNIST boxes were scored against the digits' ink boxes
    ("eval", "absent_detections"): "ignore",  # and their AP scored the present classes' boxes only
    ("eval", "presence_calibration"): [],  # and no presence was calibrated
    ("eval", "phrase_context"): "phrase",  # and every phrase was encoded on its own
    ("eval", "retrieval"): "embedding",  # and Recall@K ranked by the embeddings' dot product
    ("train", "init_from"): "",  # and every run started from backbone pretraining (or from scratch)
    ("train", "cache_features"): False,  # and frozen encoders ran at every training step
}


def config_from_json(text: str, where: str) -> ExperimentConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict):
        for (section, key), legacy in LATER_KEYS.items():
            if isinstance(data.get(section), dict):
                data[section].setdefault(key, legacy)
    return from_dict(ExperimentConfig, data, where, require_all=True)
