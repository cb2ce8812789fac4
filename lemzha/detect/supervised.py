"""Few-shot detectors on window features (scikit-learn only, no torch): logistic regression, gradient boosting and
an IsolationForest baseline. Everything, the feature selector and the calibration included, is fitted on the
usable bins of the training streams; with no usable labelled data they fall back to the zero-shot robust z."""

from __future__ import annotations

import numpy as np

from lemzha.detect.base import DetectionData, EcdfCalibrator, OnsetMixin, clip_scores
from lemzha.detect.features import FeatureSelector, window_features
from lemzha.detect.zeroshot import RobustZDetector


def training_rows(train: DetectionData, features=window_features) -> tuple[np.ndarray, np.ndarray]:
    """Stacked features and labels of the usable, labelled bins of every training stream."""
    xs, ys = [], []
    for stream in train.streams:
        if stream.labels is None:
            continue
        mask = stream.train_mask()
        if not mask.any():
            continue
        xs.append(features(stream.values)[mask])
        ys.append(np.asarray(stream.labels, dtype=np.int64)[mask])
    if not xs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.vstack(xs), np.concatenate(ys)


class FeatureDetector(OnsetMixin):
    """Shared plumbing: features -> selector -> standard scaler -> model -> calibrated score."""

    name = "feature"
    needs_training = True
    supervised = True

    def __init__(self, k_features: int = 40, seed: int = 0) -> None:
        self.k_features, self.seed = k_features, seed
        self.selector: FeatureSelector | None = None
        self.fallback: RobustZDetector | None = None

    def fit(self, train: DetectionData | None) -> FeatureDetector:
        self.fallback = None
        x, y = training_rows(train) if train is not None else (np.zeros((0, 0)), np.zeros(0))
        if len(y) == 0 or (self.supervised and len(np.unique(y)) < 2):
            self.fallback = RobustZDetector()  # the untrained prior: zero-shot
            return self
        from sklearn.preprocessing import StandardScaler

        self.selector = FeatureSelector(self.k_features, seed=self.seed).fit(x, y)
        xs = self.selector.transform(x)
        self.scaler = StandardScaler().fit(xs)
        self._fit_model(self.scaler.transform(xs), y)
        return self

    def transform(self, values: np.ndarray) -> np.ndarray:
        return self.scaler.transform(self.selector.transform(window_features(values)))

    def score(self, values: np.ndarray) -> np.ndarray:
        if self.fallback is not None:
            return self.fallback.score(values)
        return clip_scores(self._score_rows(self.transform(values)))

    def _fit_model(self, x: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _score_rows(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LogisticDetector(FeatureDetector):
    """L2 logistic regression with balanced class weights; its probability is the score."""

    name = "logistic"

    def _fit_model(self, x, y):
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(C=0.5, class_weight="balanced", max_iter=500).fit(x, y)

    def _score_rows(self, x):
        return self.model.predict_proba(x)[:, 1]


class GradientBoostingDetector(FeatureDetector):
    """Histogram gradient boosting (shallow, early-stopped on a held-out 10 % of the training rows)."""

    name = "gbm"

    def _fit_model(self, x, y):
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.model = HistGradientBoostingClassifier(
            max_depth=3, learning_rate=0.1, max_iter=150, l2_regularization=1.0, class_weight="balanced",
            early_stopping=True, validation_fraction=0.1, random_state=self.seed,
        ).fit(x, y)

    def _score_rows(self, x):
        return self.model.predict_proba(x)[:, 1]


class IsolationForestDetector(FeatureDetector):
    """IsolationForest on the window features of normal training bins; the score is the empirical CDF of
    -score_samples over those bins (so 0.99 = more anomalous than 99 % of normal training bins)."""

    name = "isolation_forest"
    supervised = False

    def _fit_model(self, x, y):
        from sklearn.ensemble import IsolationForest

        normal = x[y == 0] if (y == 0).any() else x
        self.model = IsolationForest(n_estimators=200, random_state=self.seed).fit(normal)
        self.calibrator = EcdfCalibrator().fit(-self.model.score_samples(normal))

    def _score_rows(self, x):
        return self.calibrator(-self.model.score_samples(x))
