"""Stack Segmenter core: pure Python (never imports qgis, PyQt or processing).

The public API: configurations in, results out, callbacks for the outside world.
Importing this package does not import torch; each job imports it when called.
"""
from __future__ import annotations

from typing import Any, Dict

from .config import EvaluateConfig, LabelOptions, PredictConfig, TrainConfig
from .errors import Cancelled, ConfigError, CoreError, DataError, ResourceError, TrainingError

# predict/evaluate are imported eagerly (numpy only; torch is imported when they run): a lazy
# wrapper named like its module would be replaced by the module as soon as it is imported.
from .evaluate import evaluate
from .predict import predict

__version__ = "0.1.0"


def train(config: TrainConfig, **callbacks: Any) -> Dict[str, Any]:
    """Trains each model of ``config.models`` (see core.training.train); imports torch when called."""
    from .training import train as _train

    return _train(config, **callbacks)


__all__ = [
    "Cancelled", "ConfigError", "CoreError", "DataError", "EvaluateConfig", "LabelOptions", "PredictConfig",
    "ResourceError", "TrainConfig", "TrainingError", "evaluate", "predict", "train", "__version__",
]
