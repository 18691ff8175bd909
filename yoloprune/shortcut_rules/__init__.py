"""Shortcut rules: how much less (or more) each kind of coupled group is pruned than the base ratio.

A rules file is YAML with `multipliers` (one per kind: residual, csp, concat, attention, regular), an optional
`priority` (which kind names a group that takes part in several) and an optional `description`. `yolo26` is the
built-in file; `none` prunes every group at the base ratio; any other value is a path to a user file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UserError, close_match
from ..graph.groups import KINDS

BUILTIN = {p.stem: p for p in Path(__file__).parent.glob("*.yaml")}
_KEYS = ("description", "multipliers", "priority")
_DEFAULT_PRIORITY = ("attention", "residual", "concat", "csp", "regular")


@dataclass(frozen=True)
class ShortcutRules:
    """Per-kind ratio multipliers and the order that names a group taking part in several kinds."""

    name: str
    multipliers: dict[str, float]
    priority: tuple[str, ...] = _DEFAULT_PRIORITY

    @property
    def uniform(self) -> bool:
        """True when every kind is pruned at the base ratio."""
        return all(v == 1.0 for v in self.multipliers.values())

    def kind_of(self, kinds: set[str]) -> str:
        """The kind that names a group taking part in `kinds`."""
        return next(k for k in self.priority if k in kinds)

    def ratio(self, kind: str, base: float) -> float:
        """Effective pruning ratio of a group of `kind` for the base ratio."""
        return base * self.multipliers[kind]


def load_rules(rules: "str | Path | ShortcutRules | None") -> ShortcutRules:
    """Load shortcut rules from a built-in name (`yolo26`, `none`), a YAML path, or pass `ShortcutRules` through.

    Raises:
        UserError: unknown name, missing/unreadable file, unknown key (with the close match), bad kind or value.
    """
    if isinstance(rules, ShortcutRules):
        return rules
    if rules is None or str(rules).lower() == "none":
        return ShortcutRules("none", {k: 1.0 for k in KINDS})
    if str(rules) in BUILTIN:
        path = BUILTIN[str(rules)]
    else:
        path = Path(rules)
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise UserError(
                f"unknown rules '{rules}'{close_match(str(rules), [*BUILTIN, 'none'])}: use "
                f"{', '.join([*BUILTIN, 'none'])} or the path of a rules YAML file"
            )
        if not path.is_file():
            raise UserError(f"rules file '{rules}' not found: pass an existing YAML path, or 'yolo26' or 'none'")
    return _parse(path)


def _parse(path: Path) -> ShortcutRules:
    where = f"rules file '{path}'"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{where} is not readable YAML ({type(e).__name__}): fix or replace the file") from None
    if not isinstance(data, dict) or "multipliers" not in data:
        raise UserError(f"{where} must be a mapping with a 'multipliers' key (see the built-in yolo26.yaml)")
    for key in data:
        if key not in _KEYS:
            raise UserError(f"{where}: unknown key '{key}'{close_match(key, _KEYS)}; allowed keys: {', '.join(_KEYS)}")
    mult = data["multipliers"]
    if not isinstance(mult, dict):
        raise UserError(f"{where}: 'multipliers' must map kinds ({', '.join(KINDS)}) to numbers")
    out = {k: 1.0 for k in KINDS}
    for kind, value in mult.items():
        if kind not in KINDS:
            raise UserError(f"{where}: unknown kind '{kind}'{close_match(kind, KINDS)}; kinds: {', '.join(KINDS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UserError(f"{where}: multipliers.{kind} = {value!r} must be a number >= 0")
        out[kind] = float(value)
    priority = data.get("priority", _DEFAULT_PRIORITY)
    if not isinstance(priority, (list, tuple)) or sorted(priority) != sorted(KINDS):
        raise UserError(f"{where}: 'priority' must list each kind once: {', '.join(KINDS)}")
    return ShortcutRules(path.stem, out, tuple(priority))
