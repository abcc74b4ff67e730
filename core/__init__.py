"""Stack Segmenter core: pure Python (never imports qgis, PyQt or processing).

The public API: configurations in, results out, callbacks for the outside world.
Importing this package does not import torch; each job imports it when called.
"""
from __future__ import annotations

from typing import Any, Dict

from .config import EvaluateConfig, LabelOptions, PredictConfig, TrainConfig
from .errors import Cancelled, ConfigError, CoreError, DataError, ResourceError, TrainingError

__version__ = "0.1.0"


def train(config: TrainConfig, **callbacks: Any) -> Dict[str, Any]:
    """Trains each model of ``config.models`` (see core.training.train)."""
    from .training import train as _train

    return _train(config, **callbacks)


def predict(config: PredictConfig, **callbacks: Any) -> Dict[str, Any]:
    """Writes a probability GeoTIFF (see core.predict.predict)."""
    from .predict import predict as _predict

    return _predict(config, **callbacks)


def evaluate(config: EvaluateConfig, **callbacks: Any) -> Dict[str, Any]:
    """Scores a probability map against labels (see core.evaluate.evaluate)."""
    from .evaluate import evaluate as _evaluate

    return _evaluate(config, **callbacks)


__all__ = [
    "Cancelled", "ConfigError", "CoreError", "DataError", "EvaluateConfig", "LabelOptions", "PredictConfig",
    "ResourceError", "TrainConfig", "TrainingError", "evaluate", "predict", "train", "__version__",
]
