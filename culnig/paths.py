"""Where culnig keeps and finds things: its cache home, the task folder, the bundled data."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def culnig_home() -> Path:
    """``$CULNIG_HOME``, default ``~/.cache/culnig``."""
    return Path(os.environ.get("CULNIG_HOME") or Path.home() / ".cache" / "culnig").expanduser()


def models_dir() -> Path:
    return culnig_home() / "models"


def tasks_dir() -> Path:
    """The lm-eval include path: the folder of the ``culnig_tasks`` package (found, not imported:
    the kernel imports nothing above it)."""
    from importlib.util import find_spec

    spec = find_spec("culnig_tasks")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the culnig_tasks package is not installed beside culnig")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def shared_data_dir() -> Path | None:
    """Local copies of the benchmark data: ``$CULNIG_DATA_DIR``, else ``../shared/data`` beside the
    repository checkout. ``None`` when neither exists."""
    env = os.environ.get("CULNIG_DATA_DIR")
    if env:
        return Path(env).expanduser()
    candidate = REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None
