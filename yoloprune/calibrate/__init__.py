"""Calibration: a fixed sample of training images, BatchNorm recalibration after a cut, the calibration loss."""

from .bn import Recalibration, calibration_loss, recalibrate, reestimate_bn
from .data import DEFAULT_IMAGES, Calibration, calibration_size, load_calibration, on_device

__all__ = ["Calibration", "DEFAULT_IMAGES", "Recalibration", "calibration_loss", "calibration_size",
           "load_calibration", "on_device", "recalibrate", "reestimate_bn"]
