"""Timed runners for ONNX Runtime and PyTorch, and deploy cost (params, MACs) read from the exported graph.

Every runner is warmed up and then timed one run at a time, interleaved with the other models of a benchmark, so a
slow moment of the machine hits every model alike. ONNX Runtime's intra-op threads are told not to spin while idle:
with several sessions alive, spinning threads of one session steal cores from the one being timed (measured here:
yolo26n at 640, 2 threads: 76 ms with p10-p90 of 65-91 ms spinning, 42 ms with 38-43 ms not).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np

from ..errors import UserError

RUNTIMES = ("onnxruntime", "torch")
DEVICES = ("cpu", "cuda")


def default_threads() -> int:
    """Threads used when none are asked for: every core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_name() -> str:
    """The CPU's model name and the cores this process may use ("AMD EPYC, 2 cores"): timings are comparable only
    between runs on the same machine."""
    import platform

    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()}, {default_threads()} cores"


def library_versions() -> str:
    """The versions that decide what a training run or a timing gives ("torch 2.5.1, ultralytics 8.3.40, ..."): a
    figure is reproduced only with the same ones."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "ultralytics", "torch-pruning", "onnxruntime"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


@contextlib.contextmanager
def flushed_denormals():
    """Denormal floats flushed to zero on this thread's CPU (FTZ and DAZ) while timing; off again afterwards.

    On some CPUs an operation on denormal inputs takes microcode assists that cost orders of magnitude more: a trained
    yolo26n's attention softmax leaves probabilities that small, and on a 2-core Intel Xeon the one product of those
    probabilities with the values took 14-16 ms of a 49-68 ms forward pass, depending on the input, and nothing once
    a cut changed the attention. A speed-up timed that way measures the base's penalty, not the cut, so every timing
    here runs flushed, as a latency-minded deployment runs (`session.set_denormal_as_zero` in ONNX Runtime covers
    its pool threads; this covers the calling thread, where ONNX Runtime and PyTorch run part of the work)."""
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def ort_session(path: Path, device: str = "cpu", threads: int | None = None, profile: str | None = None):
    """An ONNX Runtime session set up for timing (full graph optimisation, sequential, no idle spinning, denormals
    flushed to zero on its threads: see `flushed_denormals`); with `profile`, ONNX Runtime's operator profiler writes
    there (file name prefix)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    opts.log_severity_level = 3
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError("this onnxruntime has no CUDA provider: install onnxruntime-gpu, or use --device cpu "
                            "or --runtime torch")
        providers = ["CUDAExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types for unreadable or invalid graphs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"ONNX Runtime cannot load '{path}': {first}") from None


class OrtRunner:
    """One ONNX model in ONNX Runtime, fed a fixed input of the shape the graph takes."""

    def __init__(self, path: Path, imgsz: int, batch: int, device: str = "cpu", threads: int | None = None,
                 profile: str | None = None):
        self.session = ort_session(path, device, threads, profile)
        inp = self.session.get_inputs()[0]
        want = [batch, None, imgsz, imgsz]
        shape = [d if isinstance(d, int) else w for d, w in zip(inp.shape, want)]
        if len(inp.shape) != 4 or any(isinstance(d, int) and w is not None and d != w for d, w in zip(inp.shape, want)):
            raise UserError(f"'{path}' takes input {list(inp.shape)}, not batch {batch} at {imgsz}x{imgsz}: pass "
                            f"--batch/--imgsz to match, or export it with --dynamic")
        shape[1] = shape[1] if isinstance(shape[1], int) else 3
        self.name = inp.name
        self.x = np.random.default_rng(0).random(shape, dtype=np.float32)

    def __call__(self) -> None:
        with flushed_denormals():
            self.session.run(None, {self.name: self.x})


class TorchRunner:
    """One model in PyTorch (fused, eval, inference mode) on CPU or CUDA, fed a fixed input."""

    def __init__(self, model, imgsz: int, batch: int, device: str = "cpu", threads: int | None = None):
        import torch

        from ..graph.trace import input_channels

        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("no CUDA device is available here: use --device cpu")
        if threads:
            torch.set_num_threads(threads)
        self.torch, self.device = torch, torch.device(device)
        model = model.float().eval()
        model = model.fuse() if hasattr(model, "fuse") else model
        self.model = model.to(self.device)
        self.x = torch.rand(batch, input_channels(model), imgsz, imgsz, device=self.device)

    def __call__(self) -> None:
        with self.torch.inference_mode(), flushed_denormals():
            self.model(self.x)
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


def interleaved(runners: list, warmup: int, runs: int, progress=None) -> list[list[float]]:
    """Warm every runner up, then time `runs` rounds; each round runs every runner once, in turn. Seconds per run."""
    for r in runners:
        for _ in range(warmup):
            r()
    times = [[] for _ in runners]
    for _ in range(runs):
        for r, t in zip(runners, times):
            t0 = time.perf_counter()
            r()
            t.append(time.perf_counter() - t0)
        if progress is not None:
            progress.update(1)
    return times


def onnx_cost(path: Path) -> dict:
    """Weights and multiply-accumulates of the Conv, MatMul and Gemm nodes of an ONNX graph, as deployed.

    Counted from the graph itself after shape inference, so it is what the runtime executes: BatchNorm fused, one
    detection head, whatever the exporter kept.
    """
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.input) + list(g.output)}
    inits = {t.name: list(t.dims) for t in g.initializer}
    macs, weights = 0, set()
    for node in g.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        weights.update(i for i in node.input if i in inits)
        out = shapes.get(node.output[0])
        if not out or not all(out):
            continue
        if node.op_type == "Conv" and node.input[1] in inits:
            macs += int(np.prod(out)) * int(np.prod(inits[node.input[1]][1:]))
        else:
            a = shapes.get(node.input[0]) or inits.get(node.input[0])
            trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
            if a:
                macs += int(np.prod(out)) * (a[-2] if trans_a else a[-1])
    params = sum(int(np.prod(inits[w])) for w in weights)
    return {"params": params, "macs": macs}
