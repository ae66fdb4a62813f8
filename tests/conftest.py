"""Shared test configuration: strict JAX numerics and small fixtures."""

import os

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """The scripts' persistent compilation cache (jaxrnn.compile_cache) and the kernels'
    build folder in folders of this test session, never the user's ~/.cache; the scripts run
    as subprocesses inherit them."""
    if "JAXRNN_COMPILE_CACHE" not in os.environ:
        os.environ["JAXRNN_COMPILE_CACHE"] = str(tmp_path_factory.mktemp("xla-cache"))
    # and the fused CPU kernels (jaxrnn.kernels), built once per session
    if "JAXRNN_KERNEL_CACHE" not in os.environ:
        os.environ["JAXRNN_KERNEL_CACHE"] = str(tmp_path_factory.mktemp("kernel-cache"))
    yield


@pytest.fixture
def x64():
    """Turns on float64 for one test (parity checks to ~1e-10), then restores the default."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def small_text():
    """A small, made-up English text (a few KB) for fast training tests."""
    lines = [
        "the quick brown fox jumps over the lazy dog.",
        "to be, or not to be: that is the question.",
        "all the world's a stage, and all the men and women merely players.",
        "now is the winter of our discontent made glorious summer.",
    ]
    return "\n".join(lines * 40) + "\n"


def corpus_path():
    """The full tiny-shakespeare text, if this machine has it (tests marked `corpus`)."""
    for candidate in (os.environ.get("JAXRNN_TINYSHAKESPEARE"), "data/tinyshakespeare.txt"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None
