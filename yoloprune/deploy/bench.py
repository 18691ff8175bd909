"""`yoloprune bench`: interleaved, warmed-up latency of several models side by side, with their deploy cost."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .export import quiet_ultralytics
from .runtime import DEVICES, RUNTIMES, OrtRunner, TorchRunner, default_threads, interleaved, machine_name, onnx_cost


@dataclass
class BenchRow:
    """One model's figures; times in milliseconds per batch."""

    model: str
    params: int
    gflops: float  # 2 x multiply-accumulates of the deployed graph
    median_ms: float
    p10_ms: float
    p90_ms: float
    throughput: float  # images per second at the median
    speedup: float  # first model's median / this one's


@dataclass
class BenchResult:
    runtime: str
    device: str
    imgsz: int
    batch: int
    threads: int
    warmup: int
    runs: int
    rows: list[BenchRow] = field(default_factory=list)
    machine: str = field(default_factory=machine_name)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        head = (f"{self.runtime} on {self.device} ({self.threads} threads), batch {self.batch}, {self.imgsz}x{self.imgsz}, "
                f"median of {self.runs} interleaved runs after {self.warmup} warm-up"
                + (", denormals flushed to zero" if self.device == "cpu" else ""))
        name_w = max([5] + [len(r.model) for r in self.rows])
        lines = [head, f"{'model':<{name_w}}  {'params':>10}  {'GFLOPs':>7}  {'median ms':>9}  {'p10':>7}  {'p90':>7}  "
                       f"{'img/s':>7}  {'speed-up':>8}"]
        for r in self.rows:
            lines.append(f"{r.model:<{name_w}}  {r.params:>10,}  {r.gflops:>7.2f}  {r.median_ms:>9.2f}  {r.p10_ms:>7.2f}  "
                         f"{r.p90_ms:>7.2f}  {r.throughput:>7.1f}  {r.speedup:>7.2f}x")
        return "\n".join(lines)


def check_timing_args(runtime, device, imgsz, batch, threads, warmup, runs) -> None:
    """Validate where and how models are timed (shared by `bench` and the speed-up target search)."""
    from ..errors import check_whole, close_match

    if runtime not in RUNTIMES:
        raise UserError(f"runtime '{runtime}' is unknown{close_match(runtime, RUNTIMES)}; use {' or '.join(RUNTIMES)}")
    if device not in DEVICES:
        raise UserError(f"device '{device}' is unknown{close_match(device, DEVICES)}; use cpu or cuda")
    for name, v, low in (("imgsz", imgsz, 32), ("batch", batch, 1), ("warmup", warmup, 0), ("runs", runs, 1)):
        check_whole(name, v, low)
    if threads is not None:
        check_whole("threads", threads, 1)


def _onnx_for(model: str, work: Path, i: int, imgsz: int, batch: int) -> Path:
    """The ONNX graph to time: the file itself, or an export of a checkpoint/YAML (parity-checked)."""
    from .export import export

    if str(model).lower().endswith(".onnx"):
        if not Path(model).is_file():
            raise UserError(f"model '{model}' not found: pass an existing .onnx, .pt or a model YAML")
        return Path(model)
    return export(model, imgsz=imgsz, batch=batch, output=work / f"{i}.onnx", verbose=False).path


def bench(models, runtime: str = "onnxruntime", device: str = "cpu", imgsz: int = 640, batch: int = 1,
          threads: int | None = None, warmup: int = 10, runs: int = 50, progress: bool = True) -> BenchResult:
    """Time models side by side: every round runs each model once, in turn, after a warm-up.

    Args:
        models: `.pt` checkpoints, model YAMLs, YOLO models or (for onnxruntime) `.onnx` files; the first is the
            reference of the speed-up column.
        runtime: `onnxruntime` (checkpoints are exported to ONNX first, parity-checked) or `torch` (fused, eval).
        device: `cpu` or `cuda`.
        imgsz, batch: input size; `.onnx` files with fixed shapes must match them.
        threads: intra-op threads (default: every core); for torch, `torch.set_num_threads`.
        warmup, runs: untimed runs per model, then timed rounds.
        progress: show a progress bar.

    Returns:
        `BenchResult`: median / p10 / p90 ms, images per second, params and GFLOPs of the deployed graph (for
        onnxruntime, counted from the ONNX graph; for torch, Ultralytics' counter on the fused model).

    Example:
        >>> print(bench(["yolo26n.pt", "yolo26n-slim.pt"], imgsz=640, threads=2).format())
    """
    from tqdm import tqdm

    check_timing_args(runtime, device, imgsz, batch, threads, warmup, runs)
    models = [models] if isinstance(models, (str, Path)) else list(models)
    if not models:
        raise UserError("no model to benchmark: pass one or more .pt, .onnx or YAML models")
    threads = threads or default_threads()
    names = [Path(str(m)).name if isinstance(m, (str, Path)) else f"model{i}" for i, m in enumerate(models)]
    runners, costs = [], []
    work = Path(tempfile.mkdtemp(prefix="yoloprune-bench-"))
    try:
        for i, m in enumerate(models):
            if runtime == "onnxruntime":
                path = _onnx_for(m, work, i, imgsz, batch)
                runners.append(OrtRunner(path, imgsz, batch, device, threads))
                cost = onnx_cost(path)
                costs.append((cost["params"], 2 * cost["macs"] / 1e9))
            else:
                if str(m).lower().endswith(".onnx"):
                    raise UserError(f"'{m}' is an ONNX file: time it with --runtime onnxruntime")
                model = _load(m)
                with quiet_ultralytics():
                    costs.append(_torch_cost(model, imgsz))
                    runners.append(TorchRunner(model, imgsz, batch, device, threads))
        bar = tqdm(total=runs, desc="bench", unit="round", disable=not progress, leave=False)
        with bar:
            times = interleaved(runners, warmup, runs, bar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = BenchResult(runtime, device, imgsz, batch, threads, warmup, runs)
    first = float(np.median(times[0]))
    for name, (params, gflops), t in zip(names, costs, times):
        med = float(np.median(t))
        result.rows.append(BenchRow(name, params, round(gflops, 3), med * 1e3, float(np.percentile(t, 10)) * 1e3,
                                    float(np.percentile(t, 90)) * 1e3, batch / med, first / med))
    return result


def _load(model):
    from ..checkpoint import load_model

    return load_model(model).model


def _torch_cost(model, imgsz: int) -> tuple[int, float]:
    import copy

    from ..slim.report import model_stats

    m = copy.deepcopy(model).float().eval()
    stats = model_stats(m.fuse() if hasattr(m, "fuse") else m, imgsz)
    return stats["params"], stats["gflops"]
