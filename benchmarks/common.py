"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import copy
import json
from pathlib import Path


def tradeoff_base(rest: list[str]):
    """The trade-off benchmark's options (from `rest`), its `Bench` (cache, data, bases) and its first model's stem:
    other benchmarks measure on the same converged base."""
    import tradeoff

    t = tradeoff.options(rest)
    return t, tradeoff.Bench(t), Path(t.models.split(",")[0]).stem


def alloc_cut(cache: Path, stem: str, alloc: str, speedup: float, max_ratio: float, sample: int,
              importance: str = "taylor") -> Path:
    """The cut `benchmarks/allocation.py` makes of base `stem` with allocation `alloc` to `speedup` at `max_ratio`
    for calibration sample `sample` (the trade-off benchmark's `slim` is its sample 0: either reuses the other's)."""
    return cache / "slim" / f"{stem}-alloc-{alloc}-{alloc_tag(speedup, max_ratio, importance)}-c{sample}.pt"


def alloc_tag(speedup: float, max_ratio: float, importance: str = "taylor") -> str:
    """'2x', or '2x-mr0.9' away from the max ratio 0.75 the allocation benchmark first ran at, '2x-mr0.9-bn' with a
    scorer other than the default with data (taylor)."""
    return (f"{speedup:g}x" + ("" if max_ratio == 0.75 else f"-mr{max_ratio:g}")
            + ("" if importance == "taylor" else f"-{importance}"))


def write_results(path: str | None, state: "State", args, table: str) -> None:
    """Print `table`; with `path`, also write it with the state and the options as JSON."""
    print(table)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({**state.data, "args": vars(args), "table": table}, indent=2))
        print(f"saved {path}")


class State:
    """A JSON file of everything a benchmark measured so far (`empty` when there is none yet); saved after every
    step, atomically, so an interrupted run resumes where it stopped. A save writes only what this process changed
    since it last read or wrote the file onto what is on disk now, so two processes may train one benchmark's runs
    side by side without undoing each other's entries."""

    def __init__(self, path: Path, empty: dict):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else copy.deepcopy(empty)
        self._seen = copy.deepcopy(self.data)

    def save(self) -> None:
        from yoloprune.checkpoint import atomic_write

        try:
            disk = json.loads(self.path.read_text())
        except (OSError, ValueError):
            disk = None
        if disk is not None:
            _apply(disk, self._seen, self.data)
            _sync(self.data, disk)  # in place: callers hold references into self.data
        text = json.dumps(self.data, indent=2)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        self._seen = copy.deepcopy(self.data)


def _sync(mine: dict, theirs: dict) -> None:
    """Make `mine` equal to `theirs` in place, keeping the nested dicts both have."""
    for k in mine.keys() - theirs.keys():
        del mine[k]
    for k, v in theirs.items():
        if isinstance(v, dict) and isinstance(mine.get(k), dict):
            _sync(mine[k], v)
        else:
            mine[k] = v


def _apply(target: dict, before: dict, after: dict) -> None:
    """Apply to `target` the changes that turned `before` into `after` (dicts merged key by key)."""
    for k in before.keys() - after.keys():
        target.pop(k, None)
    for k, v in after.items():
        if k in before and before[k] == v:
            continue
        if isinstance(v, dict) and isinstance(before.get(k), dict) and isinstance(target.get(k), dict):
            _apply(target[k], before[k], v)
        else:
            target[k] = copy.deepcopy(v)


def search_ratio(speedup_at, target: float, max_ratio: float, known: dict, tol: float = 0.03, steps: int = 8) -> dict:
    """Bisect a slimming ratio until its measured speed-up is within `tol` of `target`; keep the nearest.

    Args:
        speedup_at: ratio -> measured speed-up (cached by the caller; it fills `known`).
        known: {ratio: speed-up} measured so far (read after every call of `speedup_at`).

    Returns:
        {"ratio", "speedup"} of the nearest ratio, or {"unreachable": why} when `max_ratio` stays below the target.
    """
    top = speedup_at(max_ratio)
    if top < target * (1 - tol):
        return {"unreachable": f"reaches {top:.2f}x at ratio {max_ratio}"}
    near = max_ratio
    for step in range(steps + 1):
        lo = max([r for r, s in known.items() if s < target] + [0.0])
        hi = min(r for r, s in known.items() if s >= target)
        near = min(known, key=lambda r: abs(known[r] / target - 1))
        if abs(known[near] / target - 1) <= tol or hi - lo <= 0.011 or step == steps:
            break
        speedup_at(round((lo + hi) / 2, 2))
    return {"ratio": near, "speedup": known[near]}


def reinitialize(model):
    """The same architecture with fresh weights, initialised as Ultralytics initialises a model built from its YAML
    (PyTorch's default initialisation, Ultralytics' BatchNorm settings and detection-head biases)."""
    import torch
    from ultralytics.nn.tasks import initialize_weights

    model = copy.deepcopy(model).float()
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    head = model.model[-1]
    if hasattr(head, "bias_init") and torch.is_tensor(getattr(head, "stride", None)) and head.stride.numel():
        head.bias_init()
    initialize_weights(model)
    return model
