"""Per-pixel baselines geologists trust, fitted on positive pixels + a background sample.

Cross-validation compares every map with the methods users of EIS Toolkit, ArcSDM and
MaxEnt already have, on the same folds. Each baseline sees one pixel's band values at a
time (no neighbourhood) and learns "positive vs background" (positive-unlabelled: the
background is a random sample of the training area, not known negatives). Inputs never
include nodata pixels; categorical bands are one-hot encoded (weights of evidence uses
their classes directly). Nothing here is saved: a fitted baseline lives in memory only.

- ``weights_of_evidence``: our own small implementation (no maintained library installs
  beside QGIS). Evidence classes are training-fold quantiles of each numeric band (3-10
  classes, about 5 deposits each) and the codes of each categorical band. Per class:
  W+ = ln(P(class | deposit) / P(class | background)), its contrast C = W+ - W- and the
  studentized contrast C / s(C) (Bonham-Carter 1994). Classes with |C / s(C)| >= 2 (the
  default confidence of ArcSDM's "Calculate Weights") keep their own weight, the others are
  generalised into one class; a band without any such class is dropped. The posterior is
  logistic(prior log-odds + sum of the kept bands' weights).
- ``maxent``: the ``elapid`` package (MaxEnt as presence-background logistic regression
  with L1 penalties, background down-weighted), feature classes as MaxEnt chooses them from
  the number of presences (L; LQ from 10; LQH from 15; LQHP from 80), product features
  only for up to PRODUCT_MAX_BANDS numeric inputs (their count grows with the square),
  regularisation multiplier 1.5, cloglog output.
- ``logistic``: L1-regularised logistic regression on standardised inputs, balanced classes.
- ``random_forest``: scikit-learn RandomForestClassifier, balanced subsamples.
- ``gradient_boosting``: scikit-learn HistGradientBoostingClassifier, balanced classes.
- ``best_band``: the single numeric band (and sign) that best separates the training
  positives from the background (AUC), mapped to its rank in the training background.

Every fit is repeatable for a given seed, and long fits call ``stop()`` between rounds
so a cancel takes effect within seconds.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import BASELINES
from .errors import ConfigError, DataError

StopFn = Callable[[], None]
"""Called between rounds of a long fit; raises Cancelled when the user asked to stop."""

PREDICT_BATCH = 65536
"""Pixels per predict call (bounded memory for wide feature expansions)."""
WOE_CONTRAST = 2.0
"""Studentized contrast a weights-of-evidence class needs to keep its own weight."""
LOGISTIC_L1 = 0.01
"""L1 strength per (balanced) sample of the logistic regression: C = 1 / (LOGISTIC_L1 * n)."""
MAXENT_BETA = 1.5
PRODUCT_MAX_BANDS = 20
RF_TREES = 300
RF_BATCH = 50
GB_ITERATIONS = 200
GB_BATCH = 50
MAX_CATEGORIES = 64


def _no_stop() -> None:
    return None


# ----------------------------------------------------------------------------- inputs


@dataclass
class Design:
    """Raw bands -> model inputs: numeric bands as they are, categorical bands one-hot.

    Attributes:
        band_names: the raster's band names.
        categorical: 0-based band -> the codes seen in the training sample (the MAX_CATEGORIES
            most common when there are more); any other code encodes as all zeros ("other").
    """

    band_names: List[str]
    categorical: Dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def fit(cls, X: np.ndarray, band_names: Sequence[str], categorical_bands: Sequence[int]) -> "Design":
        """Codes of the categorical bands (1-based numbers) from the training pixels ``X``."""
        cats: Dict[int, np.ndarray] = {}
        for b in sorted({int(v) for v in categorical_bands}):
            if not 1 <= b <= X.shape[1]:
                raise ConfigError(f"categorical band {b} does not exist; the raster has bands 1..{X.shape[1]} "
                                  "(--categorical_bands)")
            codes, counts = np.unique(X[:, b - 1], return_counts=True)
            if codes.size > MAX_CATEGORIES:  # the most common codes get a class each, the rare ones share "other"
                codes = np.sort(codes[np.argsort(-counts, kind="stable")[:MAX_CATEGORIES]])
            cats[b - 1] = codes
        return cls(list(band_names), cats)

    @property
    def numeric(self) -> List[int]:
        """0-based numbers of the numeric bands."""
        return [b for b in range(len(self.band_names)) if b not in self.categorical]

    @property
    def names(self) -> List[str]:
        """Column names of ``one_hot``'s output."""
        out = [self.band_names[b] for b in self.numeric]
        for b, codes in self.categorical.items():
            out += [f"{self.band_names[b]}={_code(c)}" for c in codes]
        return out

    def one_hot(self, X: np.ndarray) -> np.ndarray:
        """(n, bands) raw values -> float32 (n, numeric + one column per known code)."""
        parts = [X[:, self.numeric].astype(np.float32, copy=False)]
        for b, codes in self.categorical.items():
            parts.append((X[:, b, None] == codes[None, :].astype(X.dtype)).astype(np.float32))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _code(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass
class TrainingSample:
    """What a baseline is fitted on: positive pixels and background pixels of the training area.

    ``rows``/``cols`` say where each pixel is (baselines ignore them; checks use them).
    """

    positives: np.ndarray
    background: np.ndarray
    design: Design
    training_pixels: int
    pos_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pos_cols: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    bg_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    bg_cols: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def xy(self, transform: Callable[[np.ndarray], np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of positives then background, both through ``transform``."""
        X = np.concatenate([transform(self.positives), transform(self.background)])
        y = np.concatenate([np.ones(len(self.positives)), np.zeros(len(self.background))]).astype(np.int64)
        return X, y


def _fit_in_batches(model: Any, size: str, batch: int, total: int, X: np.ndarray, y: np.ndarray,
                    stop: StopFn) -> None:
    """Warm-started fits that grow ``size`` (trees, boosting rounds) by ``batch`` up to ``total``: a cancel is
    seen between batches."""
    for n in range(batch, total + 1, batch):
        stop()
        model.set_params(**{size: n})
        model.fit(X, y)


class Baseline:
    """A per-pixel model: ``fit`` on a TrainingSample, ``predict`` scores in [0, 1] of raw pixels."""

    name = "baseline"

    def fit(self, sample: TrainingSample, seed: int, stop: StopFn = _no_stop) -> "Baseline":
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        """float32 scores in [0, 1] of raw pixels (n, bands), in batches of PREDICT_BATCH."""
        out = np.empty(len(X), dtype=np.float32)
        for i in range(0, len(X), self.batch):
            out[i:i + self.batch] = self._predict(X[i:i + self.batch])
        return out

    batch = PREDICT_BATCH
    summary = ""
    """One line on what the fit kept or chose (logged)."""

    def _predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Standardised:
    """One-hot, then standardised with the background's mean and spread (what linear models need)."""

    def __init__(self, sample: TrainingSample) -> None:
        self.design = sample.design
        bg = self.design.one_hot(sample.background).astype(np.float64)
        self.mean = bg.mean(axis=0)
        std = bg.std(axis=0)
        self.std = np.where(std > 1e-12, std, 1.0)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return ((self.design.one_hot(X) - self.mean) / self.std).astype(np.float64)


# ----------------------------------------------------------------------------- weights of evidence


@dataclass
class _Layer:
    band: int
    edges: Optional[np.ndarray]  # numeric: inner quantile edges; None: categorical
    codes: Optional[np.ndarray]
    weights: np.ndarray  # per class; last entry: unseen code (0)


def woe_class_weights(d: np.ndarray, b: np.ndarray, threshold: float = WOE_CONTRAST) -> Optional[np.ndarray]:
    """Weights of the classes of one evidence layer, or None when no class is significant.

    Args:
        d: positive pixels per class; b: background (area) pixels per class.
        threshold: studentized contrast a class needs to keep its own weight.

    Counts get +0.5 (Haldane) so empty classes have finite weights. Significant classes
    keep W+ = ln(P(class | D) / P(class | not D)); the others share one generalised weight.
    """
    d = np.asarray(d, dtype=np.float64) + 0.5
    b = np.asarray(b, dtype=np.float64) + 0.5
    D, B = d.sum(), b.sum()
    w_plus = np.log((d / D) / (b / B))
    w_minus = np.log(((D - d) / D) / ((B - b) / B))
    s = np.sqrt(1.0 / d + 1.0 / (D - d) + 1.0 / b + 1.0 / (B - b))
    keep = np.abs((w_plus - w_minus) / s) >= threshold
    if not keep.any():
        return None
    weights = w_plus.copy()
    if (~keep).any():
        weights[~keep] = math.log((d[~keep].sum() / D) / (b[~keep].sum() / B))
    return weights


class WeightsOfEvidence(Baseline):
    """Bonham-Carter's weights of evidence on training-fold quantile classes (see the module doc)."""

    name = "weights_of_evidence"

    def fit(self, sample: TrainingSample, seed: int, stop: StopFn = _no_stop) -> "WeightsOfEvidence":
        pos, bg = sample.positives, sample.background
        n_classes = int(np.clip(len(pos) // 5, 3, 10))
        self.layers: List[_Layer] = []
        for band in range(pos.shape[1]):
            stop()
            codes = sample.design.categorical.get(band)
            if codes is None:
                qs = np.quantile(bg[:, band], np.linspace(0, 1, n_classes + 1)[1:-1])
                edges = np.unique(qs)
                cls_p = np.searchsorted(edges, pos[:, band], "right")
                cls_b = np.searchsorted(edges, bg[:, band], "right")
                n = edges.size + 1
            else:
                edges = None
                cls_p, cls_b = self._code_class(codes, pos[:, band]), self._code_class(codes, bg[:, band])
                n = codes.size + 1
            counts_b = np.bincount(cls_b, minlength=n)
            w = woe_class_weights(np.bincount(cls_p, minlength=n), counts_b)
            if w is not None:
                if codes is not None and counts_b[-1] == 0:
                    w[-1] = 0.0  # codes never seen in training carry no evidence
                self.layers.append(_Layer(band, edges, codes, w))
        n_pos = max(len(pos), 1)
        self.prior = math.log(n_pos / max(sample.training_pixels - n_pos, 1))
        names = [sample.design.band_names[layer.band] for layer in self.layers]
        self.summary = (f"kept {len(self.layers)} of {pos.shape[1]} band(s) with a class of studentized contrast "
                        f">= {WOE_CONTRAST:g}" + (f": {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
                                                  if names else ""))
        return self

    @staticmethod
    def _code_class(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(codes, values)
        idx = np.clip(idx, 0, codes.size - 1)
        return np.where(codes[idx] == values, idx, codes.size)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        logit = np.full(len(X), self.prior)
        for layer in self.layers:
            if layer.codes is None:
                cls = np.searchsorted(layer.edges, X[:, layer.band], "right")
            else:
                cls = self._code_class(layer.codes, X[:, layer.band])
            logit += layer.weights[cls]
        return (1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))).astype(np.float32)


# ----------------------------------------------------------------------------- maxent (elapid)


def maxent_feature_types(n_presences: int, n_inputs: int) -> List[str]:
    """MaxEnt's automatic feature classes by the number of presences (products capped by inputs)."""
    types = ["linear"]
    if n_presences >= 10:
        types.append("quadratic")
    if n_presences >= 15:
        types.append("hinge")
    if n_presences >= 80 and n_inputs <= PRODUCT_MAX_BANDS:
        types.append("product")
    return types


class Maxent(Baseline):
    """Presence-background maximum entropy through ``elapid`` (see the module doc)."""

    name = "maxent"
    batch = 8192  # hinge features multiply the inputs ~20 times

    def fit(self, sample: TrainingSample, seed: int, stop: StopFn = _no_stop) -> "Maxent":
        try:
            import elapid
        except ImportError:
            raise DataError("the maxent baseline needs the elapid package; run `make setup` (it installs "
                            "elapid 1.0.1), or leave maxent out of --baselines") from None
        from sklearn.linear_model import LogisticRegression

        class SeededMaxent(elapid.MaxentModel):  # elapid leaves liblinear's shuffling unseeded
            def initialize_sklearn_model(self, C: float, fit_intercept: bool = True) -> None:
                self.estimator = LogisticRegression(C=C, fit_intercept=fit_intercept, penalty="l1",
                                                    solver="liblinear", tol=self.convergence_tolerance,
                                                    max_iter=self.n_lambdas, random_state=seed)

        stop()
        self.design = sample.design
        X, y = sample.xy(self.design.one_hot)
        types = maxent_feature_types(len(sample.positives), X.shape[1])
        self.model = SeededMaxent(feature_types=types, beta_multiplier=MAXENT_BETA, transform="cloglog",
                                  n_cpus=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(X.astype(np.float64), y)
        kept = int(np.count_nonzero(self.model.beta_scores_))
        self.summary = (f"features {'/'.join(types)}, {kept} of {self.model.beta_scores_.size} feature weight(s) "
                        "non-zero")
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = self.model.predict(self.design.one_hot(X).astype(np.float64))
        return np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- scikit-learn models


class Logistic(Baseline):
    """L1 logistic regression, standardised inputs, balanced classes."""

    name = "logistic"

    def fit(self, sample: TrainingSample, seed: int, stop: StopFn = _no_stop) -> "Logistic":
        from sklearn.linear_model import LogisticRegression

        stop()
        self.scale = _Standardised(sample)
        X, y = sample.xy(self.scale)
        self.model = LogisticRegression(penalty="l1", solver="liblinear", C=1.0 / (LOGISTIC_L1 * len(y)),
                                        class_weight="balanced", max_iter=1000, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(X, y)
        names = sample.design.names
        coef = self.model.coef_[0]
        top = [names[i] for i in np.argsort(-np.abs(coef))[:5] if coef[i] != 0]
        self.summary = f"{int(np.count_nonzero(coef))} of {coef.size} input(s) kept; strongest: {', '.join(top)}"
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self.scale(X))[:, 1].astype(np.float32)


class RandomForest(Baseline):
    """Random forest with balanced bootstrap samples; trees grown in rounds (cancel between them)."""

    name = "random_forest"

    def fit(self, sample: TrainingSample, seed: int, stop: StopFn = _no_stop) -> "RandomForest":
        from sklearn.ensemble import RandomForestClassifier

        self.design = sample.design
        X, y = sample.xy(self.design.one_hot)
        self.model = RandomForestClassifier(n_estimators=0, min_samples_leaf=3, max_features="sqrt",
                                            class_weight="balanced_subsample", n_jobs=-1, random_state=seed,
                                            warm_start=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _fit_in_batches(self.model, "n_estimators", RF_BATCH, RF_TREES, X, y, stop)
        self.summary = f"{RF_TREES} trees"
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self.design.one_hot(X))[:, 1].astype(np.float32)


class GradientBoosting(Baseline):
    """Histogram gradient boosting with balanced classes; rounds added in batches (cancel between them)."""

    name = "gradient_boosting"

    def fit(self, sample: TrainingSample, seed: int, stop: StopFn = _no_stop) -> "GradientBoosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.design = sample.design
        X, y = sample.xy(self.design.one_hot)
        self.model = HistGradientBoostingClassifier(learning_rate=0.05, max_iter=GB_BATCH, max_leaf_nodes=15,
                                                    min_samples_leaf=20, l2_regularization=1.0,
                                                    class_weight="balanced", early_stopping=False,
                                                    random_state=seed, warm_start=True)
        # One OpenMP thread: its many short parallel regions spin on a busy machine (measured 50x
        # slower on 2 shared cores); a single thread costs at most ~2x on an idle one.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="openmp"):
            _fit_in_batches(self.model, "max_iter", GB_BATCH, GB_ITERATIONS, X, y, stop)
        self.summary = f"{GB_ITERATIONS} boosting rounds"
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="openmp"):
            return self.model.predict_proba(self.design.one_hot(X))[:, 1].astype(np.float32)


class BestBand(Baseline):
    """The numeric band, and sign, with the highest training AUC; output = its background rank."""

    name = "best_band"

    def fit(self, sample: TrainingSample, seed: int, stop: StopFn = _no_stop) -> "BestBand":
        from sklearn.metrics import roc_auc_score

        stop()
        numeric = sample.design.numeric
        if not numeric:
            raise DataError("best_band needs at least one numeric band (every band is in --categorical_bands)")
        y = np.r_[np.ones(len(sample.positives)), np.zeros(len(sample.background))]
        aucs = [roc_auc_score(y, np.r_[sample.positives[:, b], sample.background[:, b]]) for b in numeric]
        best = int(np.argmax(np.abs(np.asarray(aucs) - 0.5)))
        self.band = numeric[best]
        self.sign = 1.0 if aucs[best] >= 0.5 else -1.0
        self.reference = np.sort(self.sign * sample.background[:, self.band].astype(np.float64))
        name = sample.design.band_names[self.band]
        self.summary = (f"band {self.band + 1} ({name}), {'high' if self.sign > 0 else 'low'} values "
                        f"(training AUC {max(aucs[best], 1 - aucs[best]):.3f})")
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        v = self.sign * X[:, self.band].astype(np.float64)
        lo = np.searchsorted(self.reference, v, "left")
        hi = np.searchsorted(self.reference, v, "right")
        return ((lo + hi) / (2.0 * self.reference.size)).astype(np.float32)


FACTORIES: Dict[str, Callable[[], Baseline]] = {
    "weights_of_evidence": WeightsOfEvidence,
    "maxent": Maxent,
    "logistic": Logistic,
    "random_forest": RandomForest,
    "gradient_boosting": GradientBoosting,
    "best_band": BestBand,
}
assert tuple(FACTORIES) == BASELINES


def make_baseline(name: str) -> Baseline:
    """A fresh, unfitted baseline by name (ConfigError lists the valid names)."""
    try:
        return FACTORIES[name]()
    except KeyError:
        raise ConfigError(f"unknown baseline {name!r}; valid ones are {', '.join(FACTORIES)}") from None
