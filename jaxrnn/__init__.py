"""jaxrnn: recurrent language models in JAX, checkable number-for-number against PyTorch."""

from jaxrnn.cells import CELLS, GRU, LSTM, RNN_RELU, RNN_TANH, Cell, get_cell
from jaxrnn.engine import Recurrent, register_fast_layer, run_direction
from jaxrnn.packing import last_valid, pad_sequences, sequence_mask
from jaxrnn import fast  # registers the custom-VJP layers that impl="auto" / "fast" use

__all__ = [
    "CELLS", "GRU", "LSTM", "RNN_RELU", "RNN_TANH", "Cell", "get_cell",
    "Recurrent", "register_fast_layer", "run_direction",
    "last_valid", "pad_sequences", "sequence_mask", "fast",
]
__version__ = "0.1.0"
