"""`analyze`: sparsity of any checkpoint (weights, channels, BatchNorm gamma) and its coupled groups by shortcut kind."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import atomic_write, load_model
from .errors import UserError
from .train.regularize import gamma_values, get_sparsity


def analyze(model, threshold: float = 1e-3, rules="yolo26") -> dict:
    """Sparsity figures and shortcut groups of a YOLO model.

    Args:
        model: a `.pt` path, a model YAML, a `YOLO` or a YOLO model.
        threshold: |value| below which a weight or gamma counts as zero.
        rules: shortcut rules used to classify the groups (`yolo26`, `none` or a YAML path).

    Returns:
        dict with `source`, `params`, `weight_sparsity`, `channel_sparsity` (conv output channels all below
        threshold), `bn_sparsity`, `bn_gamma` statistics, `groups` (per shortcut kind: groups, channels) and the
        `sparsest_layers`.

    Example:
        >>> r = analyze("runs/detect/train/weights/best.pt"); print(format_analysis(r))
    """
    if not threshold > 0:
        raise UserError(f"threshold {threshold!r} must be > 0 (e.g. 1e-3)")
    loaded = load_model(model)
    s = get_sparsity(loaded.model, threshold)
    result = {
        "source": loaded.source,
        "params": sum(p.numel() for p in loaded.model.parameters()),
        "threshold": threshold,
        "weight_sparsity": s["overall_sparsity"],
        "channel_sparsity": s["channel_sparsity"],
        "bn_sparsity": s["bn_sparsity"],
        "bn_gamma": s["bn_gamma"],
        "sparsest_layers": sorted(({"layer": k, **v} for k, v in s["layers"].items()),
                                  key=lambda r: -r["sparsity"])[:10],
    }
    try:
        from .slim.slimmer import Slimmer

        groups = Slimmer(loaded.model, ratio=0.5, rules=rules).groups()
        kinds = {}
        for g in groups:
            k = kinds.setdefault(g.kind, {"groups": 0, "channels": 0, "layers": 0})
            k["groups"] += 1
            k["channels"] += g.width
            k["layers"] += len(g.layers)
        result["groups"] = kinds
    except UserError as e:  # an architecture yoloprune cannot prune still has sparsity figures
        result["groups"] = None
        result["groups_note"] = str(e)
    return result


def format_analysis(r: dict) -> str:
    g = r["bn_gamma"]
    lines = [
        f"{r['source']}: {r['params']:,} params (zero = |value| < {r['threshold']:g})",
        f"  weight sparsity   {r['weight_sparsity']:.2%} of conv weights",
        f"  channel sparsity  {r['channel_sparsity']:.2%} of conv output channels entirely zero",
        f"  BN gamma          {r['bn_sparsity']:.2%} zero; " + (
            f"|gamma| mean {g['mean']:.4f}, median {g['median']:.4f}, min {g['min']:.4g}, max {g['max']:.4f}, "
            f"Hoyer {g['hoyer']:.4f} ({g['count']:,} channels)" if g["count"] else "no BatchNorm layers"),
    ]
    if r.get("groups"):
        lines.append("  coupled groups by shortcut kind:")
        for kind, k in sorted(r["groups"].items(), key=lambda kv: -kv[1]["channels"]):
            lines.append(f"    {kind:<10} {k['groups']:>4} groups {k['channels']:>7,} channels {k['layers']:>5} layers")
    elif r.get("groups_note"):
        lines.append(f"  groups: not available ({r['groups_note']})")
    lines.append("  sparsest layers: " + ", ".join(f"{x['layer']} {x['sparsity']:.1%}" for x in r["sparsest_layers"][:5]))
    return "\n".join(lines)


def gamma_histogram(model, path, threshold: float = 1e-3, bins: int = 60) -> Path:
    """Write a PNG histogram of |BatchNorm gamma| (log counts) with the zero threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = load_model(model).model
    g = gamma_values(m).numpy()
    if not g.size:
        raise UserError("the model has no BatchNorm layers (fused?): no gamma histogram to draw")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.hist(g, bins=bins, color="#3b6ea8", log=True)
    ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("|BatchNorm gamma|")
    ax.set_ylabel("channels (log)")
    ax.set_title(f"BatchNorm gamma of {Path(str(getattr(model, 'pt_path', '') or model)).name[:60]}: "
                 f"{(g < threshold).mean():.1%} below threshold")
    ax.legend()
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
