"""The `yoloprune` command: a thin layer that parses arguments and calls the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .offline import use_offline


def _default_output(model: str) -> Path:
    p = Path(model)
    if p.suffix.lower() in (".yaml", ".yml"):
        return Path.cwd() / f"{p.stem}-slim.pt"  # YAMLs may live inside site-packages: write here instead
    return p.with_name(f"{p.stem}-slim.pt")


def cmd_slim(args: argparse.Namespace) -> int:
    from .checkpoint import atomic_write, check_writable
    from .errors import UserError
    from .slimmer import Slimmer

    out = Path(args.output) if args.output else _default_output(args.model)
    if not args.dry_run:  # every output is checked before any work, so a bad path costs nothing
        if out.suffix != ".pt":
            raise UserError(f"output '{out}' must end in .pt (an Ultralytics checkpoint)")
        if Path(args.model).exists() and out.resolve() == Path(args.model).resolve():
            raise UserError(f"output '{out}' would overwrite the input model; pass another --output")
        check_writable(out)
    if args.json:
        check_writable(Path(args.json))
    slimmer = Slimmer(args.model, ratio=args.ratio, importance=args.importance, rules=args.rules,
                      round_to=args.round_to, imgsz=args.imgsz)
    if args.dry_run:
        report = slimmer.plan()
    else:
        slimmer.slim()
        report = slimmer.report
    print(report.format(layers=args.layers))
    if args.json:
        text = json.dumps(report.to_dict(), indent=2)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    if args.dry_run:
        print("dry run: nothing written")
    else:
        slimmer.save(out)
        print(f"saved {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yoloprune", description="Graph-based structural pruning for Ultralytics YOLO.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("slim", help="physically slim a model into a smaller Ultralytics checkpoint")
    s.add_argument("model", help="a .pt checkpoint or an Ultralytics model YAML (name or path), e.g. yolo26n.yaml")
    s.add_argument("--ratio", type=float, default=0.3, help="share of channels to remove, in (0, 1) (default 0.3)")
    s.add_argument("--importance", default="l1", help="channel scorer: l1, l2, bn, lamp or random (default l1)")
    s.add_argument("--rules", default="yolo26", help="shortcut rules: yolo26, none or a rules YAML path (default yolo26)")
    s.add_argument("--round-to", type=int, default=8, help="kept widths are multiples of this (default 8)")
    s.add_argument("--imgsz", type=int, default=640, help="image size for the GFLOPs report (default 640)")
    s.add_argument("--output", help="checkpoint to write (default <stem>-slim.pt next to the input)")
    s.add_argument("--json", help="also write the report as JSON to this path")
    s.add_argument("--layers", action="store_true", help="list every layer's width in the report")
    s.add_argument("--dry-run", action="store_true", help="plan and report only; write nothing")
    s.set_defaults(func=cmd_slim)
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
