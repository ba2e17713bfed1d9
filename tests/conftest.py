"""Shared test settings: bounded, reproducible hypothesis runs, seeded torch RNG and
thread counts restored after each test; Triton's interpreter where no GPU is present.

Hypothesis profiles (pick one with ``HYPOTHESIS_PROFILE=<name>``):
    ci   (default) 30 examples a test, derandomized so every run draws the same cases.
    dev  300 random examples a test, for a deeper local search.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Triton decides when ``triton`` is first imported (torchvision imports it) whether kernels
# are compiled or interpreted. Without a GPU, tests run the Triton backend on CPU tensors in
# its interpreter (tests/ops/test_triton.py), so set it before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Numba kernels compile (or load from the disk cache) on first use: no per-example deadline.
settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=300, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _test_seed(request: pytest.FixtureRequest) -> int:
    """A stable seed per test (its node id), so tests do not depend on each other's order."""
    return zlib.crc32(request.node.nodeid.encode())


@pytest.fixture(autouse=True)
def _seed_torch(request: pytest.FixtureRequest) -> None:
    torch.manual_seed(_test_seed(request))


@pytest.fixture
def generator(request: pytest.FixtureRequest) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded per test, for explicit ``generator=`` arguments."""
    return torch.Generator().manual_seed(_test_seed(request))


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """Tests that set torch's thread count (``--threads 1`` runs) hand it back: results
    may depend on it in the last bits, and later tests compare in-process runs with
    subprocesses that start at the default."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pyproject() -> dict:
    """The checkout's ``pyproject.toml``, parsed."""
    import tomllib

    return tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text("utf-8"))


# What run_without's code can call: ``missing_extra(call, message)`` checks that ``call()``
# raises MissingExtraError with ``message`` and returns the error.
_MISSING_EXTRA = """
def missing_extra(call, message):
    from deformconv._extras import MissingExtraError
    try:
        call()
    except MissingExtraError as error:
        assert str(error) == message, error
        assert isinstance(error, ModuleNotFoundError), type(error)
        return error
    raise AssertionError(f"no error, expected {message!r}")
"""


@pytest.fixture
def run_without() -> Callable[[Iterable[str], str], subprocess.CompletedProcess]:
    """``run_without(modules, code)``: run Python ``code`` in a fresh interpreter where
    ``modules`` cannot be imported (as if not installed), importing this checkout's
    deformconv; the test fails if it exits non-zero. This process's modules stay as they are.
    The code can call ``missing_extra(call, message)`` (see ``_MISSING_EXTRA``).
    """
    import deformconv

    src = str(Path(deformconv.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}

    def run(modules: Iterable[str], code: str) -> subprocess.CompletedProcess:
        block = "".join(f"sys.modules[{name!r}] = None\n" for name in modules)
        script = f"import sys\n{block}{_MISSING_EXTRA}{textwrap.dedent(code)}"
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=env, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done

    return run
