"""The settings of a `culnig finetune` run: training tasks, options and their checks, and the
evaluation settings of its steps (one :class:`culnig.settings.EvalSettings`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from culnig.errors import CulnigError
from culnig.loading import LOAD_DTYPES
from culnig.models import PACKAGED
from culnig.settings import DEFAULT_ISOLATION, DEFAULT_MAX_MODEL_LEN, EvalSettings

FORMAT = "culnig-finetune/1"
MANIFEST = "finetune.json"
CULTURAL_EVAL_TASKS = ("culnig_blendmcq", "culnig_countryrc")
TRAIN_DTYPES = LOAD_DTYPES
SAVE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    fields: tuple[str, ...]
    default_rows: int | None  # rows drawn at random from the training split; None = all


TASKS = {
    "qnli": TaskSpec("qnli", ("question", "sentence"), 10_000),
    "mrpc": TaskSpec("mrpc", ("sentence1", "sentence2"), None),
}


def default_eval_tasks(task: str) -> tuple[str, ...]:
    """The training task's own benchmark and the cultural ones."""
    return (f"culnig_{task}", *CULTURAL_EVAL_TASKS)


def eval_settings(task: str, seed: int, chat_template: str, *, tasks=None, backend: str = "vllm",
                  limit: float | None = None, max_model_len: int = DEFAULT_MAX_MODEL_LEN,
                  model_args: str = "") -> EvalSettings:
    """The step evaluations' settings: the run's seed and chat-template choice, tasks
    ``tasks`` (names or ``"a,b"``; default :func:`default_eval_tasks`)."""
    if limit is not None and not limit > 0:
        raise CulnigError(f"--eval-limit must be positive, got {limit:g}")
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    return EvalSettings.from_mapping({
        "tasks": tuple(tasks or default_eval_tasks(task)), "backend": backend, "limit": limit,
        "seed": seed, "dtype": "auto", "chat_template": chat_template,
        "max_model_len": max_model_len, "model_args": model_args,
    })


@dataclass
class FinetuneOptions:
    model: str
    set_path: Path
    out: Path
    which: str = "top"
    budget: float = 0.10
    task: str = "qnli"
    steps: int = 600
    lr: float = 3e-5
    batch_size: int = 16
    eval_every: int = 200
    seed: int = 0
    train_file: Path | None = None
    train_rows: int | None = None  # None: the task's default (QNLI 10,000; MRPC all)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_length: int = 1024
    dtype: str = "fp32"
    save_dtype: str = "auto"
    device: str = "auto"
    chat_template: str = "auto"
    evaluate: bool = True
    eval: EvalSettings | None = None  # None: eval_settings(task, seed, chat_template)
    eval_batch_size: str = "auto"
    eval_isolation: str = DEFAULT_ISOLATION
    eval_start: bool = True
    resume: bool = False
    force: bool = False
    progress: bool = True

    def eval_settings(self) -> EvalSettings:
        return self.eval or eval_settings(self.task, self.seed, self.chat_template)


@dataclass
class FinetuneResult:
    out: Path
    manifest: dict
    steps_saved: list[int] = field(default_factory=list)
    evaluated: list[int] = field(default_factory=list)


def check_options(o: FinetuneOptions) -> None:
    if o.task not in TASKS:
        raise CulnigError(f"unknown task {o.task!r}; use one of: {', '.join(TASKS)}")
    for name, value in (("--steps", o.steps), ("--batch-size", o.batch_size),
                        ("--eval-every", o.eval_every), ("--max-length", o.max_length)):
        if value < 1:
            raise CulnigError(f"{name} must be at least 1, got {value}")
    if not o.lr > 0:
        raise CulnigError(f"--lr must be positive, got {o.lr:g}")
    if o.warmup_steps < 0 or o.warmup_steps > o.steps:
        raise CulnigError(f"--warmup-steps must be in 0..{o.steps}, got {o.warmup_steps}")
    if o.weight_decay < 0:
        raise CulnigError(f"--weight-decay must be >= 0, got {o.weight_decay:g}")
    if o.train_rows is not None and o.train_rows < 1:
        raise CulnigError(f"--train-rows must be at least 1, got {o.train_rows}")
    if o.resume and o.force:
        raise CulnigError("--resume and --force contradict each other: --resume continues DIR, "
                          "--force starts it again")


def model_name(ref: str, path: Path) -> str:
    """The name of the model's folder under ``results/`` (as ``culnig sweep`` names it)."""
    name = ref if ref in PACKAGED else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
