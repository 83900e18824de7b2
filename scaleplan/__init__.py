"""scaleplan: plan GPT training runs from arithmetic alone.

Every public name is re-exported here; ``tests/test_public_api.py`` pins the list.
"""

from scaleplan.config import GPTConfig, TrainingConfig
from scaleplan.errors import ConfigFileError, ScaleplanError, UnknownNameError
from scaleplan.loaders import NanoGPTRun, from_hf, load_nanogpt_config
from scaleplan.params import ParamCount, count_params

__version__ = "0.1.0"

__all__ = [
    "ConfigFileError",
    "GPTConfig",
    "NanoGPTRun",
    "ParamCount",
    "ScaleplanError",
    "TrainingConfig",
    "UnknownNameError",
    "count_params",
    "from_hf",
    "load_nanogpt_config",
]
