"""How the yoloprune trainer runs knowledge distillation: teacher check, adapters in the optimizer, criterion, resume.

- Before training: the teacher is loaded once and checked (file, task, classes); Ultralytics' own `distill_model`
  in the same run is refused.
- When the optimizer is built (the student is on its device): the distiller is made, the teacher moved to the
  student's device (fp16 on CUDA with AMP), and the feature adapters get their own optimizer group (settings of the
  weight group), so warmup and the LR schedule drive them too. On resume their weights come back from
  `weights/distill_adapters.pt`, written next to `last.pt` at every save (checkpoints themselves stay stock).
- At train start: the training model's criterion is wrapped by `DistillCriterion`. The EMA copy (validated, saved)
  keeps the stock criterion, so `best.pt` holds neither teacher nor adapters.
- Under DDP the adapters are outside the DDP module: their gradients are averaged over ranks by hand.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.utils import LOGGER, RANK

from ..errors import UserError

ADAPTERS = "distill_adapters.pt"
GROUP = "distill_adapters"


def check_teacher(trainer):
    from ..distill import load_teacher

    if getattr(trainer.args, "distill_model", None):
        raise UserError("use either Ultralytics' distill_model or yoloprune's distillation=True, not both")
    cfg = trainer.compression.distill
    teacher = load_teacher(cfg.teacher_model, task=trainer.args.task, nc=trainer.data["nc"])
    if RANK in {-1, 0}:
        LOGGER.info(f"yoloprune: distilling {cfg.teacher_model} ({sum(p.numel() for p in teacher.parameters()):,} "
                    f"params, frozen) with distill_type={cfg.distill_type}, temperature={cfg.temperature}, "
                    f"alpha={cfg.distill_alpha}")
    return teacher


def build(trainer, student, optimizer) -> None:
    """Make the distiller for `student` and give its adapters an optimizer group."""
    from ..distill import KnowledgeDistiller
    from ..graph.trace import max_stride

    cfg = trainer.compression.distill
    trainer.distiller = KnowledgeDistiller(trainer._teacher, student, cfg.temperature, cfg.distill_alpha,
                                           cfg.distill_type, cfg.distill_features, imgsz=2 * max_stride(student))
    trainer.distiller.to_device(trainer.device, half=trainer.device.type == "cuda" and bool(trainer.amp))
    saved = Path(trainer.wdir) / ADAPTERS
    if trainer.resume and saved.is_file() and len(trainer.distiller.adapters):
        try:
            trainer.distiller.adapters.load_state_dict(torch.load(saved, map_location=trainer.device))
        except RuntimeError:
            LOGGER.warning("yoloprune: saved distillation adapters do not fit the model; starting them afresh")
    broadcast_adapters(trainer)
    add_adapter_group(optimizer, trainer.distiller)


def add_adapter_group(optimizer, distiller, like: dict | None = None) -> None:
    """Give the adapters an optimizer group: settings of `like` (their old group) or of the weight group."""
    params = list(distiller.adapters.parameters())
    if not params:
        return
    like = like or next((g for g in optimizer.param_groups if g.get("param_group") in ("weight", "muon")),
                        optimizer.param_groups[0])
    group = {**{k: v for k, v in like.items() if k != "params"}, "params": params, "param_group": GROUP}
    if "use_muon" in group:
        group["use_muon"] = False  # 1x1 adapters train as plain weights
    optimizer.add_param_group(group)


def broadcast_adapters(trainer) -> None:
    """Under DDP ranks are seeded differently: start every rank from rank 0's adapter weights."""
    import torch.distributed as dist

    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        for p in trainer.distiller.adapters.parameters():
            dist.broadcast(p.data, 0)


def install(trainer) -> None:
    """Wrap the training model's criterion (not the EMA's) with the distillation loss."""
    from ..distill import DistillCriterion
    from ultralytics.utils.torch_utils import unwrap_model

    model = unwrap_model(trainer.model)
    base = getattr(model, "criterion", None) or model.init_criterion()
    if isinstance(base, DistillCriterion):
        base = base.base
    model.criterion = DistillCriterion(base, trainer.distiller)


def detach(model) -> None:
    """Put the stock criterion back (before a model is copied or cut)."""
    from ..distill import DistillCriterion

    if isinstance(getattr(model, "criterion", None), DistillCriterion):
        model.criterion = model.criterion.base


def save_adapters(trainer) -> None:
    if trainer.distiller is None or not len(trainer.distiller.adapters):
        return
    from ..checkpoint import atomic_write

    state = trainer.distiller.adapters.state_dict()
    atomic_write(Path(trainer.wdir) / ADAPTERS, lambda tmp: torch.save(state, tmp))


def sync_adapter_grads(trainer) -> None:
    """Average the adapters' gradients over DDP ranks (DDP only syncs the model's own parameters)."""
    import torch.distributed as dist

    if trainer.world_size <= 1 or not dist.is_available() or not dist.is_initialized():
        return
    for p in trainer.distiller.adapters.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= trainer.world_size
