"""XLA's persistent compilation cache, for the command-line tools.

Compiling a run's jitted programs (the K-step training chunk, evaluation, sampling) takes
1-3 s on a CPU and 2-7 s on a GPU; a program found in the cache loads in about 0.15 s (W2's
training chunk on 2 CPU cores: 1.7 s to compile, 0.15 s from the cache). So a resumed run, a
second run of the same shapes, `sample.py` and `evaluate.py` start sooner. The cache holds
compiled programs keyed by the program, the JAX version and the device, never data.

Where: --compile-cache DIR, else $JAXRNN_COMPILE_CACHE, else $XDG_CACHE_HOME/jaxrnn/xla
(~/.cache/jaxrnn/xla); "off" turns it off. JAX's own JAX_COMPILATION_CACHE_DIR, if set, wins.
The --compile-cache flag itself is jaxrnn.cli's (add_compile_cache_flag).
"""

from __future__ import annotations

import os
import warnings

ENV = "JAXRNN_COMPILE_CACHE"
OFF = ("off", "none", "")
# Cache every program: the small ones (evaluation, sampling) add up too.
MIN_COMPILE_S = 0.0


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxrnn", "xla")


def enable(path: str | None = None) -> str | None:
    """Turns the cache on in `path` (None: $JAXRNN_COMPILE_CACHE, else the default).

    Returns the folder used, or None when the cache is off. A folder that cannot be created
    is a warning, not an error: the run goes on without a cache.
    """
    import jax

    from jaxrnn.errors import JaxrnnWarning

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # JAX reads it itself
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if path is None:
        path = os.environ.get(ENV, default_dir())
    if path.strip().lower() in OFF:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        warnings.warn(f"no compilation cache: cannot create {path} ({e.strerror}); "
                      f"pass --compile-cache DIR or --compile-cache off", JaxrnnWarning,
                      stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    return path
