"""One process of a DDP run on CPU over gloo, for tests/test_ddp.py (started by `torch.distributed.run`, or alone as
the single-process reference).

Ultralytics sets DDP up for GPUs only: it counts no devices on CPU and wraps the model with `device_ids=[index]`,
which DDP refuses for a CPU module. The test-only stand-ins below replace exactly that (the device set-up); the
training, pruning, EMA, distillation and resume paths are the product's, unchanged. Every rank writes what the test
compares into `out`: the first step's sparsity-penalty gradient, the model, EMA and adapters right after the cut, and
the parameters at the end of every epoch.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py '{"out": ..., ...}'
"""

import json
import os
import sys
from pathlib import Path

job = json.loads(sys.argv[1])

from yoloprune.offline import use_offline  # noqa: E402

use_offline(job.pop("config"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

WORLD = int(os.environ.get("WORLD_SIZE", "1"))
RANK = int(os.environ.get("RANK", "-1"))
OUT = Path(job.pop("out"))
KILL_AFTER = job.pop("kill_after", None)  # the epoch after which every rank stops, as a kill would stop them


class CPUDistributedDataParallel(nn.parallel.DistributedDataParallel):
    """DDP of a CPU module: the GPU index Ultralytics passes (`device_ids=[None]` on CPU) is dropped."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module, device_ids=None, **kwargs)


nn.parallel.DistributedDataParallel = CPUDistributedDataParallel  # test-only stand-in for the GPU device set-up

from ultralytics import YOLO  # noqa: E402
from ultralytics.utils import DEFAULT_CFG  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

from yoloprune.train import trainer_for  # noqa: E402


def _params(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _adapters(trainer) -> dict:
    kd = getattr(trainer, "distiller", None)
    return {k: v.detach().clone() for k, v in kd.adapters.state_dict().items()} if kd is not None else {}


class GlooTrainer(trainer_for("detect")):
    """The yoloprune detection trainer as a DDP worker on CPU: a gloo process group instead of a GPU one."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        super().__init__(cfg, overrides, _callbacks)
        if WORLD > 1:
            self.world_size, self.ddp = WORLD, False  # already a worker: Ultralytics counts no devices on CPU
        self.add_callback("on_train_epoch_start", _after_cut)  # after yoloprune's own: sees the cut model
        self.add_callback("on_train_epoch_end", _epoch_end)
        self.add_callback("on_fit_epoch_end", _maybe_kill)
        self._penalty_recorded = False

    def _setup_ddp(self):
        dist.init_process_group("gloo", rank=RANK, world_size=self.world_size)

    def final_eval(self):
        """Ultralytics' final validation asks the GPU backend for its device on a DDP rank; the test checks weights."""
        if WORLD == 1:
            super().final_eval()

    def optimizer_step(self):
        """Record the sparsity penalty's gradient of the first step: the gradient added by yoloprune's step."""
        if self.regularizer is not None and not self._penalty_recorded:
            model = unwrap_model(self.model)
            before = {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                      for k, p in model.named_parameters()}
            reg, added = self.regularizer, {}

            def record(m, scale):
                type(reg).add_grad_(reg, m, scale)
                added.update({k: p.grad - before[k] for k, p in m.named_parameters() if p.grad is not None})

            reg.add_grad_ = record
            try:
                super().optimizer_step()
            finally:
                del reg.add_grad_
            torch.save({"added": added, "world": WORLD, "batch": self.batch_size}, OUT / f"penalty-r{max(RANK, 0)}.pt")
            self._penalty_recorded = True
            return
        super().optimizer_step()


def _after_cut(trainer) -> None:
    if trainer.epoch == trainer.compression.pruning.prune_at_epoch and trainer._pruned_epoch == trainer.epoch:
        torch.save({"model": unwrap_model(trainer.model).state_dict(), "ema": trainer.ema.ema.state_dict(),
                    "adapters": _adapters(trainer)}, OUT / f"cut-r{max(RANK, 0)}.pt")


def _epoch_end(trainer) -> None:
    torch.save({"model": _params(unwrap_model(trainer.model)), "ema": _params(trainer.ema.ema),
                "adapters": _adapters(trainer)}, OUT / f"epoch{trainer.epoch}-r{max(RANK, 0)}.pt")


def _maybe_kill(trainer) -> None:
    if trainer.epoch == KILL_AFTER:
        (OUT / f"killed-r{max(RANK, 0)}").touch()
        raise SystemExit(3)  # every rank stops here, after rank 0 saved the epoch: what a kill leaves


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    model = YOLO(job.pop("model"))
    model.train(trainer=GlooTrainer, **job)
    if dist.is_initialized():
        dist.destroy_process_group()
