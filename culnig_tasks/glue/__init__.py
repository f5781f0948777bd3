"""GLUE sentence-pair benchmarks (``nyu-mll/glue`` QNLI, MRPC): documents for this folder's
tasks (``qnli.py``, ``mrpc.py``).

Each row keeps ``idx``, its two text fields and ``label``; the prompt is the benchmark's prompt
variant with the text fields filled in; gold = ``str(label)``; the options are ``0`` and ``1``.
"""

from __future__ import annotations

from culnig_tasks.data import load_split
from culnig_tasks.prompts import variants


def rows(config: str, split: str) -> list[dict]:
    return [dict(r) for r in load_split("nyu-mll/glue", config, split,
                                        f"glue/{config}_{split}.jsonl")[split]]


def render(config: str, fields: tuple[str, str], variant: int, doc: dict) -> str:
    return variants(config)[variant - 1].format(**{f: doc[f] for f in fields})


def gold(doc: dict) -> str:
    return str(doc["label"])


def doc_to_choices(doc: dict) -> list[str]:
    return ["0", "1"]


def docs(config: str, split: str, fields: tuple[str, str], variant: int) -> list[dict]:
    return [{"idx": r["idx"], **{f: r[f] for f in fields}, "label": r["label"], "country": "",
             "variant": variant, "prompt": render(config, fields, variant, r), "gold": gold(r)}
            for r in rows(config, split)]
