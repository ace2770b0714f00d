"""Anomaly detection with autoencoders: a PyOD-shaped detector, its scores and threshold rules.

Modules: `thresholds` (the `THRESHOLDS` registry), `scores` (the `SCORES` registry and
`TrainStats`), `detector` (`AutoencoderDetector`), `ensemble` (`EnsembleDetector`, members
that differ in more than the seed, and `load_detector`), `command` (`ae-jax detect`). Both
registries are complete once this package is imported.
"""

from ae_jax.anomaly.detector import (ERROR_WEIGHTS, SCALINGS, AutoencoderDetector,
                                     default_sizes, fit_scaler)
from ae_jax.anomaly.ensemble import EnsembleDetector, load_detector
from ae_jax.anomaly.scores import SCORES, Score, TrainStats
from ae_jax.anomaly.thresholds import THRESHOLDS

__all__ = [
    "AutoencoderDetector", "ERROR_WEIGHTS", "EnsembleDetector", "SCALINGS", "SCORES", "Score",
    "THRESHOLDS", "TrainStats", "default_sizes", "fit_scaler", "load_detector",
]
