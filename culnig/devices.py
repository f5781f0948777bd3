"""Where models run: CPU or GPU, and the environment vLLM gets on a CPU.

Kernel module: every place that starts vLLM (``culnig eval``, sweeps, the engine, ``culnig verify
--vllm``, ``python -m culnig.harness``, the benches) calls :func:`cpu_vllm_defaults` first.
Measured numbers behind each default: docs/tasks.md (vLLM on a CPU).
"""

from __future__ import annotations

import os

# At most this many cores: vLLM on CPU reserves none for its front end (it reserves one by
# default). Measured on 2 cores, SmolLM2 fp32: prompts 2.5x, generation 1.4x faster.
FEW_CORES = 4


def cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def cpu_vllm_defaults(kv_cache_gib: int = 4) -> None:
    """Environment defaults for vLLM on a CPU; a value already set is kept.

    A ``kv_cache_gib`` KV cache; the engine core and its one worker inside the calling process
    (no engine and worker processes: an engine starts in ~12 s instead of ~50 s on 2 cores, at
    the same throughput); on a machine of few cores all cores for the model."""
    if not cpu_only():
        return
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if (os.cpu_count() or 1) <= FEW_CORES:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
