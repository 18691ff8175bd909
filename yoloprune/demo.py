"""`yoloprune demo`: the whole job on a built-in default, offline, ending with one table.

dataset -> base model -> slim to a measured speed-up -> fine-tune with distillation -> ONNX export with parity
check and the slim graph validated on the data -> latency benchmark -> base vs slim table (params, GFLOPs, ORT ms, speed-up, mAP). Each step is cached in the
output folder: a second run reuses the finished steps (a different base or setting redoes what depends on it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import UserError, check_whole
from .pipeline import Recipe, fingerprint, kd_keys, train_run, validate


@dataclass
class DemoSettings:
    """Sizes of the demo; `DEFAULT` gives meaningful accuracy, `QUICK` finishes in minutes on a 2-core CPU."""

    train: int = 256  # synthetic images (ignored with a data set of your own)
    val: int = 64
    imgsz: int = 256  # training and validation size
    base_epochs: int = 20
    finetune_epochs: int = 10
    speedup: float = 2.0  # measured ONNX Runtime speed-up the slim model is searched for
    deploy_imgsz: int = 640  # export, latency and GFLOPs size
    threads: int | None = None  # ONNX Runtime threads (default: every core)
    batch: int = 16
    # calibration data (a sample of the training split): taylor scores, judged BatchNorm recalibration and the
    # `sensitivity` allocation of widths; measured to keep ten times as much right after the cut and at least as much
    # after the fine-tune (README). Skipped for a base under `WEAK_MAP`, whose loss curves say nothing
    calibrate: bool = True
    # base and fine-tune re-estimate their BatchNorm statistics on training images at every epoch's end (`precise_bn`):
    # measured to remove a collapse of the running averages; off for toy bases of an epoch or two, whose re-estimated
    # statistics make near-random outputs so large that float32 differences between runtimes fail the parity check
    precise_bn: bool = True


# a base this weak or still learning this fast makes the slim model's figures say little (the demo warns)
WEAK_MAP = 0.10  # mAP50-95 under which every figure of the table is mostly noise
RISING = 0.10  # relative mAP50-95 gain over the last fifth of the base's epochs: the base was still learning


def base_warnings(map50_95: float, curve: list[float] | None = None) -> list[str]:
    """What makes the demo's figures weak, as lines that say what to do: a base under `WEAK_MAP` mAP50-95, or one
    whose validation mAP50-95 (`curve`, one value per epoch) still rose by more than `RISING` of its final value over
    its last fifth of epochs (at least two)."""
    out = []
    if map50_95 < WEAK_MAP:
        out.append(f"the base's mAP50-95 {map50_95:.4f} is under {WEAK_MAP:g}: what slimming keeps or loses below is "
                   "mostly noise; train it longer (--base-epochs), at a larger --imgsz, or pass a trained --model")
    curve = [float(v) for v in (curve or [])]
    if len(curve) >= 5 and curve[-1] > 0:
        k = max(2, len(curve) // 5)
        before = max(curve[:-k])
        if (curve[-1] - before) / curve[-1] > RISING:
            out.append(f"the base was still learning: mAP50-95 {before:.4f} -> {curve[-1]:.4f} over its last {k} of "
                       f"{len(curve)} epochs; a converged base (more --base-epochs) keeps different figures, and the "
                       "base's own extra training would beat part of the fine-tune's gain")
    return out


def _curve(run: Path) -> list[float]:
    """Validation mAP50-95 per epoch from an Ultralytics run's results.csv (empty if there is none)."""
    import csv

    try:
        with open(run / "results.csv") as f:
            rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    except OSError:
        return []
    key = next((k for k in (rows[0] if rows else {}) if k.startswith("metrics/mAP50-95")), None)
    return [float(r[key]) for r in rows] if key else []


DEFAULT = DemoSettings()
QUICK = DemoSettings(imgsz=128, base_epochs=30, finetune_epochs=5)


@dataclass
class DemoRow:
    name: str
    params: int | None = None
    gflops: float | None = None
    ms: float | None = None
    speedup: float | None = None
    map50: float | None = None
    map50_95: float | None = None


@dataclass
class DemoResult:
    settings: dict
    rows: list[DemoRow] = field(default_factory=list)
    files: dict = field(default_factory=dict)
    runtime: str = ""
    onnx_accuracy: dict | None = None  # the slim graph validated beside PyTorch (`deploy.accuracy`)
    warnings: list[str] = field(default_factory=list)  # what makes the figures weak (`base_warnings`)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        s = self.settings
        lines = [f"params and GFLOPs of the deployed ONNX graph at {s['deploy_imgsz']}; {self.runtime}; mAP by "
                 f"Ultralytics' validator at {s['imgsz']}",
                 f"{'model':<28}{'params':>11}{'GFLOPs':>8}{'ORT ms':>9}{'speed-up':>10}{'mAP50':>8}{'mAP50-95':>10}"]

        def f(v, fmt):
            return format(v, fmt) if v is not None else "-"

        for r in self.rows:
            lines.append(f"{r.name:<28}{f(r.params, ','):>11}{f(r.gflops, '.2f'):>8}{f(r.ms, '.2f'):>9}"
                         f"{(f(r.speedup, '.2f') + 'x') if r.speedup else '-':>10}{f(r.map50, '.4f'):>8}"
                         f"{f(r.map50_95, '.4f'):>10}")
        a = self.onnx_accuracy
        if a:
            lines.append(f"slim ONNX graph on the val split at {a['imgsz']}: mAP50-95 {a['onnx'][1]:.4f} (PyTorch "
                         f"{a['torch'][1]:.4f})")
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def _step(i: int, n: int, text: str) -> None:
    print(f"\n[{i}/{n}] {text}", flush=True)


def check_settings(s: DemoSettings) -> None:
    for name in ("train", "val", "base_epochs", "finetune_epochs", "batch"):
        check_whole(name.replace("_", "-"), getattr(s, name), 1)
    for name in ("imgsz", "deploy_imgsz"):
        check_whole(name.replace("_", "-"), getattr(s, name), 32)
    if s.threads is not None:
        check_whole("threads", s.threads, 1)
    if isinstance(s.speedup, bool) or not isinstance(s.speedup, (int, float)) or not s.speedup > 1:
        raise UserError(f"speed-up {s.speedup!r} must be a number above 1, e.g. 2.0")


def run_demo(out="yoloprune-demo", settings: DemoSettings = DEFAULT, data=None, model="yolo26n.yaml",
             **overrides) -> DemoResult:
    """Run the whole pipeline into `out` and return the final table.

    Args:
        out: output folder (dataset, runs, `base.onnx`, `slim.pt`, `slim-finetuned.pt`, `slim.onnx`, `demo.json`).
        settings: `DEFAULT` or `QUICK` (or your own `DemoSettings`); `overrides` replace single fields.
        data: a `data.yaml` of your own (default: the synthetic set, written into `out`).
        model: a model YAML to train as the base, or a trained `.pt` checkpoint used as the base as it is.

    Example:
        >>> print(run_demo("demo", QUICK).format())
    """
    from .checkpoint import atomic_write, check_writable, load_model
    from .data import make_dataset
    from .data.checks import check_classes
    from .deploy.bench import bench
    from .deploy.export import export
    from .slim.target import TargetSlimmer, default_allocation, default_max_ratio

    s = replace(settings, **overrides)
    check_settings(s)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output '{out}' is a file: pass a folder for the demo's files")
    if data is not None and not Path(data).is_file():
        raise UserError(f"data '{data}' not found: pass the path of a data.yaml (or leave it out for the synthetic set)")
    trained = str(model).endswith(".pt")
    loaded = load_model(model)  # a missing, corrupt or non-YOLO model fails now, not after training
    if trained and data is not None:
        check_classes(loaded.model, data, "pass a base trained on this data, or a model YAML to train one")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder '{out}' ({e.strerror}); pass another --out") from None
    check_writable(out / "demo.json")
    recipe = Recipe(imgsz=s.imgsz, batch=s.batch)
    n = 7

    _step(1, n, "data set")
    if data is None:
        data = out / "shapes" / "data.yaml"
        made = out / "shapes" / "settings.json"
        want = json.dumps({"train": s.train, "val": s.val, "imgsz": s.imgsz})
        if not (data.is_file() and made.is_file() and made.read_text() == want):
            make_dataset(out / "shapes", "detect", train=s.train, val=s.val, imgsz=s.imgsz, seed=0)
            made.write_text(want)
        print(f"synthetic shapes: {s.train} train + {s.val} val images at {s.imgsz} ({data})")
    else:
        print(f"your data: {data}")

    _step(2, n, "base model")
    if trained:
        base = Path(model)
        print(f"trained base given: {base}")
        base_map = validate(base, data, s.imgsz, s.batch)
    else:
        print(f"training {model} for {s.base_epochs} epochs at {s.imgsz} (cached in {out / 'base'})")
        r = train_run(model, data, out, "base", s.base_epochs, recipe, precise_bn=s.precise_bn)
        base, base_map = Path(r.weights), (r.map50, r.map50_95)
        if r.cached:
            print(f"reused the finished run {base}")
    print(f"base mAP50-95 {base_map[1]:.4f}")
    warnings = base_warnings(base_map[1], None if trained else _curve(out / "base"))
    for w in warnings:
        print(f"WARNING: {w}")

    calibrate = s.calibrate and base_map[1] >= WEAK_MAP
    _step(3, n, f"slim to a measured {s.speedup:g}x ONNX Runtime speed-up at {s.deploy_imgsz} "
                + ("(widths by each group's measured loss per millisecond on the calibration images)" if calibrate
                   else "(shortcut rules, ratio searched)"))
    if s.calibrate and not calibrate:
        print(f"calibration skipped: the base's mAP50-95 {base_map[1]:.4f} is under {WEAK_MAP:g}, so the loss rises it "
              "would measure are noise (and recalibrated statistics of near-random weights blow up); slimming by the "
              "shortcut rules without data")
    slim = out / "slim.pt"
    marker = out / "slim.json"
    calib = data if calibrate else None
    want = {"base_sha1": fingerprint(base), "speedup": s.speedup, "deploy_imgsz": s.deploy_imgsz, "threads": s.threads,
            "calibrate": calibrate, "allocation": default_allocation(calib, s.speedup)}
    want["max_ratio"] = default_max_ratio(want["allocation"])  # a changed default redoes the cut
    if slim.is_file() and marker.is_file() and json.loads(marker.read_text()).get("settings") == want:
        target = json.loads(marker.read_text())["result"]
        print(f"reused {slim} ({target['reached']:.2f}x measured when it was made)")
    else:
        search = TargetSlimmer(str(base), speedup=s.speedup, imgsz=s.deploy_imgsz, threads=s.threads,
                               data=calib)
        search.search().save(slim)
        target = search.result.to_dict()
        print(search.result.format())
        rc = search.slimmer.report.recalibration
        if rc:
            print(f"BatchNorm recalibration: held-back loss {rc['loss_before']:.4f} -> {rc['loss_after']:.4f}, "
                  + ("kept" if rc["kept"] else "not kept"))
        marker.write_text(json.dumps({"settings": want, "result": target}, indent=2))
    slim_map = validate(slim, data, s.imgsz, s.batch)
    print(f"slim mAP50-95 right after slimming {slim_map[1]:.4f}")

    _step(4, n, f"fine-tune the slim model {s.finetune_epochs} epochs, distilling the base into it")
    r = train_run(slim, data, out, "finetune", s.finetune_epochs, recipe.finetune(), precise_bn=s.precise_bn,
                  **kd_keys(base))
    tuned = out / "slim-finetuned.pt"
    atomic_write(tuned, lambda tmp: Path(tmp).write_bytes(Path(r.weights).read_bytes()))
    print(f"{'reused the finished run: ' if r.cached else ''}fine-tuned mAP50-95 {r.map50_95:.4f} -> {tuned}")

    _step(5, n, f"export base and slim to ONNX at {s.deploy_imgsz}, parity checked against PyTorch; the slim graph "
                f"validated beside PyTorch at {s.imgsz}")
    base_onnx, slim_onnx = out / "base.onnx", out / "slim.onnx"
    for src, dst in ((base, base_onnx), (tuned, slim_onnx)):
        print(export(src, imgsz=s.deploy_imgsz, output=dst, verbose=False).format())
    # the deployed graph's accuracy, at the size the model was trained and validated at (at another size the
    # figures would say little); the same model, so the check covers the graph at the deployed size too
    val_onnx = slim_onnx if s.imgsz == s.deploy_imgsz else out / f"slim-{s.imgsz}.onnx"
    checked = export(tuned, imgsz=s.imgsz, output=val_onnx, verbose=False, data=data)
    print(checked.format())

    _step(6, n, "latency: ONNX Runtime CPU, interleaved runs")
    b = bench([base_onnx, slim_onnx], imgsz=s.deploy_imgsz, threads=s.threads)
    print(b.format())

    _step(7, n, "result")
    rb, rs = b.rows
    result = DemoResult(asdict(s), runtime=f"ONNX Runtime {b.device}, {b.threads} threads, median of {b.runs} runs",
                        files={"data": str(data), "base": str(base), "slim": str(slim), "finetuned": str(tuned),
                               "base_onnx": str(base_onnx), "slim_onnx": str(slim_onnx),
                               "slim_onnx_validated": str(val_onnx)},
                        onnx_accuracy=checked.accuracy.to_dict(), warnings=warnings)
    result.rows = [
        DemoRow("base", rb.params, rb.gflops, rb.median_ms, 1.0, *base_map),
        DemoRow("slim, right after slimming", rs.params, rs.gflops, None, None, *slim_map),
        DemoRow(f"slim + {s.finetune_epochs} epochs KD", rs.params, rs.gflops, rs.median_ms, rs.speedup,
                r.map50, r.map50_95),
    ]
    text = json.dumps({**result.to_dict(), "calibrated": calibrate, "target": target}, indent=2)
    atomic_write(out / "demo.json", lambda tmp: Path(tmp).write_text(text))
    return result
