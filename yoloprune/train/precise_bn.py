"""Precise BatchNorm statistics: the EMA's running statistics re-estimated on calibration images at every epoch's end.

BatchNorm's running averages (Ultralytics' momentum 0.03: the last ~33 steps weigh most, and 80 steps still leave 9 %
of where they started) lag weights that move fast. Right after a cut they do: a 5-epoch fine-tune of a recalibrated
cut ended with running variances 20-30 % below the variances its own weights produce, layer after layer, and
validated at 0.051 mAP50-95 where the very same weights with re-estimated statistics reach 0.232 (README,
`benchmarks/finetune_calibration.py`). Re-estimating the statistics over a fixed sample before every validation (as
"precise BN" does in Wu & Johnson, *Rethinking "Batch" in BatchNorm*, 2021) makes what is validated and saved
independent of where the statistics started. The new statistics are judged like a cut's recalibration: kept only
where the detection loss on the held-back calibration images is lower, so a run whose averages are already good keeps
them. Only the EMA is touched (it is what Ultralytics validates and saves); under DDP, rank 0 does it and Ultralytics'
`validate` broadcasts the EMA's buffers to the other ranks.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch
from ultralytics.utils import LOGGER, RANK

from ..calibrate.bn import recalibrate


@contextmanager
def _same_random_state():
    """Reading the calibration images and running them draws no random numbers the training would see: the run's
    data order, augmentation and weights are the same with and without precise BN."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def refresh(trainer) -> None:
    """`on_train_epoch_end`: re-estimate and judge the EMA's BatchNorm statistics on the trainer's calibration sample."""
    if not trainer.compression.calibration.precise_bn or RANK not in {-1, 0} or trainer.ema is None:
        return
    with _same_random_state():
        calib = trainer.calibration()
        if calib is None:
            return
        rc = recalibrate(trainer.ema.ema, calib)
    LOGGER.info(f"yoloprune: epoch {trainer.epoch + 1} precise BatchNorm statistics on {calib.images} images: "
                f"held-back loss {rc.loss_before:.4f} -> {rc.loss_after:.4f}, "
                f"{'re-estimated kept' if rc.kept else 'running averages kept'}")
