"""Benchmark data access: the hub by default, local copies in the hub's own formats otherwise.

Local copies are looked up under ``$CULNIG_DATA_DIR`` (or ``../shared/data`` beside the checkout)
at the relative paths below. A benchmark that is neither local nor reachable on the hub fails with
one error naming the dataset id and the variable that provides a local copy.
"""

from __future__ import annotations

from pathlib import Path

from culnig.paths import shared_data_dir


class DataUnavailable(RuntimeError):
    pass


def local_file(relative: str) -> Path | None:
    base = shared_data_dir()
    if base is None:
        return None
    path = base / relative
    return path if path.is_file() else None


def load_split(hub_id: str, hub_config: str | None, split: str, local_relative: str):
    """A ``datasets.DatasetDict`` holding ``split``: the local JSONL copy if present, else the hub."""
    import datasets

    path = local_file(local_relative)
    if path is not None:
        return datasets.load_dataset("json", data_files={split: str(path)})
    try:
        ds = datasets.load_dataset(hub_id, hub_config, split=split)
    except Exception as exc:  # offline, missing, auth: one actionable line
        raise DataUnavailable(
            f"dataset {hub_id}{'/' + hub_config if hub_config else ''} ({split}) is not available "
            f"offline ({type(exc).__name__}); set CULNIG_DATA_DIR to a folder holding "
            f"{local_relative} in the hub's schema"
        ) from exc
    return datasets.DatasetDict({split: ds})
