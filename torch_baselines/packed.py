"""PyTorch's packed-sequence recipe, as the reference for jaxrnn's `lengths`.

`PackedRecurrent` (and `PackedRNN`, `PackedLSTM`, `PackedGRU`, which build the module too)
wraps nn.RNN / nn.LSTM / nn.GRU around a padded batch plus lengths:
  pack_padded_sequence(padded, lengths, enforce_sorted=False) -> module -> pad_packed_sequence
with `total_length=T`, so the output keeps the padded shape. This is exactly what
`jaxrnn.Recurrent.apply(params, padded, hx, lengths)` computes.

`tutorial_part4()` is the tutorial's Part 4 demo (three sequences of lengths 4, 2 and 1 through
`nn.RNN(1, 1)`), returning every number the jaxrnn side needs to check itself with the same
weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence


class PackedRecurrent(torch.nn.Module):
    """Wraps an nn.RNN / nn.LSTM / nn.GRU to run on (padded, lengths): pack, run, pad back.

    The wrapped module is `self.rnn` (so state_dict keys are prefixed with "rnn."); its
    parameters are shared, not copied.
    """

    def __init__(self, module: torch.nn.RNNBase):
        super().__init__()
        if not isinstance(module, torch.nn.RNNBase):
            raise ValueError(f"PackedRecurrent wraps an nn.RNN, nn.LSTM or nn.GRU, "
                             f"got {type(module).__name__}")
        self.rnn = module

    def forward(self, padded, lengths=None, hx=None):
        """Runs the module on a padded batch.

        Args:
          padded: [T, B, I] ([B, T, I] if batch_first).
          lengths: optional [B] ints in 1..T, any order; None runs the padded tensor as is.
          hx: optional initial state [L*D, B, H] (LSTM: a tuple (h_0, c_0)).

        Returns:
          (output [T, B, D*H] ([B, T, D*H] if batch_first), zero at padded positions;
           h_n [L*D, B, H] (LSTM: a tuple (h_n, c_n)), each sequence's state at its own end).
        """
        if lengths is None:
            return self.rnn(padded, hx)
        batch_first = self.rnn.batch_first
        total_length = padded.shape[1 if batch_first else 0]
        lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu()  # packing wants CPU lengths
        packed = pack_padded_sequence(padded, lengths, batch_first=batch_first,
                                      enforce_sorted=False)
        packed_output, h_n = self.rnn(packed, hx)
        output, _ = pad_packed_sequence(packed_output, batch_first=batch_first,
                                        total_length=total_length)
        return output, h_n


def PackedRNN(input_size: int, hidden_size: int, **kwargs) -> PackedRecurrent:
    """`PackedRecurrent(nn.RNN(input_size, hidden_size, **kwargs))`, e.g. nonlinearity="relu"."""
    return PackedRecurrent(torch.nn.RNN(input_size, hidden_size, **kwargs))


def PackedLSTM(input_size: int, hidden_size: int, **kwargs) -> PackedRecurrent:
    """`PackedRecurrent(nn.LSTM(input_size, hidden_size, **kwargs))`."""
    return PackedRecurrent(torch.nn.LSTM(input_size, hidden_size, **kwargs))


def PackedGRU(input_size: int, hidden_size: int, **kwargs) -> PackedRecurrent:
    """`PackedRecurrent(nn.GRU(input_size, hidden_size, **kwargs))`."""
    return PackedRecurrent(torch.nn.GRU(input_size, hidden_size, **kwargs))


def tutorial_part4(seed: int = 0, dtype=torch.float32) -> dict[str, np.ndarray]:
    """The tutorial's Part 4: uneven sequences through nn.RNN(1, 1) via packing.

    Three sequences, of lengths 4, 2 and 1, are padded with `pad_sequence` (time-major), packed
    with `pack_padded_sequence(enforce_sorted=False)`, run, padded back with
    `pad_packed_sequence`, and each sequence's final output is read at `output[lengths - 1, b]`.

    Returns:
      dict of numpy arrays:
        inputs: <float>[4, 3, 1] the padded batch,
        lengths: <int64>[3] = [4, 2, 1],
        weight_ih_l0, weight_hh_l0: <float>[1, 1]; bias_ih_l0, bias_hh_l0: <float>[1],
        output: <float>[4, 3, 1] the padded-back output (zero at padding),
        h_n: <float>[1, 3, 1],
        last_outputs: <float>[3, 1] output[lengths[b] - 1, b] for each b; equals h_n[0].
    """
    torch.manual_seed(seed)
    rnn = torch.nn.RNN(1, 1).to(dtype)
    sequences = [torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=dtype),
                 torch.tensor([[5.0], [6.0]], dtype=dtype),
                 torch.tensor([[7.0]], dtype=dtype)]
    lengths = torch.tensor([len(s) for s in sequences])
    padded = pad_sequence(sequences)  # [T=4, B=3, 1]
    with torch.no_grad():
        packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
        packed_output, h_n = rnn(packed)
        output, output_lengths = pad_packed_sequence(packed_output, total_length=padded.shape[0])
        last_outputs = output[lengths - 1, torch.arange(len(sequences))]  # [B, 1]
    assert output_lengths.tolist() == lengths.tolist()
    result = {"inputs": padded.numpy(), "lengths": lengths.numpy(), "output": output.numpy(),
              "h_n": h_n.numpy(), "last_outputs": last_outputs.numpy()}
    result.update({key: value.detach().numpy() for key, value in rnn.state_dict().items()})
    return result
