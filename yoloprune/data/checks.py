"""A user's data.yaml, checked at the edge: it resolves through Ultralytics and matches the model's classes."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def resolve_data(data) -> dict:
    """The resolved Ultralytics data dict of a `data.yaml` path (a dict is returned as it is).

    Raises:
        UserError: the file is missing, or Ultralytics cannot resolve it (bad YAML, missing keys, a download needed).
    """
    if isinstance(data, dict):
        return data
    from ultralytics.data.utils import check_det_dataset

    from ..deploy.export import quiet_ultralytics

    if not Path(str(data)).is_file():
        raise UserError(f"data '{data}' not found: pass the path of an Ultralytics data.yaml")
    try:
        with quiet_ultralytics():
            return check_det_dataset(str(data), autodownload=False)
    except Exception as e:  # Ultralytics raises several types for a bad data.yaml
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot use data '{data}': {first}") from None


def check_classes(model, data, fix: str = "pass a model trained on this data") -> None:
    """A trained model must predict the data's classes (it is validated on them, or teaches on them).

    Args:
        model: a YOLO `nn.Module` (its `names` or `nc` is read).
        data: path of a data.yaml.
        fix: what the user should do instead, for the error.
    """
    import yaml

    try:
        d = yaml.safe_load(Path(data).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"data '{data}' is not readable YAML ({type(e).__name__}): pass an Ultralytics data.yaml") from None
    names = d.get("names") if isinstance(d, dict) else None
    data_nc = len(names) if isinstance(names, (list, dict)) else d.get("nc") if isinstance(d, dict) else None
    nc = len(getattr(model, "names", None) or {}) or getattr(model, "nc", None)
    if data_nc is not None and nc is not None and nc != data_nc:
        raise UserError(f"the model predicts {nc} classes but data '{data}' has {data_nc}: {fix}")
