"""Width allocation: how many channels each coupled group keeps, from the ratio, the shortcut rules and rounding.

Rule (documented in the README): a group of `width` channels and kind `k` keeps `width * (1 - ratio * multiplier[k])`
channels, rounded to the nearest multiple of `round_to` (and of the attention head count where heads read the
channels). A group never keeps fewer than one multiple: a ratio so high that a layer would lose all its channels is
clamped to `round_to` channels and the report lists the group as clamped. Groups narrower than one multiple are left
as they are. Groups tied by a block that must fold back into its stock class (both halves of a `C3k2` split) keep the
same width: the widest of their allocations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..graph.groups import CoupledGroup
from ..shortcut_rules import ShortcutRules


@dataclass
class Allocation:
    """Planned width of one group."""

    keep: int
    ratio: float  # effective ratio asked for this group (base ratio x multiplier)
    clamped: bool = False  # the ratio would have left fewer than one multiple of channels
    tied: bool = False  # width raised to match a tied group


def _round(width: int, target: float, multiple: int) -> tuple[int, bool]:
    if width <= multiple:
        return width, False
    n = math.floor(target / multiple + 0.5)
    if n < 1:
        return multiple, True
    return min(width, n * multiple), False


def allocate(
    groups: list[CoupledGroup],
    ratio: float,
    rules: ShortcutRules,
    round_to: int,
    ties: list[list[int]],
    frozen: set[int] = frozenset(),
) -> dict[int, Allocation]:
    """Return the planned width of every group, keyed by `CoupledGroup.index`.

    Args:
        groups: classified groups (`kind` already set from the rules' priority).
        ratio: base pruning ratio in (0, 1).
        rules: per-kind multipliers.
        round_to: kept widths are multiples of this.
        ties: lists of group indices that must end with equal widths.
        frozen: groups that must keep their full width (tied to channels no group may cut).
    """
    plan = {}
    for g in groups:
        r = min(rules.ratio(g.kind, ratio), 1.0)
        if g.index in frozen:
            plan[g.index] = Allocation(keep=g.width, ratio=r, tied=True)
            continue
        keep, clamped = _round(g.width, g.width * (1 - r), math.lcm(round_to, g.multiple))
        plan[g.index] = Allocation(keep=keep, ratio=r, clamped=clamped)
    by_index = {g.index: g for g in groups}
    for tie in ties:
        multiple = math.lcm(round_to, *(by_index[i].multiple for i in tie))
        width = min(by_index[i].width for i in tie)
        keep = max(plan[i].keep for i in tie)
        keep = min(width, math.ceil(keep / multiple) * multiple)
        for i in tie:
            if plan[i].keep != keep:
                plan[i].keep, plan[i].tied = keep, True
    return plan
