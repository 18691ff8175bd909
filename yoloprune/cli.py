"""The `yoloprune` command: a thin layer that parses arguments and calls the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .offline import use_offline
from .calibrate.data import DEFAULT_IMAGES
from .deploy.accuracy import MAX_GAP


def _default_output(model: str) -> Path:
    p = Path(model)
    if p.suffix.lower() in (".yaml", ".yml"):
        return Path.cwd() / f"{p.stem}-slim.pt"  # YAMLs may live inside site-packages: write here instead
    return p.with_name(f"{p.stem}-slim.pt")


def _write_json(path: str, data: dict) -> None:
    """Write `data` as JSON at `path`, atomically (the path was checked writable before any work)."""
    from .checkpoint import atomic_write

    text = json.dumps(data, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _ratio(args: argparse.Namespace) -> float:
    return 0.3 if args.ratio is None else args.ratio


def cmd_slim(args: argparse.Namespace) -> int:
    from .checkpoint import check_writable
    from .errors import UserError
    from .slim.slimmer import Slimmer

    out = Path(args.output) if args.output else _default_output(args.model)
    if not args.dry_run:  # every output is checked before any work, so a bad path costs nothing
        if out.suffix != ".pt":
            raise UserError(f"output '{out}' must end in .pt (an Ultralytics checkpoint)")
        if Path(args.model).exists() and out.resolve() == Path(args.model).resolve():
            raise UserError(f"output '{out}' would overwrite the input model; pass another --output")
        check_writable(out)
    if args.json:
        check_writable(Path(args.json))
    targeted = args.target_speedup is not None or args.target_flops is not None
    calib = {"data": args.data, "calib_images": args.calib_images, "calib_imgsz": args.calib_imgsz,
             "recalibrate": not args.no_recalibrate}
    if args.data is None and args.method == "channel":
        print("note: without --data, BatchNorm statistics are not recalibrated after the cut, channels are scored by "
              "their weights alone and no mAP is measured; pass --data data.yaml for all three")
    if targeted and (args.method != "channel" or args.ratio is not None):
        raise UserError("--target-speedup/--target-flops choose the widths themselves: drop --ratio and --method layer")
    if targeted:
        from .slim.target import TargetSlimmer

        search = TargetSlimmer(args.model, speedup=args.target_speedup, flops=args.target_flops,
                               importance=args.importance, rules=args.rules,
                               round_to=16 if args.round_to is None else args.round_to, imgsz=args.imgsz,
                               runtime=args.runtime, device=args.device, threads=args.threads,
                               allocation=args.allocation, max_ratio=args.max_ratio, **calib)
        slimmer = search.search()
        print(search.result.format())
    elif args.method == "layer":
        from .slim.depth import LayerPruner

        if args.data:
            raise UserError("--data calibrates channel slimming; --method layer removes whole blocks without it")
        slimmer = LayerPruner(args.model, ratio=_ratio(args), importance=args.importance or "l1", imgsz=args.imgsz)
    elif args.method == "channel":
        slimmer = Slimmer(args.model, ratio=_ratio(args), importance=args.importance, rules=args.rules,
                          round_to=8 if args.round_to is None else args.round_to, imgsz=args.imgsz, **calib)
    else:
        raise UserError(f"method '{args.method}' is unknown; use channel or layer")
    if targeted:
        report = slimmer.report
    elif args.dry_run:
        report = slimmer.plan()
    else:
        slimmer.slim()
        report = slimmer.report
    if args.data and not args.dry_run:
        from .slim.validation import validate_cut

        print("validating base and slim model on the validation split (Ultralytics' validator)")
        validate_cut(slimmer, args.data)
    print(report.format(layers=args.layers) if args.method == "channel" else report.format())
    if args.json:
        _write_json(args.json, report.to_dict())
    if args.dry_run:
        print("dry run: nothing written")
    else:
        slimmer.save(out)
        print(f"saved {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .offline import ensure_font
    from .train.config import parse_train_args
    from .train.run import train

    keys = parse_train_args(args.keys)
    ensure_font()
    train(**keys)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze, format_analysis, gamma_histogram
    from .checkpoint import check_writable

    for out in (args.hist, args.json):
        if out:
            check_writable(Path(out))
    result = analyze(args.model, threshold=args.threshold, rules=args.rules)
    print(format_analysis(result))
    if args.hist:
        gamma_histogram(args.model, args.hist, threshold=args.threshold)
        print(f"saved BN gamma histogram {args.hist}")
    if args.json:
        _write_json(args.json, result)
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    from .data import PRESETS, make_dataset, make_digits_dataset
    from .errors import UserError, close_match

    presets = (*PRESETS, "digits")
    if args.preset not in presets:
        raise UserError(f"preset '{args.preset}' is unknown{close_match(args.preset, presets)}; choose one of "
                        f"{', '.join(presets)}")
    if args.preset == "digits":
        if args.task != "detect":
            raise UserError(f"the digits set is labelled for detect only, not {args.task}; drop --task")
        out = make_digits_dataset(args.dir, train=args.train, val=args.val, imgsz=args.imgsz,
                                  max_objects=args.max_objects, seed=args.seed)
        print(f"wrote {args.train} train + {args.val} val digit scenes (10 classes); use data={out}")
        return 0
    out = make_dataset(args.dir, task=args.task, train=args.train, val=args.val, imgsz=args.imgsz,
                       classes=args.classes, seed=args.seed, preset=args.preset, max_objects=args.max_objects)
    print(f"wrote {args.train} train + {args.val} val {args.task} images; use data={out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import export

    result = export(args.model, format=args.format, imgsz=args.imgsz, opset=args.opset, simplify=not args.no_simplify,
                    dynamic=args.dynamic, output=args.output, end2end=args.end2end, batch=args.batch,
                    data=args.data, max_map_gap=args.max_map_gap)
    print(result.format())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .checkpoint import check_writable
    from .deploy.bench import bench

    if args.json:
        check_writable(Path(args.json))
    result = bench(args.models, runtime=args.runtime, device=args.device, imgsz=args.imgsz, batch=args.batch,
                   threads=args.threads, warmup=args.warmup, runs=args.runs)
    print(result.format())
    if args.json:
        _write_json(args.json, result.to_dict())
        print(f"saved {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEFAULT, QUICK, run_demo
    from .offline import ensure_font

    overrides = {k: getattr(args, k) for k in ("train", "val", "imgsz", "base_epochs", "finetune_epochs", "speedup",
                                               "deploy_imgsz", "threads") if getattr(args, k) is not None}
    ensure_font()
    if args.no_calibrate:
        overrides["calibrate"] = False
    if args.no_precise_bn:
        overrides["precise_bn"] = False
    result = run_demo(args.out, QUICK if args.quick else DEFAULT, data=args.data, model=args.model, **overrides)
    print(result.format())
    print(f"files in {args.out}: slim-finetuned.pt, slim.onnx, base.onnx, demo.json")
    return 0


TRAIN_HELP = """Train with Ultralytics' keys plus yoloprune's, as key=value pairs (a cfg=file.yaml may hold them all).

Examples:
  yoloprune train model=yolo26n.yaml data=shapes/data.yaml epochs=100 structured_l1=True lambda_bn=1e-4
  yoloprune train model=best.pt data=shapes/data.yaml epochs=50 pruning=True pruning_ratio=0.3 prune_at_epoch=10
  yoloprune train model=slim.pt data=shapes/data.yaml epochs=30      # the slim architecture is kept
  yoloprune train resume=runs/detect/train/weights/last.pt
  yoloprune train cfg=compression_config.yaml

"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yoloprune", description="Graph-based structural pruning for Ultralytics YOLO.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("slim", help="physically slim a model into a smaller Ultralytics checkpoint")
    s.add_argument("model", help="a .pt checkpoint or an Ultralytics model YAML (name or path), e.g. yolo26n.yaml")
    s.add_argument("--ratio", type=float, help="share of channels to remove, in (0, 1) (default 0.3)")
    s.add_argument("--importance",
                   help="channel scorer: l1, l2, bn, lamp, random, or with --data taylor / fisher (detection-loss "
                        "gradients on calibration images). Default: taylor with --data, else l1")
    s.add_argument("--data", help="data.yaml: calibration images from its train split (BatchNorm recalibration, "
                                  "data-aware scoring) and mAP of base and slim on its val split right after the cut")
    s.add_argument("--calib-images", type=int, default=DEFAULT_IMAGES,
                   help="calibration images drawn (fixed seed, no augmentation) from the train split "
                        f"(default {DEFAULT_IMAGES})")
    s.add_argument("--calib-imgsz", type=int,
                   help="calibration and validation size (default: the size the checkpoint was trained at, else --imgsz)")
    s.add_argument("--no-recalibrate", action="store_true",
                   help="with --data: keep the carried-over BatchNorm statistics (default: recalibrate, kept where "
                        "the held-back calibration loss falls)")
    s.add_argument("--rules", default="yolo26", help="shortcut rules: yolo26, none or a rules YAML path (default yolo26)")
    s.add_argument("--round-to", type=int,
                   help="kept widths are multiples of this (default 8; 16 with a target: the CPU kernels' block)")
    s.add_argument("--imgsz", type=int, default=640, help="image size for the GFLOPs report (default 640)")
    s.add_argument("--output", help="checkpoint to write (default <stem>-slim.pt next to the input)")
    s.add_argument("--json", help="also write the report as JSON to this path")
    s.add_argument("--layers", action="store_true", help="list every layer's width in the report")
    s.add_argument("--dry-run", action="store_true", help="plan and report only; write nothing")
    s.add_argument("--method", default="channel", choices=("channel", "layer"),
                   help="channel: narrower layers; layer: remove whole repeated blocks (default channel)")
    s.add_argument("--target-speedup", type=float, metavar="S",
                   help="instead of --ratio: search widths until the measured speed-up on --runtime/--device is S")
    s.add_argument("--target-flops", type=float, metavar="F",
                   help="instead of --ratio: keep this share of the base GFLOPs (e.g. 0.5), widths spread by the rules")
    s.add_argument("--allocation",
                   help="with --target-speedup: sensitivity (with --data: each group's measured loss rise per "
                        "millisecond it saves; the default with --data), rules (search the ratio of the rules plan; "
                        "the default without --data) or latency (greedy widths from a measured per-layer latency "
                        "table; most speed per MAC)")
    s.add_argument("--runtime", default="onnxruntime", help="where --target-speedup measures: onnxruntime or torch")
    s.add_argument("--device", default="cpu", help="cpu (default) or cuda, for --target-speedup")
    s.add_argument("--threads", type=int, help="intra-op threads for --target-speedup (default: every core)")
    s.add_argument("--max-ratio", type=float,
                   help="with a target: most of a group's channels that may go, times its rule multiplier (default "
                        "0.9 with the sensitivity allocation, else 0.75)")
    s.set_defaults(func=cmd_slim)

    from .train.config import describe_keys

    t = sub.add_parser("train", help="Ultralytics training + sparsity, pruning; slim models stay slim",
                       description=TRAIN_HELP + describe_keys(), formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("keys", nargs="*", metavar="key=value", help="Ultralytics train keys and yoloprune keys")
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("analyze", help="weight / channel / BN-gamma sparsity and shortcut groups of a model")
    a.add_argument("model", help="a .pt checkpoint or a model YAML")
    a.add_argument("--threshold", type=float, default=1e-3, help="|value| counted as zero (default 1e-3)")
    a.add_argument("--rules", default="yolo26", help="shortcut rules for the group summary (default yolo26)")
    a.add_argument("--hist", help="write a PNG histogram of |BN gamma| here")
    a.add_argument("--json", help="also write the figures as JSON to this path")
    a.set_defaults(func=cmd_analyze)

    e = sub.add_parser("export", help="export to ONNX and check ONNX Runtime against PyTorch on a real image (and on a data set with --data)")
    e.add_argument("model", help="a .pt checkpoint (base or slim) or a model YAML")
    e.add_argument("--format", default="onnx", help="onnx (default)")
    e.add_argument("--imgsz", type=int, default=640, help="export image size (default 640)")
    e.add_argument("--opset", type=int, help="ONNX opset (default: Ultralytics' choice)")
    e.add_argument("--no-simplify", action="store_true", help="skip onnxslim simplification")
    e.add_argument("--dynamic", action="store_true", help="dynamic batch and image size axes")
    e.add_argument("--output", help="the .onnx to write (default <stem>.onnx next to the model)")
    e.add_argument("--batch", type=int, default=1, help="batch size of the graph (default 1)")
    e.add_argument("--end2end", action="store_true",
                   help="NMS-free one-to-one head output (YOLO26); default: the raw head output, for NMS")
    e.add_argument("--data", help="a data.yaml: validate the exported model beside PyTorch on its val split")
    e.add_argument("--max-map-gap", type=float, default=MAX_GAP,
                   help=f"largest mAP50-95 difference accepted with --data (default {MAX_GAP})")
    e.set_defaults(func=cmd_export)

    b = sub.add_parser("bench", help="measure latency of models side by side (interleaved, warmed up)")
    b.add_argument("models", nargs="+", help=".pt checkpoints, model YAMLs or .onnx files; the first is the reference")
    b.add_argument("--runtime", default="onnxruntime", help="onnxruntime (default) or torch")
    b.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    b.add_argument("--imgsz", type=int, default=640, help="input size (default 640)")
    b.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    b.add_argument("--threads", type=int, help="intra-op threads (default: every core)")
    b.add_argument("--warmup", type=int, default=10, help="untimed runs per model first (default 10)")
    b.add_argument("--runs", type=int, default=50, help="timed rounds, each running every model once (default 50)")
    b.add_argument("--json", help="also write the results as JSON to this path")
    b.set_defaults(func=cmd_bench)

    m = sub.add_parser("demo", help="the whole job offline: data, base, slim to 2x, KD fine-tune, ONNX, latency, table",
                       description="Generate a synthetic data set, train a small base yolo26n (or take yours), slim "
                                   "it to a measured ONNX Runtime speed-up, fine-tune it with distillation, export "
                                   "base and slim to ONNX with a parity check, time them and print one table. "
                                   "Finished steps are reused on a second run into the same --out.")
    m.add_argument("--out", default="yoloprune-demo", help="output folder (default yoloprune-demo)")
    m.add_argument("--quick", action="store_true",
                   help="imgsz 128, fewer epochs: about 10 minutes on a 2-core CPU")
    m.add_argument("--data", help="a data.yaml of your own instead of the synthetic set")
    m.add_argument("--model", default="yolo26n.yaml",
                   help="model YAML to train as the base, or a trained .pt used as it is (default yolo26n.yaml)")
    m.add_argument("--speedup", type=float, help="measured ONNX Runtime speed-up to slim to (default 2.0)")
    m.add_argument("--base-epochs", type=int, help="base training epochs (default 20; --quick 30)")
    m.add_argument("--finetune-epochs", type=int, help="fine-tune epochs with distillation (default 10; --quick 5)")
    m.add_argument("--imgsz", type=int, help="training / validation size (default 256; --quick 128)")
    m.add_argument("--deploy-imgsz", type=int, help="export, latency and GFLOPs size (default 640)")
    m.add_argument("--train", type=int, help="synthetic training images (default 256)")
    m.add_argument("--val", type=int, help="synthetic validation images (default 64)")
    m.add_argument("--threads", type=int, help="ONNX Runtime threads (default: every core)")
    cal = m.add_mutually_exclusive_group()
    cal.add_argument("--calibrate", action="store_true",
                     help="slim with calibration data, a sample of the training split (taylor scores, BatchNorm "
                          "recalibration, widths by the sensitivity allocation): the default, skipped for a base "
                          "under 0.10 mAP50-95")
    cal.add_argument("--no-calibrate", action="store_true",
                     help="slim without calibration data: l1 scores and the shortcut rules plan, ratio searched")
    m.add_argument("--no-precise-bn", action="store_true",
                   help="train base and fine-tune with Ultralytics' running BatchNorm averages only (for toy "
                        "bases of an epoch or two; see the README)")
    m.set_defaults(func=cmd_demo)

    d = sub.add_parser("dataset", help="write a deterministic synthetic dataset (shapes on textured backgrounds)")
    d.add_argument("dir", help="folder to write")
    d.add_argument("--task", default="detect", help="detect, segment, pose, obb or classify (default detect)")
    d.add_argument("--train", type=int, default=64, help="training images (default 64)")
    d.add_argument("--val", type=int, default=32, help="validation images (default 32)")
    d.add_argument("--imgsz", type=int, default=160, help="image size (default 160)")
    d.add_argument("--classes", type=int, default=3, help="shape classes, up to 8 (default 3)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--preset", default="normal",
                   help="normal, hard (smaller and thinner objects, lower contrast, unlabelled clutter; use it with "
                        "--classes 8 --max-objects 12) or digits (real handwritten digits from scikit-learn composited "
                        "into scenes, 10 classes, detect; needs scikit-learn) (default normal)")
    d.add_argument("--max-objects", type=int, default=5, help="most objects per image (default 5)")
    d.set_defaults(func=cmd_dataset)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `yoloprune` console script; returns the exit code."""
    use_offline()  # slimming needs no network: no DNS lookups, no pip installs
    args = build_parser().parse_args(argv)
    from .errors import UserError

    try:
        return args.func(args)
    except UserError as e:
        print(f"yoloprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("yoloprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
