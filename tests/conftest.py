"""Shared fixtures: the real embedded model, loaded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test touches the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT.parent / "shared" / "conformance"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """Peer material from ../shared/conformance; tests skip when it is absent."""
    if not CONFORMANCE.is_dir():
        pytest.skip(f"conformance material not found at {CONFORMANCE} (it lives beside the repo in shared/)")
    return CONFORMANCE


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from toolkit.models import embedded_gguf

    return embedded_gguf()


@pytest.fixture(scope="session")
def default_hf_dir() -> Path:
    """The dequantized default model (created once in the toolkit cache, then reused)."""
    from toolkit.models import resolve

    return resolve("smollm2").require_hf()


@pytest.fixture(scope="session")
def llamacpp_backend(default_gguf):
    from toolkit.runtime.backends import LlamaCppBackend

    with LlamaCppBackend(default_gguf, n_ctx=1024) as backend:
        yield backend


# A test that uses one of these (directly or through another fixture) loads a real model: it is
# marked `slow`, so `make test-fast` (-m "not slow") skips it. `make test` runs everything.
MODEL_FIXTURES = {"default_gguf", "default_hf_dir", "llamacpp_backend"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
