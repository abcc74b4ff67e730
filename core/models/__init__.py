"""Model registry. ``catalog`` (names, descriptions) imports without torch;
``build_model`` (in ``registry``) imports torch, and torch-harmonics only for spherical models."""
from .catalog import ARCHITECTURES, DEFAULT_MODELS, PRESET_MODELS, ModelSpec, list_models, parse_model_name

__all__ = ["ARCHITECTURES", "DEFAULT_MODELS", "PRESET_MODELS", "ModelSpec", "list_models", "parse_model_name"]
