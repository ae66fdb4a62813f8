"""Fused CPU kernels (`jax.ffi`), built on first use, and the `Kernel` value a cell carries.

`lstm_cpu.cc`, `gru_cpu.cc` and `rnn_cpu.cc` (tanh and ReLU) run one direction's whole time
loop, forward and backward, as one XLA custom call each; `support.cc` is what they share (the
per-step GEMM, the threads, the layout; see its header). The built-in cells of `jaxrnn.cells`
carry them as their `kernel`; `jaxrnn.Recurrent` decides when it is built whether its layers
run them (`impl` "kernel", or "auto" where they can run: the CPU backend, float32 / float64,
the library built). Every call takes the sequences' lengths: a padded step keeps the carry
(the masked semantics of `jaxrnn.engine.run_direction`), so one kernel serves padded and
packed batches. Under `jax.vmap` (a sweep's members, each with its own weights) a call stays
one custom call over the leading members axis (`vmap_method="broadcast_all"`), its threads
shared between members x parts of the hidden units. The pure-JAX custom-VJP layers of
`jaxrnn.fast` are what runs everywhere else, and they stay the reference the tests check the
kernels against (besides PyTorch).

The library is compiled once per machine, source, instruction set and jaxlib version with the
system's C++ compiler (`$CXX`, else `c++`) into a cache folder, like
torch.utils.cpp_extension.load: $JAXRNN_KERNEL_CACHE, default ~/.cache/jaxrnn/kernels. If the
build fails, the reason is kept (`unavailable_reason`), impl="auto" warns once and runs the
pure-JAX layers, and impl="kernel" is an error that names it. The kernels need no BLAS: their
per-step GEMMs are their own (weights packed once per call, a register-tiled micro-kernel per
step), built for the machine's CPU (`-march=native`); `load_library(isa="no-avx512")` builds
them without AVX-512 instead, to measure the path other x86-64 CPUs run.

Nothing here is a switch: the library's load state is a cache of a fact about this machine.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

HERE = Path(__file__).parent
# each compiled on its own and linked into one library; support.cc is included by all three
SOURCES = tuple(HERE / name for name in ("lstm_cpu.cc", "gru_cpu.cc", "rnn_cpu.cc"))
SHARED_SOURCES = (HERE / "support.cc",)
ENV_CACHE = "JAXRNN_KERNEL_CACHE"
DEFAULT_CACHE = Path("~/.cache/jaxrnn/kernels")
# -D__FAST_MATH__ makes glibc declare libmvec's vector exp / tanh, which GCC then calls from the
# vectorised loops; -ffast-math itself is not used (it would assume no NaN / inf, and linking
# it into a shared library sets flush-to-zero for the whole process).
CXXFLAGS = ("-std=c++17", "-O3", "-march=native", "-fPIC", "-pthread", "-fopenmp-simd",
            "-fno-math-errno", "-fno-trapping-math", "-D__FAST_MATH__", "-w")
# The instruction sets the library can be built for: the machine's own, or the same without
# AVX-512 (the GEMM then tiles 4 rows of two AVX2 registers instead of 8 rows of one AVX-512).
ISAS = {"native": (), "no-avx512": ("-mno-avx512f",)}
DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
# the cell families of the library's targets, jaxrnn_<family>_<forward|backward>_<f32|f64>
FAMILIES = ("lstm", "gru", "rnn_tanh", "rnn_relu")

# The loaded library and its isa, or the reason it could not be built: tried once per process.
_LOADED: dict = {"library": None, "error": None, "isa": None}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A fused implementation of one cell's recurrence on the slab.

    Attributes:
      name: for messages, e.g. "lstm_cpu".
      run: (params, slab <float>[T, B, G*H], carry0, reverse: bool, parts: int,
        lengths <int>[B] | None) -> (ys <float>[T, B, H], carry_T); differentiable (a custom
        VJP). With lengths, the masked semantics of `jaxrnn.engine.run_direction`: ys is zero
        at padded steps, carry_T each sequence's carry after its own last element.
      platform: the JAX backend it runs on.
      dtypes: the dtypes it computes in.
      load: () -> None, or the reason its code cannot be loaded here (e.g. a failed build);
        None: it needs nothing loaded.
      takes_lengths: whether `run` takes lengths (else the engine runs the masked reference
        scan for calls with lengths).
    """

    name: str
    run: Callable
    platform: str = "cpu"
    dtypes: tuple = (np.dtype(np.float32), np.dtype(np.float64))
    load: Callable[[], str | None] | None = None
    takes_lengths: bool = False

    def unavailable_reason(self, dtype=None) -> str | None:
        """Why this kernel cannot run here (for `dtype`, if given), or None if it can."""
        backend = jax.default_backend()
        if backend != self.platform:
            return f"the {self.name} kernel runs on the {self.platform} backend, not {backend}"
        if dtype is not None and np.dtype(dtype) not in self.dtypes:
            return (f"the {self.name} kernel computes in "
                    f"{', '.join(d.name for d in self.dtypes)}, not {np.dtype(dtype).name}")
        problem = self.load() if self.load is not None else None
        if problem is not None:
            return f"the {self.name} kernel could not be built: {problem}"
        return None


def load_library(isa: str | None = None) -> str | None:
    """Builds and loads the kernels (once per process): None, or why they could not be.

    isa: "native" (the machine's instruction set, the default) or "no-avx512". The first call
    of the process decides; asking a loaded library for another isa is a ValueError (a caller
    that wants "no-avx512" calls this before building any network).
    """
    if isa is not None and isa not in ISAS:
        raise ValueError(f"isa must be one of {', '.join(map(repr, ISAS))}, got {isa!r}")
    tried = _LOADED["library"] is not None or _LOADED["error"] is not None
    if isa is not None and tried and isa != _LOADED["isa"]:
        raise ValueError(f"the kernels are already loaded for isa={_LOADED['isa']!r} in this "
                         f"process; isa={isa!r} must be asked for before any kernel is used")
    return None if _library(isa or "native") is not None else _LOADED["error"]


def loaded_isa() -> str | None:
    """The isa the library was built for in this process (None before it is tried)."""
    return _LOADED["isa"]


def gemm_row_tile() -> int | None:
    """The loaded library's GEMM row tile: 8 on its AVX-512 path, 4 without (None if not
    loaded)."""
    library = _LOADED["library"]
    return None if library is None else int(library.jaxrnn_gemm_row_tile())


def unavailable_reason() -> str | None:
    """Why the kernel library could not be loaded (None if it is loaded or never tried)."""
    return _LOADED["error"]


# ------------------------------------------------------------------------------- the calls
#
# Every call takes lengths <int32>[B] (a padded step keeps the carry; `full_lengths` for a batch
# without padding) and returns the carried states, which the wrappers of jaxrnn.fast zero at
# padded steps. vmap_method="broadcast_all": under jax.vmap every operand gets the same leading
# members axis and the call stays one custom call (the C++ side loops over the members).


def full_lengths(slab):
    """<int32>[B], every sequence T long: the lengths of an unpadded slab [T, B, ...]."""
    return jnp.full(slab.shape[1:2], slab.shape[0], jnp.int32)


def _call(family, kind, dtype, results, aliases, *operands, reverse, parts):
    call = jax.ffi.ffi_call(_target(family, kind, dtype), results,
                            vmap_method="broadcast_all", input_output_aliases=aliases)
    return call(*operands, reverse=np.int32(reverse), parts=np.int32(parts))


def _like(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def lstm_forward(weight_hh, slab, h0, c0, lengths, reverse: bool, parts: int = 0):
    """One LSTM direction's forward loop.

    Args:
      weight_hh: <float>[4H, H]; slab: <float>[T, B, 4H] (x @ W_ih^T + biases);
      h0, c0: <float>[B, H]; lengths: <int32>[B]; reverse: run from t = T-1 down to 0.
      parts: split the hidden units into this many parts (0: one per thread of XLA's
        intra-op pool, at least 16 units each); parts beyond the threads run one after
        another, so tests can check uneven splits on any machine.

    Returns:
      (hs [T, B, H], cs [T, B, H], gates [T, B, 4H] activated, h_T [B, H], c_T [B, H]); hs
      and cs carry the state through padded steps.
    """
    steps, batch, _ = slab.shape
    states = _like((steps, batch, h0.shape[-1]), slab.dtype)
    final = _like(h0.shape, slab.dtype)
    # the gates overwrite the slab in place when XLA can give the slab's buffer (it is dead
    # after this call in a layer): one [T, B, 4H] array less (52 MB a layer at W3)
    return _call("lstm", "forward", slab.dtype,
                 (states, states, _like(slab.shape, slab.dtype), final, final), {1: 2},
                 weight_hh, slab, h0, c0, lengths, reverse=reverse, parts=parts)


def lstm_backward(weight_hh, gates, cs, c0, lengths, d_hs, d_h_last, d_c_last, reverse: bool,
                  parts: int = 0):
    """One LSTM direction's backward loop: the residuals of `lstm_forward` and the cotangents
    (d_hs [T, B, H], d_h_last, d_c_last [B, H]) -> (da [T, B, 4H], dh0, dc0 [B, H]), where da is
    the gradient of the gates' pre-activations (= the slab's), written over the gates' buffer
    when XLA can give it."""
    final = _like(c0.shape, gates.dtype)
    return _call("lstm", "backward", gates.dtype, (_like(gates.shape, gates.dtype), final, final),
                 {1: 0}, weight_hh, gates, cs, c0, lengths, d_hs, d_h_last, d_c_last,
                 reverse=reverse, parts=parts)


def gru_forward(weight_hh, bias_hn, slab, h0, lengths, reverse: bool, parts: int = 0):
    """One GRU direction's forward loop (PyTorch's equations, b_hn inside r * (...)).

    Args:
      weight_hh: <float>[3H, H]; bias_hn: <float>[H] (zeros without bias);
      slab: <float>[T, B, 3H] (x @ W_ih^T + b_ih + [b_hr, b_hz, 0]); h0: <float>[B, H];
      lengths: <int32>[B]; reverse, parts: as `lstm_forward`.

    Returns:
      (hs [T, B, H], gates [T, B, 3H] activated r, z, n, hn [T, B, H] = W_hn h + b_hn,
      h_T [B, H]).
    """
    steps, batch, _ = slab.shape
    states = _like((steps, batch, h0.shape[-1]), slab.dtype)
    return _call("gru", "forward", slab.dtype,
                 (states, _like(slab.shape, slab.dtype), states, _like(h0.shape, slab.dtype)),
                 {2: 1}, weight_hh, bias_hn, slab, h0, lengths, reverse=reverse, parts=parts)


def gru_backward(weight_hh, gates, hn, hs, h0, lengths, d_hs, d_h_last, reverse: bool,
                 parts: int = 0):
    """One GRU direction's backward loop -> (da [T, B, 3H], dn [T, B, H], dh0 [B, H]): da is the
    gradient of [W_hr h + b_hr, W_hz h + b_hz, W_hn h + b_hn] (what multiplies W_hh and h_prev),
    dn that of the n gate's pre-activation; the slab's gradient is [da_r, da_z, dn]."""
    return _call("gru", "backward", gates.dtype,
                 (_like(gates.shape, gates.dtype), _like(hs.shape, gates.dtype),
                  _like(h0.shape, gates.dtype)), {1: 0},
                 weight_hh, gates, hn, hs, h0, lengths, d_hs, d_h_last, reverse=reverse,
                 parts=parts)


def rnn_forward(activation: str, weight_hh, slab, h0, lengths, reverse: bool, parts: int = 0):
    """One Elman RNN direction's forward loop, activation "tanh" or "relu": slab [T, B, H]
    (x @ W_ih^T + b_ih + b_hh), h0 [B, H], lengths [B] -> (hs [T, B, H], h_T [B, H]); hs is
    written over the slab's buffer when XLA can give it."""
    return _call(f"rnn_{activation}", "forward", slab.dtype,
                 (_like(slab.shape, slab.dtype), _like(h0.shape, slab.dtype)), {1: 0},
                 weight_hh, slab, h0, lengths, reverse=reverse, parts=parts)


def rnn_backward(activation: str, weight_hh, hs, lengths, d_hs, d_h_last, reverse: bool,
                 parts: int = 0):
    """The backward of `rnn_forward` -> (da [T, B, H] the slab's gradient, dh0 [B, H]); da is
    written over d_hs's buffer when XLA can give it."""
    return _call(f"rnn_{activation}", "backward", hs.dtype,
                 (_like(hs.shape, hs.dtype), _like(d_h_last.shape, hs.dtype)), {3: 0},
                 weight_hh, hs, lengths, d_hs, d_h_last, reverse=reverse, parts=parts)


def _target(family: str, kind: str, dtype) -> str:
    return f"jaxrnn_{family}_{kind}_{DTYPES[np.dtype(dtype)]}"


# ------------------------------------------------------------------------------- build, load


def _library(isa: str = "native"):
    """The loaded library (built for `isa` if needed), or None with the reason kept; tried
    once."""
    if _LOADED["library"] is None and _LOADED["error"] is None:
        _LOADED["isa"] = isa
        try:
            _LOADED["library"] = _load(build(isa=isa))
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _LOADED["error"] = str(error)
            warnings.warn(f"jaxrnn: the fused CPU kernels are unavailable ({error}); "
                          f"impl='auto' runs the pure-JAX layers instead (impl='fast' does "
                          f"so without trying the kernels)", RuntimeWarning, stacklevel=3)
    return _LOADED["library"]


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or DEFAULT_CACHE).expanduser()


def _cpu_flags() -> str:
    """The CPU's feature flags (-march=native compiles for them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build(directory: Path | None = None, isa: str = "native") -> Path:
    """Compiles the kernels' sources into one library in `directory` (default: cache_dir())
    unless a build of the same sources, flags, isa, jaxlib and CPU is there; returns its
    path."""
    if sys.platform != "linux":
        raise RuntimeError(f"the kernels are built for Linux only, not {sys.platform}")
    directory = Path(directory or cache_dir())
    compiler = os.environ.get("CXX") or "c++"
    libmvec = platform.machine() == "x86_64"
    flags = list(CXXFLAGS) if libmvec else [f for f in CXXFLAGS if f != "-D__FAST_MATH__"]
    flags += ISAS[isa]
    key = hashlib.sha256(b"\0".join([
        *(path.read_bytes() for path in SOURCES + SHARED_SOURCES), " ".join(flags).encode(),
        compiler.encode(), jax.ffi.include_dir().encode(), jaxlib.__version__.encode(),
        _cpu_flags().encode(), str(libmvec).encode()])).hexdigest()
    target = directory / f"cpu_kernels-{isa}-{key[:20]}.so"
    if target.exists():
        return target
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH (set CXX)")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        objects = [Path(scratch, source.stem + ".o") for source in SOURCES]
        lib = Path(scratch, "cpu_kernels.so")
        # each source compiled on its own (at once), then linked: the link must not see
        # -D__FAST_MATH__-like flags
        compiles = [[compiler, *flags, f"-I{jax.ffi.include_dir()}", "-c", str(source), "-o",
                     str(obj)] for source, obj in zip(SOURCES, objects)]
        running = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True) for command in compiles]
        for command, process in zip(compiles, running):
            _, stderr = process.communicate(timeout=300)
            _check(command, process.returncode, stderr)
        link = [compiler, "-shared", "-pthread", *map(str, objects), "-o", str(lib),
                *(["-lmvec"] if libmvec else []), "-lm"]
        done = subprocess.run(link, capture_output=True, text=True, timeout=300)
        _check(link, done.returncode, done.stderr)
        os.replace(lib, target)  # atomic: a concurrent build writes the same bytes
    return target


def _check(command, returncode, stderr):
    if returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} ... failed: {stderr.strip()[-600:]}")


def _load(path: Path):
    library = ctypes.CDLL(str(path))
    for family in FAMILIES:
        for kind in ("forward", "backward"):
            for dtype in DTYPES:
                name = _target(family, kind, dtype)
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)),
                                            platform="cpu")
    return library


__all__ = ["Kernel", "ISAS", "load_library", "loaded_isa", "gemm_row_tile", "unavailable_reason",
           "full_lengths", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
           "rnn_forward", "rnn_backward", "build", "cache_dir"]
