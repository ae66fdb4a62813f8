"""Fused CPU kernels behind the fast layers (`jax.ffi`), built on first use.

`lstm_cpu.cc` runs one LSTM direction's whole time loop, forward and backward, as one XLA
custom call each (see its header for the work split). `jaxrnn.fast` uses it for float32 and
float64 LSTM layers when JAX runs on the CPU; everywhere else, and whenever the kernel cannot be
built, the pure-JAX custom-VJP layers run, and they stay the reference the tests check it
against (besides PyTorch).

The library is compiled once per machine, source and jaxlib version with the system's C++
compiler (`$CXX`, else `c++`) into a cache folder, like torch.utils.cpp_extension.load:

  JAXRNN_CPU_KERNELS    auto (default) | off
  JAXRNN_KERNEL_CACHE   the folder for the compiled library (default ~/.cache/jaxrnn/kernels)

If the build fails, one warning says why and the pure-JAX layers run. The kernel needs no
BLAS: its per-step GEMMs are its own (weights packed once per call, a register-tiled
micro-kernel per step).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import jax
import jaxlib
import numpy as np

SOURCE = Path(__file__).with_name("lstm_cpu.cc")
ENV_SWITCH = "JAXRNN_CPU_KERNELS"
ENV_CACHE = "JAXRNN_KERNEL_CACHE"
DEFAULT_CACHE = Path("~/.cache/jaxrnn/kernels")
# -D__FAST_MATH__ makes glibc declare libmvec's vector exp / tanh, which GCC then calls from the
# vectorised loops; -ffast-math itself is not used (it would assume no NaN / inf, and linking
# it into a shared library sets flush-to-zero for the whole process).
CXXFLAGS = ("-std=c++17", "-O3", "-march=native", "-fPIC", "-pthread", "-fopenmp-simd",
            "-fno-math-errno", "-fno-trapping-math", "-D__FAST_MATH__", "-w")
DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

_state: dict = {"library": None, "error": None, "enabled": None}


# ------------------------------------------------------------------------------- switches


def set_enabled(flag: bool | None) -> None:
    """Turns the kernels on (True), off (False) or back to $JAXRNN_CPU_KERNELS (None).

    Layers decide when they are traced: jit a function again after changing this."""
    _state["enabled"] = flag


def set_parts(parts: int) -> None:
    """Splits the hidden units into this many parts (0, the default: one per thread of XLA's
    intra-op pool, at least 16 units each). Parts beyond the threads run one after another;
    tests use this to check uneven splits on any machine. Takes effect at the next call."""
    library = _library()
    if library is not None:
        library.jaxrnn_set_parts(int(parts))


def enabled(dtype) -> bool:
    """Whether a layer of this dtype traced now runs the kernel: CPU backend, float32 or
    float64, not switched off, and the library built and loaded."""
    flag = _state["enabled"]
    if flag is None:
        flag = os.environ.get(ENV_SWITCH, "auto").lower() not in ("off", "0", "false", "no")
    if not flag or np.dtype(dtype) not in DTYPES or jax.default_backend() != "cpu":
        return False
    return _library() is not None


def unavailable_reason() -> str | None:
    """Why the kernels could not be loaded (None if they are loaded or were never tried)."""
    return _state["error"]


# ------------------------------------------------------------------------------- the calls


def lstm_forward(weight_hh, slab, h0, c0, reverse: bool):
    """One LSTM direction's forward loop.

    Args:
      weight_hh: <float>[4H, H]; slab: <float>[T, B, 4H] (x @ W_ih^T + biases);
      h0, c0: <float>[B, H]; reverse: run from t = T-1 down to 0.

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
    return call(weight_hh, slab, h0, c0, reverse=np.int32(reverse))


def lstm_backward(weight_hh, gates, cs, c0, d_hs, d_h_last, d_c_last, reverse: bool):
    """One LSTM direction's backward loop: the residuals of `lstm_forward` and the cotangents
    (d_hs [T, B, H], d_h_last, d_c_last [B, H]) -> (da [T, B, 4H], dh0, dc0 [B, H]), where da is
    the gradient of the gates' pre-activations (= the slab's), written over the gates' buffer
    when XLA can give it."""
    batch, hidden = c0.shape
    final = jax.ShapeDtypeStruct((batch, hidden), gates.dtype)
    call = jax.ffi.ffi_call(_target("backward", gates.dtype),
                            (jax.ShapeDtypeStruct(gates.shape, gates.dtype), final, final),
                            vmap_method="sequential", input_output_aliases={1: 0})
    return call(weight_hh, gates, cs, c0, d_hs, d_h_last, d_c_last, reverse=np.int32(reverse))


def _target(kind: str, dtype) -> str:
    return f"jaxrnn_lstm_{kind}_{DTYPES[np.dtype(dtype)]}"


# ------------------------------------------------------------------------------- build, load


def _library():
    """The loaded library (built if needed), or None with _state["error"] set; tried once."""
    if _state["library"] is None and _state["error"] is None:
        try:
            _state["library"] = _load(build())
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _state["error"] = str(error)
            warnings.warn(f"jaxrnn: the fused CPU kernels are unavailable ({error}); the "
                          f"pure-JAX layers run instead (set {ENV_SWITCH}=off to silence this)",
                          RuntimeWarning, stacklevel=3)
    return _state["library"]


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


__all__ = ["enabled", "set_enabled", "set_parts", "unavailable_reason", "lstm_forward",
           "lstm_backward", "build", "cache_dir"]
