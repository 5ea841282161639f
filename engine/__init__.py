"""rwkveval's RWKV-7 inference engine: checkpoint loading, the model, scoring and generation.

Knows nothing of pytest. The torch reference path in :mod:`engine.model` runs anywhere and is the
oracle for everything else; the GPU path swaps in the CuPy kernels of :mod:`engine.kernels`.
"""
from .adapters import AdapterError, AdapterOptions
from .config import ModelConfig, official_config
from .errors import CheckpointError, EngineError, InputError
from .generate import Generation
from .model import RWKV7, from_state_dict, load_model, random_model, random_state_dict, wkv7_reference
from .state import State

__all__ = [
    "AdapterError", "AdapterOptions", "CheckpointError", "EngineError", "Generation", "InputError", "ModelConfig",
    "RWKV7", "State", "from_state_dict", "load_model", "official_config", "random_model", "random_state_dict", "wkv7_reference",
]
