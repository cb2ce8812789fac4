"""Anomaly detection over 30 s pod metrics: zero-shot and few-shot detectors and onset estimation.

Importing this package imports neither torch nor scikit-learn: the zero-shot detectors need numpy, pandas and
scipy only, the scikit-learn detectors import it when fitted, and the LSTM detectors (torch) live in
`lemzha.detect.lstm`, imported only by `make_detector("lstm" | "lstm_ae")`.
"""

from __future__ import annotations

from lemzha.detect.base import (
    EFFECT_BINS,
    EFFECT_MINUTES,
    EPS,
    DetectionData,
    Detector,
    EcdfCalibrator,
    Stream,
    first_crossing,
    label_bins,
)
from lemzha.detect.onset import OnsetEstimator, estimate_onset, select_onset_estimator
from lemzha.detect.zeroshot import BocpdDetector, RobustZDetector

ZERO_SHOT = ("robust_z", "bocpd")
FEW_SHOT = ("logistic", "gbm", "lstm")
BASELINES = ("isolation_forest", "lstm_ae")
ALL_DETECTORS = ZERO_SHOT + FEW_SHOT + BASELINES
TORCH_DETECTORS = ("lstm", "lstm_ae")


def make_detector(name: str, seed: int = 0) -> Detector:
    """A fresh, unfitted detector by name (torch is imported only for the LSTM ones)."""
    if name == "robust_z":
        return RobustZDetector()
    if name == "bocpd":
        return BocpdDetector()
    if name in ("logistic", "gbm", "isolation_forest"):
        from lemzha.detect.supervised import GradientBoostingDetector, IsolationForestDetector, LogisticDetector

        cls = {"logistic": LogisticDetector, "gbm": GradientBoostingDetector,
               "isolation_forest": IsolationForestDetector}[name]
        return cls(seed=seed)
    if name in TORCH_DETECTORS:
        from lemzha.detect.lstm import LstmAutoencoderDetector, LstmClassifierDetector

        return (LstmClassifierDetector if name == "lstm" else LstmAutoencoderDetector)(seed=seed)
    raise ValueError(f"unknown detector {name!r}; choose from {', '.join(ALL_DETECTORS)}")


__all__ = [
    "ALL_DETECTORS", "BASELINES", "EFFECT_BINS", "EFFECT_MINUTES", "EPS", "FEW_SHOT", "TORCH_DETECTORS",
    "ZERO_SHOT", "BocpdDetector", "DetectionData", "Detector", "EcdfCalibrator", "OnsetEstimator",
    "RobustZDetector", "Stream", "estimate_onset", "first_crossing", "label_bins", "make_detector",
    "select_onset_estimator",
]
