"""Benchmark data access: the hub by default, local copies in the hub's own formats otherwise.

Local copies are looked up under ``$CULNIG_DATA_DIR`` (or ``../shared/data`` beside the checkout)
at the relative paths below. A benchmark that is neither local nor reachable on the hub fails with
one error naming the dataset id and the variable that provides a local copy.
"""

from __future__ import annotations

from pathlib import Path

from culnig.errors import CulnigError
from culnig.paths import shared_data_dir


class DataUnavailable(CulnigError, RuntimeError):
    """A benchmark is neither local nor reachable: ``culnig`` prints it as one error line."""


def local_file(relative: str) -> Path | None:
    base = shared_data_dir()
    if base is None:
        return None
    path = base / relative
    return path if path.is_file() else None


LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_split(hub_id: str, hub_config: str | None, split: str, local_relative: str | tuple[str, ...]):
    """A ``datasets.DatasetDict`` holding ``split``: the local copy if present, else the hub.

    ``local_relative`` may name several candidate files (JSONL, CSV or Parquet in the hub's
    schema); the first that exists is used.
    """
    import datasets

    candidates = (local_relative,) if isinstance(local_relative, str) else tuple(local_relative)
    for relative in candidates:
        path = local_file(relative)
        if path is not None:
            fmt = LOCAL_FORMATS.get(path.suffix, "json")
            return datasets.load_dataset(fmt, data_files={split: str(path)})
    local_relative = " or ".join(candidates)
    try:
        ds = datasets.load_dataset(hub_id, hub_config, split=split)
    except Exception as exc:  # offline, missing, auth: one actionable line
        raise DataUnavailable(
            f"dataset {hub_id}{'/' + hub_config if hub_config else ''} ({split}) is not available "
            f"offline ({type(exc).__name__}); set CULNIG_DATA_DIR to a folder holding "
            f"{local_relative} in the hub's schema"
        ) from exc
    return datasets.DatasetDict({split: ds})


def data_file(hub_id: str, hub_filename: str, local_relative: str) -> Path:
    """One file of a hub dataset repository: the local copy if present, else downloaded.

    For datasets whose files (not a ``datasets`` config) are the input, e.g. BLEnD's
    annotations, question lists and prompt templates (``nayeon212/BLEnD``, ``data/...``).
    """
    path = local_file(local_relative)
    if path is not None:
        return path
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(hub_id, hub_filename, repo_type="dataset"))
    except Exception as exc:
        raise DataUnavailable(
            f"dataset {hub_id} file {hub_filename} is not available offline "
            f"({type(exc).__name__}); set CULNIG_DATA_DIR to a folder holding {local_relative}"
        ) from exc
