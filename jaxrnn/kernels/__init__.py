"""Fused CPU kernels (`jax.ffi`), built on first use, and the `Kernel` value a cell carries.

`lstm_cpu.cc` runs one LSTM direction's whole time loop, forward and backward, as one XLA
custom call each (see its header for the work split). `jaxrnn.cells.LSTM` carries it as its
`kernel`; `jaxrnn.Recurrent` decides when it is built whether its layers run it (`impl`
"kernel", or "auto" where it can run: the CPU backend, float32 / float64, the library built).
The pure-JAX custom-VJP layers of `jaxrnn.fast` are what runs everywhere else, and they stay
the reference the tests check the kernel against (besides PyTorch).

The library is compiled once per machine, source and jaxlib version with the system's C++
compiler (`$CXX`, else `c++`) into a cache folder, like torch.utils.cpp_extension.load:
$JAXRNN_KERNEL_CACHE, default ~/.cache/jaxrnn/kernels. If the build fails, the reason is kept
(`unavailable_reason`), impl="auto" warns once and runs the pure-JAX layers, and impl="kernel"
is an error that names it. The kernel needs no BLAS: its per-step GEMMs are its own (weights
packed once per call, a register-tiled micro-kernel per step).

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
import jaxlib
import numpy as np

SOURCE = Path(__file__).with_name("lstm_cpu.cc")
ENV_CACHE = "JAXRNN_KERNEL_CACHE"
DEFAULT_CACHE = Path("~/.cache/jaxrnn/kernels")
# -D__FAST_MATH__ makes glibc declare libmvec's vector exp / tanh, which GCC then calls from the
# vectorised loops; -ffast-math itself is not used (it would assume no NaN / inf, and linking
# it into a shared library sets flush-to-zero for the whole process).
CXXFLAGS = ("-std=c++17", "-O3", "-march=native", "-fPIC", "-pthread", "-fopenmp-simd",
            "-fno-math-errno", "-fno-trapping-math", "-D__FAST_MATH__", "-w")
DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

# The loaded library, or the reason it could not be built: tried once per process.
_LOADED: dict = {"library": None, "error": None}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A fused implementation of one cell's unmasked recurrence on the slab.

    Attributes:
      name: for messages, e.g. "lstm_cpu".
      run: (params, slab <float>[T, B, G*H], carry0, reverse: bool, parts: int) ->
        (ys <float>[T, B, H], carry_T); differentiable (a custom VJP).
      platform: the JAX backend it runs on.
      dtypes: the dtypes it computes in.
      load: () -> None, or the reason its code cannot be loaded here (e.g. a failed build);
        None: it needs nothing loaded.
    """

    name: str
    run: Callable
    platform: str = "cpu"
    dtypes: tuple = (np.dtype(np.float32), np.dtype(np.float64))
    load: Callable[[], str | None] | None = None

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


def load_library() -> str | None:
    """Builds and loads lstm_cpu.cc (once per process): None, or why it could not be."""
    return None if _library() is not None else _LOADED["error"]


def unavailable_reason() -> str | None:
    """Why the kernel library could not be loaded (None if it is loaded or never tried)."""
    return _LOADED["error"]


# ------------------------------------------------------------------------------- the calls


def lstm_forward(weight_hh, slab, h0, c0, reverse: bool, parts: int = 0):
    """One LSTM direction's forward loop.

    Args:
      weight_hh: <float>[4H, H]; slab: <float>[T, B, 4H] (x @ W_ih^T + biases);
      h0, c0: <float>[B, H]; reverse: run from t = T-1 down to 0.
      parts: split the hidden units into this many parts (0: one per thread of XLA's
        intra-op pool, at least 16 units each); parts beyond the threads run one after
        another, so tests can check uneven splits on any machine.

    Returns:
      (hs [T, B, H], cs [T, B, H], gates [T, B, 4H] activated, h_T [B, H], c_T [B, H]).
    """
    steps, batch, width = slab.shape
    hidden = width // 4
    states = jax.ShapeDtypeStruct((steps, batch, hidden), slab.dtype)
    final = jax.ShapeDtypeStruct((batch, hidden), slab.dtype)
    gates = jax.ShapeDtypeStruct(slab.shape, slab.dtype)
    # the gates overwrite the slab in place when XLA can give the slab's buffer (it is dead
    # after this call in a layer): one [T, B, 4H] array less (52 MB a layer at W3)
    call = jax.ffi.ffi_call(_target("forward", slab.dtype), (states, states, gates, final, final),
                            vmap_method="sequential", input_output_aliases={1: 2})
    return call(weight_hh, slab, h0, c0, reverse=np.int32(reverse), parts=np.int32(parts))


def lstm_backward(weight_hh, gates, cs, c0, d_hs, d_h_last, d_c_last, reverse: bool,
                  parts: int = 0):
    """One LSTM direction's backward loop: the residuals of `lstm_forward` and the cotangents
    (d_hs [T, B, H], d_h_last, d_c_last [B, H]) -> (da [T, B, 4H], dh0, dc0 [B, H]), where da is
    the gradient of the gates' pre-activations (= the slab's), written over the gates' buffer
    when XLA can give it."""
    batch, hidden = c0.shape
    final = jax.ShapeDtypeStruct((batch, hidden), gates.dtype)
    call = jax.ffi.ffi_call(_target("backward", gates.dtype),
                            (jax.ShapeDtypeStruct(gates.shape, gates.dtype), final, final),
                            vmap_method="sequential", input_output_aliases={1: 0})
    return call(weight_hh, gates, cs, c0, d_hs, d_h_last, d_c_last, reverse=np.int32(reverse),
                parts=np.int32(parts))


def _target(kind: str, dtype) -> str:
    return f"jaxrnn_lstm_{kind}_{DTYPES[np.dtype(dtype)]}"


# ------------------------------------------------------------------------------- build, load


def _library():
    """The loaded library (built if needed), or None with the reason kept; tried once."""
    if _LOADED["library"] is None and _LOADED["error"] is None:
        try:
            _LOADED["library"] = _load(build())
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


def build(directory: Path | None = None) -> Path:
    """Compiles lstm_cpu.cc into `directory` (default: cache_dir()) unless a build of the same
    source, flags, jaxlib and CPU is there; returns the library's path."""
    if sys.platform != "linux":
        raise RuntimeError(f"the kernels are built for Linux only, not {sys.platform}")
    directory = Path(directory or cache_dir())
    compiler = os.environ.get("CXX") or "c++"
    source = SOURCE.read_bytes()
    libmvec = platform.machine() == "x86_64"
    key = hashlib.sha256(b"\0".join([
        source, " ".join(CXXFLAGS).encode(), compiler.encode(), jax.ffi.include_dir().encode(),
        jaxlib.__version__.encode(), _cpu_flags().encode(), str(libmvec).encode()])).hexdigest()
    target = directory / f"lstm_cpu-{key[:20]}.so"
    if target.exists():
        return target
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH (set CXX)")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        obj, lib = Path(scratch, "lstm_cpu.o"), Path(scratch, "lstm_cpu.so")
        flags = list(CXXFLAGS) if libmvec else [f for f in CXXFLAGS if f != "-D__FAST_MATH__"]
        # compile and link separately: the link must not see -D__FAST_MATH__-like flags
        commands = [[compiler, *flags, f"-I{jax.ffi.include_dir()}", "-c", str(SOURCE), "-o",
                     str(obj)],
                    [compiler, "-shared", "-pthread", str(obj), "-o", str(lib),
                     *(["-lmvec"] if libmvec else []), "-lm"]]
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command[:2])} ... failed: "
                                   f"{done.stderr.strip()[-600:]}")
        os.replace(lib, target)  # atomic: a concurrent build writes the same bytes
    return target


def _load(path: Path):
    library = ctypes.CDLL(str(path))
    for kind in ("forward", "backward"):
        for dtype in DTYPES:
            name = _target(kind, dtype)
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)),
                                        platform="cpu")
    return library


__all__ = ["Kernel", "load_library", "unavailable_reason", "lstm_forward", "lstm_backward", "build",
           "cache_dir"]
