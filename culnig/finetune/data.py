"""Training rows of `culnig finetune`: GLUE QNLI/MRPC from the hub (or a local copy) or a JSONL
file in the hub schema, the seeded row sample, each row's evaluation prompt, and the batch order
(a function of seed and step only, so a resumed run sees the same batches)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from culnig.errors import CulnigError
from culnig.finetune.options import TASKS, TaskSpec


def _validate_rows(rows: list[dict], spec: TaskSpec, where: str) -> list[dict]:
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise CulnigError(f"{where}:{i}: a row must be a JSON object")
        for key in (*spec.fields, "label"):
            if key not in row or row[key] is None:
                raise CulnigError(f"{where}:{i}: missing field {key!r} (the nyu-mll/glue {spec.name} "
                                  f"schema: {', '.join(spec.fields)}, label, idx)")
        for key in spec.fields:
            if not isinstance(row[key], str):
                raise CulnigError(f"{where}:{i}: field {key!r} must be a string")
        label = row["label"]
        if isinstance(label, bool) or label not in (0, 1):
            raise CulnigError(f"{where}:{i}: label must be 0 or 1, got {label!r}")
        out.append({**{k: row[k] for k in spec.fields}, "label": int(label),
                    "idx": row.get("idx", i - 1)})
    if not out:
        raise CulnigError(f"{where}: no training rows")
    return out


def read_train_file(path: Path, spec: TaskSpec) -> list[dict]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CulnigError(f"--train-file {path}: no such file") from None
    except OSError as exc:
        raise CulnigError(f"--train-file {path}: cannot read it ({exc.strerror})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CulnigError(f"{path}:{n}: not JSON ({exc.msg})") from None
    return _validate_rows(rows, spec, str(path))


def load_train_rows(spec: TaskSpec, train_file: Path | None) -> tuple[list[dict], str]:
    """All training rows and where they came from (the file, or the hub's train split)."""
    if train_file is not None:
        return read_train_file(train_file, spec), str(Path(train_file).resolve())
    from culnig_tasks.data import DataUnavailable, load_split

    try:
        ds = load_split("nyu-mll/glue", spec.name, "train", f"glue/{spec.name}_train.jsonl")["train"]
    except DataUnavailable as exc:
        raise CulnigError(
            f"the {spec.name.upper()} training split (nyu-mll/glue {spec.name}, train) is not "
            f"available: {str(exc).splitlines()[0]}. Pass --train-file PATH (JSONL in the hub "
            f"schema: {', '.join(spec.fields)}, label, idx)"
        ) from None
    return _validate_rows([dict(r) for r in ds], spec, f"nyu-mll/glue {spec.name} train"), \
        f"nyu-mll/glue/{spec.name}/train"


def sample_rows(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """``n`` rows drawn without replacement with ``seed`` (all rows, in order, when n is None or
    at least their number)."""
    import numpy as np

    if n is None or n >= len(rows):
        return list(rows)
    pick = np.random.default_rng([seed, 0x51A7]).permutation(len(rows))[:n]
    return [rows[int(i)] for i in pick]


def prompt_text(task: str, row: dict) -> str:
    """The evaluation task's first prompt variant filled with ``row`` (culnig_tasks/<task>)."""
    from culnig_tasks.prompts import variants

    return variants(task)[0].format(**{k: row[k] for k in TASKS[task].fields})


class BatchOrder:
    """Row indices of the batch at step ``s``: epoch ``e`` visits the rows in the permutation drawn
    from ``(seed, e)``, and the steps walk through the epochs' concatenation. A function of
    ``(seed, s)`` only, so a resumed run sees the same batches."""

    def __init__(self, n_rows: int, batch_size: int, seed: int):
        self.n, self.b, self.seed = n_rows, batch_size, seed
        self._perms: dict[int, Any] = {}

    def _perm(self, epoch: int):
        import numpy as np

        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def __call__(self, step: int) -> list[int]:
        out = []
        for pos in range(step * self.b, (step + 1) * self.b):
            epoch, r = divmod(pos, self.n)
            out.append(int(self._perm(epoch)[r]))
        return out
