"""Shared fixtures: where the released Step Law data lives, a CLI runner, a file loader."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STEPLAW_DATA", REPO.parent / "shared" / "data" / "steplaw"))


@pytest.fixture(scope="session")
def steplaw_data() -> Path:
    """The authors' released measurements, read from ../shared (never copied into the repo)."""
    if not (SHARED_DATA / "dense_lr_bs_loss.csv").exists():
        if os.environ.get("CI"):
            pytest.fail(f"released Step Law data not found at {SHARED_DATA}")
        pytest.skip(f"released Step Law data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL database for multi-worker tests: .ci/run starts one on 127.0.0.1 and exports
    STEPLAW_TEST_POSTGRES_URL. Without it the test is skipped with a message locally and fails
    in CI (a skipped service test must never pass as green there)."""
    url = os.environ.get("STEPLAW_TEST_POSTGRES_URL")
    if url:
        return url
    message = "no PostgreSQL: set STEPLAW_TEST_POSTGRES_URL (bash .ci/run starts one)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def load_file(name: str, path: str) -> types.ModuleType:
    """The module in ``path`` under the repository (a script or an example: not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(
    *args: str, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a fresh interpreter (in ``cwd``, default the repo)."""
    return subprocess.run(
        [sys.executable, "-m", "steplaw_opt.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
    )
