"""The training keys yoloprune adds to Ultralytics' own: one small config per feature, validated once at the edge."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..calibrate.data import DEFAULT_IMAGES
from ..errors import UserError, check_whole, close_match


def _meta(help: str) -> dict:
    return {"help": help}


@dataclass
class SparsityConfig:
    """Sparsity training: an L1 penalty added to the training loss."""

    l1_regularization: bool = field(default=False, metadata=_meta("add an L1 penalty on conv weights to the loss"))
    lambda_l1: float = field(default=1e-5, metadata=_meta("weight of the conv-weight penalty (per-image loss units)"))
    structured_l1: bool = field(default=False, metadata=_meta(
        "penalise whole output channels (group L1) plus BatchNorm gamma (Network Slimming) instead"))
    lambda_bn: float = field(default=1e-4, metadata=_meta("weight of the BatchNorm-gamma L1 penalty"))
    sparsity_threshold: float = field(default=1e-3, metadata=_meta("|value| below which a weight counts as zero"))

    @property
    def enabled(self) -> bool:
        return bool(self.l1_regularization or self.structured_l1)

    def validate(self) -> None:
        for name in ("lambda_l1", "lambda_bn"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise UserError(f"{name}={v!r} must be >= 0 (typical 1e-5 to 1e-3)")
        if not self.sparsity_threshold > 0:
            raise UserError(f"sparsity_threshold={self.sparsity_threshold!r} must be > 0 (e.g. 1e-3)")


@dataclass
class PruningConfig:
    """Physical pruning inside training (or before it, with `prune_at_epoch=0`)."""

    pruning: bool = field(default=False, metadata=_meta("physically slim the model during training"))
    pruning_ratio: float = field(default=0.3, metadata=_meta("share of channels (or repeated blocks) to remove"))
    pruning_method: str = field(default="channel", metadata=_meta("channel (narrower layers) or layer (fewer blocks)"))
    importance_metric: str = field(default="l1", metadata=_meta(
        "scorer: l1, l2, bn, lamp, random, or on the detection loss over calibration images taylor or fisher"))
    prune_at_epoch: int = field(default=50, metadata=_meta("epoch at whose start the model is slimmed (0: before training)"))
    preserve_shortcuts: bool = field(default=True, metadata=_meta("apply shortcut rules (False: uniform ratio)"))
    shortcut_rules: str = field(default="yolo26", metadata=_meta("rules file: yolo26 or a YAML path"))
    round_to: int = field(default=8, metadata=_meta("kept channel counts are multiples of this"))
    pruning_steps: int = field(default=1, metadata=_meta(
        "cut in this many steps (cubic schedule toward the planned widths, BatchNorm recalibrated after each); "
        "1: one cut at prune_at_epoch"))
    pruning_end_epoch: int = field(default=-1, metadata=_meta(
        "epoch at whose start the last of pruning_steps > 1 steps cuts (the steps spread evenly from prune_at_epoch)"))
    pruning_plan: str = field(default="", metadata={**_meta("set by yoloprune: the widths of every step, planned at "
                                                             "the first step (kept for resume)"), "internal": True})

    def validate(self, epochs: int | None = None) -> None:
        from ..importance import IMPORTANCES
        from ..importance.data_aware import DATA_AWARE

        IMPORTANCES = [*IMPORTANCES, *DATA_AWARE]

        if not 0 < self.pruning_ratio < 1:
            raise UserError(f"pruning_ratio={self.pruning_ratio!r} is outside (0, 1): pass the share to remove, e.g. 0.3")
        if self.pruning_method not in ("channel", "layer"):
            raise UserError(f"pruning_method '{self.pruning_method}' is unknown"
                            f"{close_match(self.pruning_method, ('channel', 'layer'))}; use channel or layer")
        if self.importance_metric not in IMPORTANCES:
            raise UserError(f"importance_metric '{self.importance_metric}' is unknown"
                            f"{close_match(self.importance_metric, IMPORTANCES)}; use one of {', '.join(IMPORTANCES)}")
        if self.round_to < 1:
            raise UserError(f"round_to={self.round_to!r} must be >= 1 (e.g. 8)")
        check_whole("pruning_steps", self.pruning_steps, 1, "3")
        if self.pruning_steps > 1:
            if self.pruning_method == "layer":
                raise UserError("pruning_steps > 1 cuts channels gradually; layer pruning removes its blocks in one "
                                "step: use pruning_steps=1")
            if self.pruning_end_epoch < self.prune_at_epoch + self.pruning_steps - 1:
                raise UserError(f"pruning_steps={self.pruning_steps} needs pruning_end_epoch >= prune_at_epoch + "
                                f"{self.pruning_steps - 1} (one step per epoch at most), e.g. pruning_end_epoch="
                                f"{self.prune_at_epoch + 2 * (self.pruning_steps - 1)}")
            if epochs is not None and self.pruning and self.pruning_end_epoch >= epochs:
                raise UserError(f"pruning_end_epoch={self.pruning_end_epoch} must be below epochs={epochs}, or no "
                                "epoch would fine-tune the last step")
        elif self.pruning_end_epoch not in (-1, self.prune_at_epoch):
            raise UserError(f"pruning_end_epoch={self.pruning_end_epoch} needs pruning_steps > 1 (a gradual cut); "
                            "drop it for one cut at prune_at_epoch")
        if self.importance_metric in DATA_AWARE and self.pruning_method == "layer":
            raise UserError(f"importance_metric '{self.importance_metric}' scores channels; layer pruning takes l1, "
                            "l2, bn, lamp or random")
        if self.pruning:
            if self.prune_at_epoch < 0:
                raise UserError(f"prune_at_epoch={self.prune_at_epoch} must be >= 0 (0 prunes before the first epoch)")
            if epochs is not None and self.prune_at_epoch >= epochs:
                raise UserError(f"prune_at_epoch={self.prune_at_epoch} must be below epochs={epochs}, or no epoch would "
                                f"fine-tune the pruned model; e.g. prune_at_epoch={epochs // 2}")

    @property
    def rules(self) -> str:
        return self.shortcut_rules if self.preserve_shortcuts else "none"

    def step_epochs(self) -> list[int]:
        """The epochs at whose start the cut's steps run, spread evenly from prune_at_epoch to pruning_end_epoch."""
        k, start = self.pruning_steps, self.prune_at_epoch
        if k <= 1:
            return [start]
        return [start + math.floor((self.pruning_end_epoch - start) * i / (k - 1) + 0.5) for i in range(k)]


@dataclass
class CalibrationConfig:
    """BatchNorm statistics on calibration images (a fixed sample of the training split, no augmentation)."""

    recalibrate_bn: bool = field(default=True, metadata=_meta(
        "after an in-training cut, re-estimate the BatchNorm statistics of the cut model and its EMA (kept where the "
        "held-back calibration loss falls)"))
    precise_bn: bool = field(default=True, metadata=_meta(
        "at every epoch's end, re-estimate the EMA's BatchNorm statistics before validation and saving (kept where "
        "the held-back calibration loss falls): running averages lag weights that move fast, as after a cut"))
    calib_images: int = field(default=DEFAULT_IMAGES, metadata=_meta(
        "calibration images drawn (fixed seed, no augmentation) from the training split"))

    def validate(self) -> None:
        if isinstance(self.calib_images, bool) or not isinstance(self.calib_images, int) or self.calib_images < 1:
            raise UserError(f"calib_images={self.calib_images!r} must be a whole number >= 1 (e.g. {DEFAULT_IMAGES})")


@dataclass
class DistillConfig:
    """Knowledge distillation from a frozen teacher."""

    distillation: bool = field(default=False, metadata=_meta("distil a teacher into the model being trained"))
    teacher_model: str = field(default="", metadata=_meta("teacher checkpoint (.pt) of the same task and classes"))
    temperature: float = field(default=4.0, metadata=_meta("softening temperature of scores and feature maps"))
    distill_alpha: float = field(default=0.7, metadata=_meta("loss = (1 - alpha) * task + alpha * distillation"))
    distill_features: bool = field(default=False, metadata=_meta("also distil neck features (with distill_type=response)"))
    distill_type: str = field(default="response", metadata=_meta("response (head outputs), feature (neck) or yolo (both)"))

    def validate(self) -> None:
        from ..distill.distiller import TYPES

        if not self.distillation:
            return
        if not self.teacher_model:
            raise UserError("distillation=True needs teacher_model=path/to/teacher.pt")
        if not Path(self.teacher_model).is_file():
            raise UserError(f"teacher_model '{self.teacher_model}' not found: pass the path of a trained .pt checkpoint")
        if not 0 <= self.distill_alpha <= 1:
            raise UserError(f"distill_alpha={self.distill_alpha!r} must be within [0, 1] (the distillation share)")
        if not self.temperature > 0:
            raise UserError(f"temperature={self.temperature!r} must be > 0 (typical 2 to 5)")
        if self.distill_type not in TYPES:
            raise UserError(f"distill_type '{self.distill_type}' is unknown{close_match(self.distill_type, TYPES)}; "
                            f"use one of {', '.join(TYPES)}")


CONFIGS = (SparsityConfig, PruningConfig, CalibrationConfig, DistillConfig)
KEYS: dict[str, type] = {f.name: c for c in CONFIGS for f in fields(c)}
INTERNAL = {f.name for c in CONFIGS for f in fields(c) if f.metadata.get("internal")}  # set by yoloprune, not users


def _coerce(cls: type, name: str, value):
    kind = {f.name: f.type for f in fields(cls)}[name]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "str":
        if value is None:
            return ""
        if isinstance(value, (str, Path)):
            return str(value)
    raise UserError(f"{name}={value!r} must be a {kind} (e.g. {name}={getattr(cls(), name)!r})")


@dataclass
class CompressionConfig:
    """All yoloprune training keys, grouped by feature."""

    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @classmethod
    def pop_from(cls, args: dict) -> "CompressionConfig":
        """Remove yoloprune's keys from `args` (in place) and return them as a config; values are type-checked."""
        cfg = cls()
        parts = {SparsityConfig: cfg.sparsity, PruningConfig: cfg.pruning, CalibrationConfig: cfg.calibration,
                 DistillConfig: cfg.distill}
        for name in [k for k in args if k in KEYS]:
            owner = KEYS[name]
            setattr(parts[owner], name, _coerce(owner, name, args.pop(name)))
        return cfg

    def validate(self, epochs: int | None = None) -> "CompressionConfig":
        self.sparsity.validate()
        self.pruning.validate(epochs)
        self.calibration.validate()
        self.distill.validate()
        return self

    def to_dict(self) -> dict:
        return {f.name: getattr(part, f.name) for part in (self.sparsity, self.pruning, self.calibration, self.distill)
                for f in fields(part)}

    def changed(self) -> dict:
        """The keys whose values differ from the defaults."""
        default = CompressionConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if v != default[k] and k not in INTERNAL}


def parse_value(text: str):
    """A `key=value` value as Python: numbers, booleans, None, lists; anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_train_args(argv: list[str]) -> dict:
    """`key=value ... [cfg=file.yaml]` -> one dict; the YAML file's keys come first, command-line keys win.

    Every key must be an Ultralytics train key or a yoloprune key; unknown keys are rejected with the close match.
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT

    args = {}
    for token in argv:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise UserError(f"'{token}' is not key=value (e.g. epochs=10)")
        args[key.strip()] = parse_value(value.strip())
    merged = {}
    if "cfg" in args and args["cfg"] is not None:
        path = Path(str(args.pop("cfg")))
        if not path.is_file():
            raise UserError(f"cfg file '{path}' not found: pass the path of a YAML file of training keys")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise UserError(f"cfg file '{path}' is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"cfg file '{path}' must hold a mapping of training keys (key: value)")
        merged.update(loaded)
    merged.update(args)
    known = set(DEFAULT_CFG_DICT) | set(KEYS)
    for key in merged:
        if key not in known:
            raise UserError(f"'{key}' is not a training key{close_match(key, known)}; see `yolo cfg` for Ultralytics' "
                            "keys and `yoloprune train --help` for yoloprune's")
    return merged


def describe_keys() -> str:
    """Help text listing yoloprune's training keys with defaults."""
    lines = []
    for c in CONFIGS:
        lines.append(f"{c.__doc__.strip()}")
        for f in fields(c):
            if f.name in INTERNAL:
                continue
            lines.append(f"  {f.name}={f.default!r}: {f.metadata['help']}")
    return "\n".join(lines)
