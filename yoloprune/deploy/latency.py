"""A measured per-layer latency table: profile the model at a few widths on the target runtime, fit a cost model.

The base model and uniform slims of it (ratios 0.25, 0.5, 0.7) are profiled operator by operator (ONNX Runtime's
profiler, or timing hooks on PyTorch modules). Each operator is attributed to a convolution of the stock model (the
convolution and its activation), to the rest of its top-level layer, or to the global rest (layout changes between
layers). Each convolution's times at its four widths fit `a * cin * cout + b * (cin + cout) + c` (non-negative least
squares, in units of its base widths); each layer rest fits `d * f + e` against the layer's output activations. The
result, a `yoloprune.slim.budget.CostModel` in milliseconds, prices any candidate widths without building them.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from torch import nn

from ..slim.budget import ConvSite, CostModel, layer_of

CALIBRATION_RATIOS = (0.25, 0.5, 0.7)


def module_of(node: str) -> str:
    """Module path of an ONNX node name written by torch's exporter (`/model.6/m/m.0/cv1/conv/Conv` ->
    `model.6.m.0.cv1.conv`): scope segments up to the first operator name, nested list scopes collapsed."""
    parts = []
    for seg in node.strip("/").split("/"):
        if not seg or seg[0].isupper():
            break
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg  # `m`, `m.0` -> `m.0`
        else:
            parts.append(seg)
    if len(parts) > 1 and parts[0].startswith("model.") and parts[1].startswith("model."):
        parts = parts[1:]
    return ".".join(parts)


def attribute(times: dict[str, float], convs: set[str]) -> dict[str, float]:
    """Sum operator times into convolution keys (a convolution and its `act`), layer keys (`model.6`) and '' (rest)."""
    out = defaultdict(float)
    for node, t in times.items():
        mod = module_of(node)
        for key in (mod, mod + ".conv", re.sub(r"\.act$", ".conv", mod), re.sub(r"\.act$", "", mod)):
            if key in convs:
                out[key] += t
                break
        else:
            out[layer_of(mod)] += t
    return dict(out)


def profile_onnx(path: Path, device: str, threads: int | None, runs: int, imgsz: int) -> dict[str, float]:
    """Median time (ms) of every operator of an ONNX graph over `runs` profiled runs (after 3 warm-up runs)."""
    from .runtime import OrtRunner

    work = Path(tempfile.mkdtemp(prefix="yoloprune-prof-"))
    try:
        runner = OrtRunner(path, imgsz, 1, device, threads, profile=str(work / "p"))
        for _ in range(3 + runs):
            runner()
        events = json.loads(Path(runner.session.end_profiling()).read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[e["name"][: -len("_kernel_time")]].append(e["dur"])
    return {n: float(np.median(v[3:] or v)) / 1e3 for n, v in per.items()}


def profile_torch(model: nn.Module, imgsz: int, device: str, threads: int | None, runs: int) -> dict[str, float]:
    """Median time (ms) of every convolution (with its activation) and of the rest of every top-level layer of a
    PyTorch model, from timing hooks; keyed like `attribute`'s result."""
    import torch

    from .runtime import TorchRunner

    runner = TorchRunner(model, imgsz, 1, device, threads)
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    spans, start = defaultdict(list), {}
    timed = {n: m for n, m in runner.model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) or re.fullmatch(r"model\.\d+", n)}
    def before(n):
        def hook(*_):
            sync()
            start[n] = time.perf_counter()

        return hook

    def after(n):
        def hook(*_):
            sync()
            spans[n].append(time.perf_counter() - start[n])

        return hook

    hooks = []
    for n, m in timed.items():
        target = _act_parent(runner.model, n) or m
        hooks += [target.register_forward_pre_hook(before(n)), target.register_forward_hook(after(n))]
    try:
        for _ in range(3 + runs):
            runner()
    finally:
        for h in hooks:
            h.remove()
    med = {n: float(np.median(v[3:] or v)) * 1e3 for n, v in spans.items()}
    out = {}
    for n, t in med.items():  # a layer's own time is what its convolutions do not explain
        if re.fullmatch(r"model\.\d+", n):
            out[n] = max(t - sum(v for k, v in med.items() if k.startswith(n + ".")), 0.0)
        else:
            out[n] = t
    return out


def _act_parent(model: nn.Module, name: str):
    """The Ultralytics `Conv` wrapping convolution `name` (conv + activation), if any."""
    parent_name = name.rsplit(".", 1)[0] if name.endswith(".conv") else None
    return model.get_submodule(parent_name) if parent_name else None


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of features: the best exact fit over every subset of them."""
    best, best_err = np.zeros(x.shape[1]), float(np.sum(y**2))
    for mask in itertools.product((False, True), repeat=x.shape[1]):
        cols = np.flatnonzero(mask)
        if not len(cols):
            continue
        coef = np.linalg.lstsq(x[:, cols], y, rcond=None)[0]
        if (coef >= 0).all():
            err = float(np.sum((x[:, cols] @ coef - y) ** 2))
            if err < best_err:
                best, best_err = np.zeros(x.shape[1]), err
                best[cols] = coef
    return best


def fit_cost_model(sites: dict[str, ConvSite], samples: list[tuple[dict[str, tuple[int, int]], dict[str, float]]]
                   ) -> CostModel:
    """Fit the per-convolution and per-layer costs to profiled samples.

    Args:
        sites: stock convolutions of the base model (`yoloprune.slim.budget.conv_sites`).
        samples: per profiled model, its `{conv name: (cin, cout)}` and its attributed times (`attribute`).
    """
    model = CostModel(sites, {}, {}, "ms")
    for s in sites.values():
        rows, ys = [], []
        for widths, times in samples:
            if s.name in widths and s.name in times:
                rows.append(s.features(*widths[s.name]))
                ys.append(times[s.name])
        if rows:
            model.conv[s.name] = tuple(_nnls(np.array(rows), np.array(ys)))
    shares = [model.activation_shares(lambda s, w=widths: w.get(s.name, (s.cin, s.cout))[1]) for widths, _ in samples]
    for layer in {k for _, times in samples for k in times if k not in sites}:
        rows = [[f.get(layer, f[""]), 1.0] for f in shares]
        model.rest[layer] = tuple(_nnls(np.array(rows), np.array([times.get(layer, 0.0) for _, times in samples])))
    return model


def stock_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """`{name: (input, output) channels}` of every convolution and linear layer of a stock model."""
    return {n: ((m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features))
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
