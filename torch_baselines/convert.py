"""Converting weights between PyTorch and jaxrnn: torch.nn.RNN / LSTM / GRU <-> `jaxrnn.Recurrent`,
and a whole character model, `TorchCharLM` <-> `jaxrnn.model.CharLM`.

jaxrnn keeps PyTorch's parameter layout and gate order, so conversion is a rename plus a check
of every key and shape. A PyTorch state_dict is flat; jaxrnn's params is a list over layers of
lists over directions of dicts:

  PyTorch state_dict key          jaxrnn params                 shape
  weight_ih_l{k}                  params[k][0]["weight_ih"]     [G*H, I_k]
  weight_hh_l{k}                  params[k][0]["weight_hh"]     [G*H, H]
  bias_ih_l{k}                    params[k][0]["bias_ih"]       [G*H]      (bias=True only)
  bias_hh_l{k}                    params[k][0]["bias_hh"]       [G*H]      (bias=True only)
  weight_ih_l{k}_reverse, ...     params[k][1][...]             (bidirectional only)

with G = 1 (RNN), 4 (LSTM, gates i, f, g, o) or 3 (GRU, gates r, z, n), I_0 = input_size and
I_k = D * H for k > 0 (D = 2 if bidirectional). `nn.RNN(nonlinearity="tanh" | "relu")` maps to
mode "rnn_tanh" | "rnn_relu". `nn.LSTM(proj_size > 0)` has no jaxrnn counterpart and is refused,
and jaxrnn's "mingru" / "minlstm" (`jaxrnn.mincells`) have no PyTorch counterpart and are refused.

Dtypes are kept: a float64 module gives float64 jax arrays (this needs `jax_enable_x64`; without
it, pass `dtype=jnp.float32` to convert explicitly instead of truncating silently).
`params_from_state_dict` / `params_to_state_dict` do the rename alone, between jaxrnn params and
a flat {PyTorch key: array} dict (numpy out, e.g. for `np.savez`; torch or numpy in).

A CharLM's params add "embedding" [V, E] (absent when one-hot) and "head" {weight [V, H],
bias [V]} around "rnn" (the Recurrent params above); as a TorchCharLM state_dict they are
embedding.weight, rnn.<PyTorch key> and head.weight / head.bias (`charlm_state_dict`).

  >>> rnn, params = from_torch(torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True))
  >>> module = to_torch(rnn, params)            # an equal nn.LSTM
  >>> model, params = charlm_from_torch(TorchCharLM(65, "lstm", 128))  # a CharLM, equal weights
  >>> module = charlm_to_torch(params, model)   # and back
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import importlib

from jaxrnn.engine import Recurrent
from jaxrnn.names import NUM_GATES, TORCH_CELLS

_PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_DTYPE_NAMES = ("bfloat16", "float16", "float32", "float64")


def _torch():
    """torch, imported on first use: the renames between jaxrnn params and PyTorch-named numpy
    arrays (params_to_state_dict, charlm_state_dict, ...; jaxrnn.export) need no torch."""
    return importlib.import_module("torch")


def _torch_model():
    return importlib.import_module("torch_baselines.model")


def torch_key(name: str, layer: int, direction: int) -> str:
    """jaxrnn's (name, layer, direction) -> PyTorch's state_dict key, e.g. weight_hh_l1_reverse."""
    return f"{name}_l{layer}{'_reverse' if direction == 1 else ''}"


def expected_shapes(rnn: Recurrent) -> dict[str, tuple[int, ...]]:
    """PyTorch state_dict key -> shape, for a `Recurrent` whose mode has a PyTorch module
    (`jaxrnn.names.TORCH_CELLS`); every conversion below checks through this."""
    if isinstance(rnn.mode, str) and rnn.mode in NUM_GATES and rnn.mode not in TORCH_CELLS:
        raise ValueError(f"mode {rnn.mode!r} has no PyTorch counterpart (no torch.nn module "
                         f"computes it), so it does not convert; only the modes "
                         f"{sorted(TORCH_CELLS)} do")
    if not isinstance(rnn.mode, str) or rnn.mode not in TORCH_CELLS:
        raise ValueError(f"only the built-in modes {sorted(TORCH_CELLS)} have a PyTorch "
                         f"counterpart, got mode {rnn.mode!r}")
    gates_hidden = NUM_GATES[rnn.mode] * rnn.hidden_size
    shapes = {}
    for layer in range(rnn.num_layers):
        for direction in range(rnn.num_directions):
            per_name = {"weight_ih": (gates_hidden, rnn.layer_input_size(layer)),
                        "weight_hh": (gates_hidden, rnn.hidden_size)}
            if rnn.bias:
                per_name.update(bias_ih=(gates_hidden,), bias_hh=(gates_hidden,))
            for name, shape in per_name.items():
                shapes[torch_key(name, layer, direction)] = shape
    return shapes


def _check_keys_and_shapes(want: dict, got: dict, what: str) -> None:
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    if missing or unexpected:
        raise ValueError(f"{what}: missing keys {missing}, unexpected keys {unexpected} "
                         f"(expected exactly {sorted(want)})")
    for key, shape in want.items():
        got_shape = tuple(got[key].shape)
        if got_shape != tuple(shape):
            raise ValueError(f"{what}: {key!r} must have shape {tuple(shape)}, got {got_shape}")


def _to_numpy(value) -> np.ndarray:
    # A copy, never a view: jnp.asarray can wrap an aligned host buffer without copying on CPU,
    # so a view would let later in-place updates of the tensor (optimizer.step) change the jax
    # params too.
    if type(value).__module__.startswith("torch"):  # a torch.Tensor (torch is imported then)
        torch = _torch()
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16: go through float32, exactly
            return value.float().numpy().astype(jnp.bfloat16)
        return value.numpy().copy()
    return np.array(value)


def _jax_dtype(numpy_dtype, dtype):
    """The dtype the jax arrays get: `dtype` if given, else the source dtype (checked vs x64)."""
    if dtype is not None:
        return jnp.dtype(dtype)
    if np.dtype(numpy_dtype).itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(f"the weights are {np.dtype(numpy_dtype)} but jax_enable_x64 is off; "
                         f"enable x64 to keep them, or pass dtype=jnp.float32 to convert")
    return jnp.dtype(numpy_dtype)


def params_from_state_dict(rnn: Recurrent, state_dict, dtype=None):
    """PyTorch-named arrays (torch tensors or numpy) -> jaxrnn params, checking every key/shape.

    Args:
      rnn: the `Recurrent` the params are for (built-in mode).
      state_dict: mapping from PyTorch keys (`weight_ih_l0`, ...) to arrays.
      dtype: the jax dtype to convert to; default keeps each array's dtype.

    Returns:
      params: list over layers of lists over directions of dicts, `rnn.init`'s layout.
    """
    arrays = {key: _to_numpy(value) for key, value in state_dict.items()}
    _check_keys_and_shapes(expected_shapes(rnn), arrays, "state_dict")
    params = []
    for layer in range(rnn.num_layers):
        directions = []
        for direction in range(rnn.num_directions):
            entry = {}
            for name in _PARAM_NAMES:
                key = torch_key(name, layer, direction)
                if key in arrays:
                    entry[name] = jnp.asarray(arrays[key],
                                              _jax_dtype(arrays[key].dtype, dtype))
            directions.append(entry)
        params.append(directions)
    return params


def params_to_state_dict(rnn: Recurrent, params) -> dict[str, np.ndarray]:
    """jaxrnn params -> {PyTorch key: numpy array}, checking every key and shape.

    The result is flat and named, ready for `np.savez` or `torch.from_numpy`.
    """
    want = expected_shapes(rnn)
    if not isinstance(params, (list, tuple)) or len(params) != rnn.num_layers:
        got = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(f"params must be a list of {rnn.num_layers} layers, got {got}")
    flat = {}
    for layer, directions in enumerate(params):
        if not isinstance(directions, (list, tuple)) or len(directions) != rnn.num_directions:
            raise ValueError(f"params[{layer}] must be a list of {rnn.num_directions} "
                             f"direction dicts")
        for direction, entry in enumerate(directions):
            if not isinstance(entry, dict):
                raise ValueError(f"params[{layer}][{direction}] must be a dict, "
                                 f"got {type(entry).__name__}")
            for name, value in entry.items():
                flat[torch_key(name, layer, direction)] = np.asarray(value)
    _check_keys_and_shapes(want, flat, "params (as PyTorch keys)")
    return flat


def from_torch(module: "torch.nn.Module", dtype=None, impl: str = "auto"):
    """nn.RNN / nn.LSTM / nn.GRU -> (Recurrent, params) with the same configuration and weights.

    Args:
      module: the PyTorch module; `nn.LSTM(proj_size > 0)` is refused.
      dtype: the jax dtype of params; default keeps the module's dtype (float64 needs x64).
      impl: the returned Recurrent's implementation (jaxrnn.engine; "auto" by default).

    Returns:
      (rnn, params): `rnn.apply(params, x, hx, lengths)` equals the module on the same inputs.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.RNNBase) or module.mode not in (
            "RNN_TANH", "RNN_RELU", "LSTM", "GRU"):
        raise ValueError(f"from_torch needs an nn.RNN, nn.LSTM or nn.GRU, "
                         f"got {type(module).__name__}")
    if getattr(module, "proj_size", 0) > 0:
        raise ValueError(f"nn.LSTM with proj_size={module.proj_size} (a projected LSTM) has no "
                         f"jaxrnn counterpart; only proj_size=0 converts")
    rnn = Recurrent(mode=module.mode.lower(), input_size=module.input_size,
                    hidden_size=module.hidden_size, num_layers=module.num_layers,
                    bias=module.bias, batch_first=module.batch_first,
                    dropout=float(module.dropout), bidirectional=module.bidirectional,
                    impl=impl)
    return rnn, params_from_state_dict(rnn, module.state_dict(), dtype)


def to_torch(rnn: Recurrent, params) -> "torch.nn.Module":
    """(Recurrent, params) -> an nn.RNN / nn.LSTM / nn.GRU with the same configuration and weights.

    The module's dtype is the params' dtype (float64, float32, float16 or bfloat16). It is in
    training mode, as a freshly built module is (dropout acts only in training mode).
    """
    flat = params_to_state_dict(rnn, params)
    dtypes = sorted({str(a.dtype) for a in flat.values()})
    if len(dtypes) != 1 or dtypes[0] not in _DTYPE_NAMES:
        raise ValueError(f"params must all have one dtype out of {sorted(_DTYPE_NAMES)}, "
                         f"got {dtypes}")
    torch = _torch()
    kwargs = dict(input_size=rnn.input_size, hidden_size=rnn.hidden_size,
                  num_layers=rnn.num_layers, bias=rnn.bias, batch_first=rnn.batch_first,
                  dropout=rnn.dropout, bidirectional=rnn.bidirectional)
    torch_class, extra = _torch_model().RNN_CLASSES[rnn.mode]
    module = torch_class(**kwargs, **extra)
    torch_dtype = getattr(torch, dtypes[0])
    module = module.to(torch_dtype)
    # torch.from_numpy knows no bfloat16; float32 holds every bfloat16 value exactly.
    tensors = {key: torch.from_numpy(np.array(value, np.float32 if dtypes[0] == "bfloat16"
                                              else value.dtype)).to(torch_dtype)
               for key, value in flat.items()}
    module.load_state_dict(tensors, strict=True)
    return module


# ---------------------------------------------------------------------------- the char model


def _charlm_expected_shapes(model) -> dict[str, tuple[int, ...]]:
    """TorchCharLM state_dict key -> shape, for a jaxrnn CharLM."""
    shapes = {f"rnn.{k}": v for k, v in expected_shapes(model.rnn).items()}
    if model.embedding_size:
        shapes["embedding.weight"] = (model.vocab_size, model.embedding_size)
    shapes["head.weight"] = (model.vocab_size, model.hidden_size)
    shapes["head.bias"] = (model.vocab_size,)
    return shapes


def charlm_state_dict(params, model) -> dict[str, np.ndarray]:
    """jaxrnn CharLM params -> {TorchCharLM state_dict key: numpy array}, keys/shapes checked."""
    top = {"rnn", "head"} | ({"embedding"} if model.embedding_size else set())
    if set(params) != top or set(params["head"]) != {"weight", "bias"}:
        raise ValueError(f"CharLM params must have keys {sorted(top)} with head {{weight, bias}}"
                         f"; got {sorted(params)}")
    flat = {f"rnn.{k}": v for k, v in params_to_state_dict(model.rnn, params["rnn"]).items()}
    if model.embedding_size:
        flat["embedding.weight"] = np.asarray(params["embedding"])
    flat["head.weight"] = np.asarray(params["head"]["weight"])
    flat["head.bias"] = np.asarray(params["head"]["bias"])
    _check_keys_and_shapes(_charlm_expected_shapes(model), flat,
                           "CharLM params (as TorchCharLM keys)")
    return flat


def charlm_to_torch(params, model) -> "TorchCharLM":
    """(jaxrnn CharLM params, CharLM) -> a TorchCharLM with the same weights and dtype."""
    flat = charlm_state_dict(params, model)
    dtypes = {a.dtype for a in flat.values()}
    if len(dtypes) != 1:
        raise ValueError(f"params must all have one dtype, got {sorted(map(str, dtypes))}")
    torch, torch_model = _torch(), _torch_model()
    module = torch_model.TorchCharLM(model.vocab_size, model.cell, model.hidden_size,
                                     model.num_layers, model.embedding_size, model.dropout)
    module = module.to(torch_model.TORCH_DTYPES[np.dtype(dtypes.pop()).name])
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in flat.items()},
                           strict=True)
    return module


def charlm_from_torch(module: "TorchCharLM", dtype=None, impl: str = "auto"):
    """TorchCharLM -> (jaxrnn CharLM, params) with the same weights.

    dtype: the jax dtype of params; default keeps the module's (float64 needs jax_enable_x64).
    The CharLM's cell is the module's canonical name (jaxrnn.names), e.g. "rnn_tanh";
    impl: its engine's implementation (jaxrnn.engine; "auto" by default).
    """
    from jaxrnn.model import CharLM

    state = {k: _to_numpy(v) for k, v in module.state_dict().items()}  # copies, see _to_numpy
    jax_dtype = _jax_dtype(np.float64 if module.dtype == _torch().float64 else np.float32,
                           dtype)
    model = CharLM(module.vocab_size, module.cell, module.hidden_size, module.num_layers,
                   module.embedding_size, module.dropout_rate, dtype=jax_dtype.name, impl=impl)
    _check_keys_and_shapes(_charlm_expected_shapes(model), state, "TorchCharLM state_dict")
    rnn_state = {k[len("rnn."):]: v for k, v in state.items() if k.startswith("rnn.")}
    params = {"rnn": params_from_state_dict(model.rnn, rnn_state, jax_dtype),
              "head": {"weight": jnp.asarray(state["head.weight"], jax_dtype),
                       "bias": jnp.asarray(state["head.bias"], jax_dtype)}}
    if module.embedding_size:
        params["embedding"] = jnp.asarray(state["embedding.weight"], jax_dtype)
    return model, params


def charlm_params_from_state_dict(model, state_dict, dtype=None):
    """{TorchCharLM state_dict key: array} (torch or numpy) -> jaxrnn CharLM params.

    The inverse of `charlm_state_dict`, without building a torch module (e.g. for arrays read
    from a safetensors file); every key and shape is checked against `model` (ValueError
    naming the keys). dtype: the jax dtype; default keeps the arrays' (float64 needs x64).
    """
    arrays = {key: _to_numpy(value) for key, value in state_dict.items()}
    _check_keys_and_shapes(_charlm_expected_shapes(model), arrays, "state_dict")
    jax_dtype = _jax_dtype(arrays["head.weight"].dtype, dtype)
    rnn_state = {k[len("rnn."):]: v for k, v in arrays.items() if k.startswith("rnn.")}
    params = {"rnn": params_from_state_dict(model.rnn, rnn_state, jax_dtype),
              "head": {"weight": jnp.asarray(arrays["head.weight"], jax_dtype),
                       "bias": jnp.asarray(arrays["head.bias"], jax_dtype)}}
    if model.embedding_size:
        params["embedding"] = jnp.asarray(arrays["embedding.weight"], jax_dtype)
    return params
