"""The evaluation settings: one frozen, validating type for `culnig eval`, sweeps, fine-tuning's
step evaluations and the demo, and the choice lists they share (each defined once)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from culnig import protocols
from culnig.errors import CulnigError

BACKENDS = ("vllm", "hf")
CHAT_TEMPLATES = ("auto", "on", "off")
# How a sweep runs each checkpoint: "engine" keeps one engine per model and swaps the weights in
# (culnig.engine), "subprocess" starts a process per checkpoint, "inprocess" runs lm-eval here.
ISOLATIONS = ("engine", "subprocess", "inprocess")
DEFAULT_ISOLATION = "engine"
DEFAULT_MAX_MODEL_LEN = 2048


def json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, keys sorted): for comparisons."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def choice_text(choices: tuple[str, ...]) -> str:
    """``a, b or c``: how error messages list a choice."""
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


def _choice(value: Any, choices: tuple[str, ...], what: str, where: str) -> str:
    if str(value) not in choices:
        raise CulnigError(f"{where}{what} {value!r}: use {choice_text(choices)}")
    return str(value)


def split_tasks(value: Any, where: str = "") -> tuple[str, ...]:
    """Task names from ``"a,b"`` or ``["a", "b"]``."""
    if isinstance(value, str):
        names = [t.strip() for t in value.split(",")]
    elif isinstance(value, (list, tuple)):
        names = [str(t).strip() for t in value]
    else:
        raise CulnigError(f"{where}tasks must be a list of task names or 'a,b', got {value!r}")
    names = [n for n in names if n]
    if not names:
        raise CulnigError(f"{where}tasks: name at least one task, e.g. 'culnig_*'")
    return tuple(names)


@dataclass(frozen=True)
class EvalSettings:
    """What decides an evaluation's numbers (batch size, isolation and output paths do not).

    ``tasks`` hold the names after the protocol was applied (:mod:`culnig.protocols`)."""

    tasks: tuple[str, ...]
    backend: str = "vllm"
    limit: float | None = None
    seed: int = 0
    dtype: str = "auto"
    chat_template: str = "auto"
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    model_args: str = ""
    lm_eval_args: tuple[str, ...] = ()
    scale: float = 0.0
    task_metadata: tuple[tuple[str, Any], ...] = ()  # lm-eval --metadata for the tasks (sorted)

    def __post_init__(self) -> None:
        _choice(self.backend, BACKENDS, "backend", "")
        _choice(self.chat_template, CHAT_TEMPLATES, "chat_template", "")
        if not self.tasks:
            raise CulnigError("tasks: name at least one task")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit <= 0):
            raise CulnigError(f"limit must be a positive number, got {self.limit!r}")
        if self.max_model_len < 2:
            raise CulnigError(f"max_model_len must be at least 2, got {self.max_model_len}")

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def keys(cls) -> frozenset[str]:
        """The mapping keys :meth:`from_mapping` reads (the fields and ``protocol``)."""
        return frozenset(f.name for f in fields(cls)) | {"protocol"}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "") -> "EvalSettings":
        """Validate a mapping (a sweep config's keys, `culnig eval`'s flags, a request file);
        ``where`` prefixes every error (e.g. the config file). Keys not in :meth:`keys` are
        ignored here: the caller owns its other keys."""
        w = f"{where}: " if where else ""
        if data.get("tasks") in (None, "", [], ()):
            raise CulnigError(f"{w}'tasks' is required")
        protocol = _choice(data.get("protocol", "paper"), protocols.PROTOCOLS, "protocol", w)
        tasks = protocols.apply(list(split_tasks(data["tasks"], w)), protocol)
        limit = data.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                  or limit <= 0):
            raise CulnigError(f"{w}limit must be a positive number, got {limit!r}")
        extra = data.get("lm_eval_args") or ()
        if isinstance(extra, str):
            extra = extra.split()
        meta = data.get("task_metadata")
        if meta is None:
            meta = {}
        if isinstance(meta, (list, tuple)):  # the frozen form, from record files
            meta = dict(meta)
        if not isinstance(meta, Mapping):
            raise CulnigError(f"{w}task_metadata must be a mapping (e.g. culnig_max_docs: 50)")
        try:
            return cls(
                tasks=tuple(tasks),
                backend=_choice(data.get("backend", "vllm"), BACKENDS, "backend", w),
                limit=None if limit is None else float(limit),
                seed=int(data.get("seed", 0)),
                dtype=str(data.get("dtype", "auto")),
                chat_template=_choice(data.get("chat_template", "auto"), CHAT_TEMPLATES,
                                      "chat_template", w),
                max_model_len=int(data.get("max_model_len", DEFAULT_MAX_MODEL_LEN)),
                model_args=str(data.get("model_args") or ""),
                lm_eval_args=tuple(str(a) for a in extra),
                scale=float(data.get("scale", 0.0)),
                task_metadata=tuple(sorted((str(k), json_roundtrip(v)) for k, v in meta.items())),
            )
        except (TypeError, ValueError) as exc:
            raise CulnigError(f"{w}{exc}") from None

    def with_tasks(self, tasks: list[str] | tuple[str, ...]) -> "EvalSettings":
        return replace(self, tasks=tuple(tasks))

    # --- views ----------------------------------------------------------------------------
    def to_mapping(self) -> dict[str, Any]:
        """Every field, JSON-ready; ``from_mapping(s.to_mapping()) == s``."""
        out = asdict(self)
        out["tasks"] = list(self.tasks)
        out["lm_eval_args"] = list(self.lm_eval_args)
        out["task_metadata"] = dict(self.task_metadata)
        return out

    def record(self) -> dict[str, Any]:
        """The settings as results record them (``culnig_eval.json``): keys that do not apply
        are left out, so records written before a key existed stay valid."""
        out = self.to_mapping()
        if not self.task_metadata:
            out.pop("task_metadata")
        if self.backend != "vllm":
            out.pop("max_model_len")  # only vLLM reads it
        return out
