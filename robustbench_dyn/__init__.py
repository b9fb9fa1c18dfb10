"""robustbench_dyn: adversarial robustness of input-dependent dynamic CNNs on CIFAR-10."""

from .errors import CheckpointError, ConfigError, DataError, RobustDynError, StoreError, UnknownModelError
from .registry import ModelSpec, create_model, get_spec, list_models, load_model

__version__ = "0.1.0"
__all__ = [
    "CheckpointError", "ConfigError", "DataError", "ModelSpec", "RobustDynError", "StoreError",
    "UnknownModelError", "__version__", "create_model", "get_spec", "list_models", "load_model",
]
