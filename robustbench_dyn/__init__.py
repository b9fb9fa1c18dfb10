"""robustbench_dyn: adversarial robustness of input-dependent dynamic CNNs on CIFAR-10."""

# `benchmark` (the function) shadows the submodule of the same name on purpose
from .benchmark import benchmark
from .contract import check_model_contract
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelContractError,
    RobustDynError,
    StoreError,
    UnknownModelError,
)
from .evaluation import evaluate
from .registry import ModelSpec, create_model, get_spec, list_models, load_model

__version__ = "0.1.0"
__all__ = [
    "CheckpointError", "ConfigError", "DataError", "ModelContractError", "ModelSpec", "RobustDynError", "StoreError",
    "UnknownModelError", "__version__", "benchmark", "check_model_contract", "create_model", "evaluate", "get_spec",
    "list_models", "load_model",
]
