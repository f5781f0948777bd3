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
    """The lm-eval include path: the folder of the ``culnig_tasks`` package."""
    import culnig_tasks

    return Path(culnig_tasks.__file__).resolve().parent


def shared_data_dir() -> Path | None:
    """Local copies of the benchmark data: ``$CULNIG_DATA_DIR``, else ``../shared/data`` beside the
    repository checkout. ``None`` when neither exists."""
    env = os.environ.get("CULNIG_DATA_DIR")
    if env:
        return Path(env).expanduser()
    candidate = REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None
