"""Keep Ultralytics off the network: no DNS lookups, no pip installs, no font downloads.

Call `use_offline()` before importing `ultralytics`. It sets `YOLO_OFFLINE=1` and `YOLO_AUTOINSTALL=0` (unless the
caller set them) and, when `config_dir` is given, points `YOLO_CONFIG_DIR` there with a local TrueType font copied
in as `Arial.ttf` (Ultralytics asks for that font on every train/val and downloads it when missing).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def use_offline(config_dir: str | Path | None = None) -> None:
    """Configure the environment so Ultralytics never reaches for the network."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    if config_dir is None:
        return
    _copy_font(Path(config_dir) / "Ultralytics")
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)


def ensure_font() -> None:
    """Offline, give Ultralytics' config folder the font it would otherwise try to download on every train/val.

    matplotlib's DejaVuSans is copied in as `Arial.ttf` (Ultralytics only draws plot labels with it).
    """
    if not is_offline():
        return
    from ultralytics.utils import USER_CONFIG_DIR

    try:
        _copy_font(Path(USER_CONFIG_DIR))
    except OSError:
        pass  # a read-only config folder: Ultralytics' check only costs a failed request then


def _copy_font(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    font = target / "Arial.ttf"
    if not font.exists():
        import matplotlib

        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)


def is_offline() -> bool:
    """True when Ultralytics is told not to use the network."""
    return os.environ.get("YOLO_OFFLINE", "").lower() in ("1", "true")
