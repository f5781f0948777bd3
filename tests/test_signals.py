"""Clean stops: SIGTERM and SIGINT end `culnig sweep` with one line, its evaluation child (a
process per checkpoint, or the kept engine's process) with it and at once, the lock released and
no temporary folder left; a `kill -9` of the sweep takes the child along."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import CULNIG, REPO

TASK = "commonsenseqa_paper_v1"
CHILD = {"subprocess": "culnig.evaluate", "engine": "culnig.engine.server"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from culnig.testing.tiny_models import save_tiny_checkpoint

    return save_tiny_checkpoint("llama", tmp_path_factory.mktemp("sig") / "tiny-llama")


def _start_sweep(tiny_model: Path, run_dir: Path, isolation: str = "subprocess") -> subprocess.Popen:
    cfg = {"run_dir": str(run_dir), "backend": "hf", "tasks": [TASK], "limit": 4,
           "isolation": isolation, "models": [{"name": "tiny", "model": str(tiny_model)}]}
    path = run_dir.parent / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([*CULNIG, "sweep", str(path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_child(proc: subprocess.Popen, timeout: float = 120,
                    marker: str = CHILD["subprocess"]) -> psutil.Process:
    """The sweep's evaluation child, once it runs ``python -m <marker>``."""
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if marker in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError("the evaluation child did not start")


def _gone(pid: int, timeout: float = 30) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig,code,isolation", [(signal.SIGTERM, 143, "subprocess"),
                                                (signal.SIGINT, 130, "subprocess"),
                                                (signal.SIGTERM, 143, "engine")])
def test_sweep_stops_cleanly_with_its_child(tiny_model, tmp_path, sig, code, isolation):
    run_dir = tmp_path / "run"
    proc = _start_sweep(tiny_model, run_dir, isolation)
    child = _wait_for_child(proc, marker=CHILD[isolation])
    time.sleep(1)  # inside the child's work (an engine does not wait for it to finish)
    t0 = time.time()
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 25, "the sweep took long to stop"
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("culnig: sweep ")]
    assert len(lines) == 1 and "run the same command again" in lines[0], err[-2000:]
    assert _gone(child.pid), "the evaluation child outlived the sweep"
    assert not (run_dir / ".sweep.lock").exists()
    results = run_dir / "results" / "tiny"
    assert not results.exists() or not any(results.iterdir()), list(results.iterdir())


def test_killed_sweep_takes_its_child_along(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start_sweep(tiny_model, run_dir)
    child = _wait_for_child(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert _gone(child.pid, timeout=20), "the orphaned evaluation child kept running"
    # the rerun takes over the dead process's lock and removes its temporary folder
    (run_dir.parent / "sweep.yaml").read_text()
    rerun = subprocess.run([*CULNIG, "sweep", str(run_dir.parent / "sweep.yaml"), "--dry-run"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "1 to evaluate" in rerun.stderr
