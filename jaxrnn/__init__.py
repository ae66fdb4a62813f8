"""jaxrnn: recurrent language models in JAX, checkable number-for-number against PyTorch.

The names below are imported on first use (PEP 562), so `import jaxrnn.names` (pure Python)
does not import JAX, and importing jaxrnn has no side effects.
"""

import importlib

_EXPORTS = {
    "CELLS": "jaxrnn.cells", "GRU": "jaxrnn.cells", "LSTM": "jaxrnn.cells",
    "RNN_RELU": "jaxrnn.cells", "RNN_TANH": "jaxrnn.cells", "Cell": "jaxrnn.cells",
    "get_cell": "jaxrnn.cells",
    "Recurrent": "jaxrnn.engine", "run_direction": "jaxrnn.engine",
    "last_valid": "jaxrnn.packing", "pad_sequences": "jaxrnn.packing",
    "sequence_mask": "jaxrnn.packing",
    "SolverOptions": "jaxrnn.newton",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jaxrnn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
